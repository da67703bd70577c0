"""The layout rules a newcomer relies on (CONTRIBUTING.md, "Layout"), held by
a test so they stay true: serve/ reaches the runtime through one door, and no
module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the one module of rayflow._runtime that serve/ may import
DOOR = "rayflow._runtime.serving"
MAX_LINES = 400


def _runtime_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if node.module == "rayflow._runtime":
                found += [n for n in names[1:] if n != DOOR]
            elif node.module.startswith("rayflow._runtime") and node.module != DOOR:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("rayflow._runtime.")]
    return [n for n in found if n != DOOR]


def test_serve_reaches_the_runtime_only_through_its_one_door() -> None:
    offenders = {
        str(p.relative_to(ROOT)): _runtime_imports(p)
        for p in sorted((ROOT / "serve").rglob("*.py"))
        if _runtime_imports(p)
    }
    assert offenders == {}, f"import these from {DOOR} instead: {offenders}"


def test_no_module_is_past_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for d in ("rayflow", "serve")
        for p in sorted((ROOT / d).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these along a real seam: {long}"
