"""A user's script run in its own process: the embedded default (Ray, Serve,
the Store) started by `rayflow.init` there, as a user starts it, not by the
test process. `embedded_script` keeps one serving; `run_script` runs one to
its end (the examples, the README's snippets)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from _browser_fixtures import ROOT, dev_env
from conftest import eventually


def run_script(
    script: Path, tmp_path: Path, *, env: dict[str, str] | None = None, timeout_s: float = 240
) -> str:
    """Run `script` as a user would (`python script` in `tmp_path`, its own
    data dir, no RAY_ADDRESS) to its end; returns its stdout. Fails the test
    with the script's output when it exits non-zero."""
    full_env = {**os.environ, "RAYFLOW_DATA_DIR": str(tmp_path / ".rayflow"), **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert out.returncode == 0, f"{script.name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@contextlib.contextmanager
def embedded_script(
    tmp_path: Path, script: str, port: int, secret: str, *, drop_env: tuple[str, ...] = ()
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Run `script` (argv: data dir, HTTP port; it prints READY once serving
    and keeps serving until its stdin closes) on loopback with its own data
    dir; yield (process, log file) once READY; kill its process group after."""
    path = tmp_path / "embedded.py"
    path.write_text(script)
    env = dev_env(tmp_path / "data", port, secret)
    env["PYTHONPATH"] = str(ROOT)
    for name in drop_env:
        env.pop(name, None)
    log = tmp_path / "embedded.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(path), str(tmp_path / "data"), str(port)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return "READY" in log.read_text()

        eventually(ready, timeout_s=240, what="the embedded default to start")
        yield proc, log
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
