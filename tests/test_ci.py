"""Under CI nothing a test needs may be missing: such a test fails, it is not
skipped (tests/_ci.py). PostgreSQL's case is in test_store.py; this is Chromium's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSER_TEST = "tests/test_dashboard.py::test_client_js_starts_from_an_index_and_sends_input"


def run_without_chromium(ci: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(RAYFLOW_CHROMIUM="/nonexistent/chromium", RAYFLOW_NO_BROWSER_INSTALL="1")
    if ci:
        env["CI"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", BROWSER_TEST],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout


def test_without_chromium_ci_fails_instead_of_skipping() -> None:
    out = run_without_chromium(ci=True)
    summary = out.strip().splitlines()[-1]
    assert "1 error" in summary and "skipped" not in summary, out
    assert "CI is set: this test may not be skipped" in out


def test_without_chromium_a_developer_run_skips_and_says_why() -> None:
    out = run_without_chromium(ci=False)
    assert "1 skipped" in out.strip().splitlines()[-1], out
    assert "Chromium/playwright missing" in out
