"""Real headless Chromium for browser tests, and `rayflow dev` as a subprocess.

Chromium: Debian's `chromium` driven by Playwright.

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
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _ci import skip_or_fail

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
    when that is impossible (e.g. no root for apt-get) the test fails under CI
    and is skipped otherwise."""
    try:
        import playwright  # noqa: F401

        have_pw = True
    except ImportError:
        have_pw = False
    if have_pw and Path(CHROMIUM).exists():
        return
    if os.environ.get("RAYFLOW_NO_BROWSER_INSTALL"):
        skip_or_fail("Chromium/playwright missing and RAYFLOW_NO_BROWSER_INSTALL is set")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "browser.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        skip_or_fail(f"scripts/browser.sh failed: {proc.stderr.strip()[-500:]}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port) for the block; yields the base URL."""
    with http_server(functools.partial(_QuietHandler, directory=str(directory))) as base:
        yield base


@contextlib.contextmanager
def http_server(handler: Any) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 (a free port) for the block; yields the base URL."""
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


# module scope: Playwright's sync API keeps an event loop running in the main
# thread while it is open, which breaks every asyncio test that runs after it
@pytest.fixture(scope="module")
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


# -- `rayflow dev` as a subprocess, as a user starts it --------------------------------------
@dataclass(frozen=True)
class ExampleRun:
    """How the tests drive an example task: its file, task id, payload and inputs."""

    path: str
    task_id: str
    payload: Any
    follow_up_stream: str
    follow_up: Any
    wrap_up_stream: str
    wrap_up: Any


RESEARCH_AGENT = ExampleRun(
    path="examples/research_agent.py",
    task_id="research-agent",
    payload={"topic": "Ray actors"},
    follow_up_stream="follow-up",
    follow_up="How do Ray actors recover from failures?",
    wrap_up_stream="wrap-up",
    wrap_up={},
)


@dataclass
class DevServer:
    """A running `rayflow dev`: its HTTP base URL, secret key and data directory."""

    url: str
    secret_key: str
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def dev_env(data_dir: Path, port: int, secret_key: str) -> dict[str, str]:
    """The environment a test gives `rayflow` commands: loopback only, its own data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYFLOW_"))}
    env.update(
        RAYFLOW_DATA_DIR=str(data_dir),
        RAYFLOW_SECRET_KEY=secret_key,
        RAYFLOW_HTTP_HOST="127.0.0.1",
        RAYFLOW_HTTP_PORT=str(port),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


@contextlib.contextmanager
def start_dev_server(
    module: str,
    data_dir: Path,
    timeout_s: float = 240,
    attempts: int = 2,
    extra_args: tuple[str, ...] = (),
) -> Iterator[DevServer]:
    """Run `rayflow dev MODULE` on a free loopback port until the block ends, then stop it
    (SIGINT, then SIGKILL of its process group after 30 s). A start that fails (Ray's
    own start-up can time out on an overloaded 2-core box) is tried again once."""
    failures: list[str] = []
    for attempt in range(attempts):
        server = _launch_dev(
            module, data_dir / f"try{attempt}" if attempt else data_dir, extra_args
        )
        problem = _wait_ready(server, timeout_s)
        if problem is None:
            break
        _stop(server.proc)
        failures.append(problem)
    else:
        raise AssertionError("\n\n".join(failures))
    try:
        yield server
    finally:
        _stop(server.proc)


def _launch_dev(module: str, data_dir: Path, extra_args: tuple[str, ...] = ()) -> DevServer:
    import secrets

    port = free_port()
    secret = "sk_" + secrets.token_hex(16)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dev_env(data_dir, port, secret)
    log = data_dir / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayflow.cli", "dev", module, "--port", str(port), *extra_args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return DevServer(f"http://127.0.0.1:{port}", secret, data_dir, env, proc, log)


def _wait_ready(server: DevServer, timeout_s: float) -> str | None:
    """None once `rayflow dev` serves its dashboard, else what went wrong."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if server.proc.poll() is not None:
            return f"rayflow dev exited {server.proc.returncode}:\n{server.output()}"
        if "Press Ctrl-C to stop." in server.output():  # printed once all is ready
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/dashboard/", timeout=2).status_code == 200:
                    return None
        if time.monotonic() > deadline:
            return f"rayflow dev did not serve /dashboard/ in {timeout_s} s:\n{server.output()}"
        time.sleep(0.5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    # Ray's own processes (gcs, raylet, workers) started by `rayflow dev` are in its group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """`rayflow dev examples/research_agent.py` for the tests of one module
    (RAYFLOW_TEST_RESEARCH_AGENT names another file in its shape)."""
    path = os.environ.get("RAYFLOW_TEST_RESEARCH_AGENT", RESEARCH_AGENT.path)
    if not (ROOT / path).exists():
        skip_or_fail(f"{path} is not there yet")
    with start_dev_server(path, tmp_path_factory.mktemp("rayflow-dev")) as s:
        yield s
