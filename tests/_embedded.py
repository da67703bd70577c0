"""A user's script run in its own process: the embedded default (Ray, Serve,
the Store) started by `rayflow.init` there, as a user starts it, not by the
test process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from _browser_fixtures import ROOT, dev_env
from conftest import eventually


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
