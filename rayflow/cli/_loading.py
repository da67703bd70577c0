"""Importing the user's module for `rayflow dev`: by file path or dotted name,
with its directory on sys.path and PYTHONPATH so Ray workers can import it too.
An import that fails is one line naming the file and line, not a traceback."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayflow.cli._failure import CLIError
from rayflow.cli._render import err, out


def import_target(target: str) -> Any:
    """Import a module by file path (`examples/agent.py`) or dotted name (`app.tasks`).
    Its directory goes on sys.path and PYTHONPATH, so Ray workers can import it too."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise CLIError(f"no such file: {target}")
        path = path.resolve()
        _add_import_path(path.parent)
        name = path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise CLIError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        _run_user_code(lambda: spec.loader.exec_module(module), target)  # type: ignore[union-attr]
        return module
    _add_import_path(Path.cwd())
    return _run_user_code(lambda: importlib.import_module(target), target)


def _add_import_path(directory: Path) -> None:
    d = str(directory)
    if d not in sys.path:
        sys.path.insert(0, d)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if d not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([d, *parts])


def _run_user_code(load: Callable[[], Any], target: str) -> Any:
    try:
        return load()
    except ModuleNotFoundError as e:
        raise CLIError(f"cannot import {target}: {e}") from None
    except Exception as e:
        import traceback

        frames = traceback.extract_tb(e.__traceback__)
        where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise CLIError(f"importing {target} failed: {type(e).__name__}: {e}{where}") from None


def tasks_in(module: Any) -> list[Any]:
    from rayflow.task import Task

    return [v for v in vars(module).values() if isinstance(v, Task)]


def reloader(module: Any, register: Callable[[Any], None]) -> Callable[[], None]:
    """`rayflow dev --reload`: a tick that re-imports the module when its file
    changed and `register`s its tasks again (stored by value: every run after that, and
    every revival, loads the new code — a suspended run replays its journal
    against it). A module that fails to import leaves the old code serving."""
    path = Path(module.__file__)
    seen = path.stat().st_mtime_ns

    def tick() -> None:
        nonlocal seen
        try:
            changed = path.stat().st_mtime_ns
        except OSError:
            return  # an editor replacing the file: look again next tick
        if changed == seen:
            return
        seen = changed
        try:
            fresh = import_target(str(path))
            tasks = tasks_in(fresh)
            for t in tasks:
                register(t)
        except CLIError as e:
            err.print(f"reload failed, the previous code still serves: {e}")
            return
        out.print(f"reloaded {path.name}: {', '.join(t.id for t in tasks) or '(no tasks)'}")

    return tick
