"""tests/node's npm packages, installed when a checkout lacks them (its
node_modules predates a package the test needs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from _ci import skip_or_fail

NODE_DIR = Path(__file__).resolve().parent / "node"


def node_packages(*needed: str) -> Path:
    """tests/node with `needed` installed (npm install once when missing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_or_fail("Node.js and npm are needed for the npm-client tests")
    if not all((NODE_DIR / "node_modules" / name).is_dir() for name in needed):
        npm = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if npm.returncode != 0:
            pytest.fail(f"npm install in {NODE_DIR} failed:\n{npm.stderr[-2000:]}")
    return NODE_DIR
