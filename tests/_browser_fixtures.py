"""Real headless Chromium for browser tests: Debian's `chromium` driven by Playwright.

Playwright's own browser download does not work on these machines, so tests
launch the system Chromium (`scripts/browser.sh` installs it and the Python
`playwright` package). Import the fixtures into a test module with
`from tests._browser_fixtures import browser, page  # noqa: F401`.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("RAYFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_browser() -> None:
    """Install Chromium and playwright with scripts/browser.sh when either is missing;
    skip the test when that is impossible (e.g. no root for apt-get)."""
    try:
        import playwright  # noqa: F401

        have_pw = True
    except ImportError:
        have_pw = False
    if have_pw and Path(CHROMIUM).exists():
        return
    if os.environ.get("RAYFLOW_NO_BROWSER_INSTALL"):
        pytest.skip("Chromium/playwright missing and RAYFLOW_NO_BROWSER_INSTALL is set")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "browser.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.skip(f"scripts/browser.sh failed: {proc.stderr.strip()[-500:]}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port) for the block; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
    }

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """A Playwright Browser on Debian's Chromium, closed (and its process gone) after."""
    ensure_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with launch_chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page. After the test, its last screenshot is test-artifacts/<test>-last.png
    and the browser console is test-artifacts/<test>-console.txt (kept for failures)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    console: list[str] = []
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    name = request.node.name.replace("/", "_")
    with contextlib.suppress(Exception):  # a crashed page has no screenshot to give
        pg.screenshot(path=str(ARTIFACTS / f"{name}-last.png"), full_page=True)
    if console:
        (ARTIFACTS / f"{name}-console.txt").write_text("\n".join(console) + "\n")
    context.close()
