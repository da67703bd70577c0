"""The `rayflow-client` wheel: `rayflow.client` and the few rayflow modules
it imports, with `rayflow_init.py` as `rayflow/__init__.py` (no Ray)."""

from __future__ import annotations

from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

#: the modules of the `rayflow` package that `rayflow.client` needs
CLIENT_MODULES = {
    "__init__",
    "errors",
    "_response",
    "_handles",
    "_status",
    "_run_model",
    "_wait_model",
}


class ClientOnly(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[Any]:
        modules = super().find_package_modules(package, package_dir)
        if package == "rayflow":
            modules = [m for m in modules if m[1] in CLIENT_MODULES]
        return modules

    def build_module(self, module: str, module_file: str, package: str) -> Any:
        if package == "rayflow" and module == "__init__":
            module_file = "rayflow_init.py"
        return super().build_module(module, module_file, package)


setup(cmdclass={"build_py": ClientOnly})
