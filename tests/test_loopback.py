"""The embedded default listens on 127.0.0.1 only (docs/security.md).

A script that imports Ray *before* rayflow (the order a user may well use),
starts the embedded default with the HTTP API (`rayflow.init(serve=True)`),
triggers a run that waits on an input stream and sends to it, so that every
kind of process exists: Ray's GCS, raylet and agents, the Controller, a
RunActor, an Inbox, Serve's controller, proxy and replica. Every listening
socket of that script and of every process below it must be on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
from _browser_fixtures import ROOT, free_port
from _embedded import embedded_script
from conftest import eventually

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")

SCRIPT = textwrap.dedent(
    """
    import ray  # first, on purpose: rayflow must not depend on being imported before Ray
    import sys

    import rayflow
    from rayflow import streams, task

    go = streams.input("go", dict)


    @task(id="loopback-wait")
    async def wait_go(payload: dict) -> dict:
        first = (await go.once(timeout_s=300)).unwrap()
        second = (await go.once(timeout_s=300)).unwrap()  # keeps the run (and its actor) live
        return {"got": [first, second]}


    rayflow.init(data_dir=sys.argv[1], serve=True, http_port=int(sys.argv[2]))
    handle = wait_go.trigger({}).result()
    go.send(handle.id, {"n": 1}).result()
    print("READY", handle.id, flush=True)
    sys.stdin.read()  # until the test closes stdin
    """
)


def _listening(root: psutil.Process) -> list[tuple[int, str, str, int]]:
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, name, conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_every_process_of_the_embedded_default_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    # a user's environment: nothing tells Ray to stay local but rayflow itself
    drop = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",)
    with embedded_script(tmp_path, SCRIPT, port, "sk_" + "l" * 32, drop_env=drop) as (proc, _):
        root = psutil.Process(proc.pid)
        kinds = ("gcs_server", "raylet", "Controller", "RunActor", "Inbox", "ProxyActor", "Replica")

        def all_started() -> bool:
            names = " ".join(p.name() for p in [root, *root.children(recursive=True)])
            return all(k in names for k in kinds)

        eventually(all_started, timeout_s=60, what="every kind of process")
        sockets = _listening(root)
        assert len(sockets) >= len(kinds), sockets
        exposed = [s for s in sockets if s[2] not in LOOPBACK]
        assert not exposed, f"listening beyond loopback (pid, process, ip, port): {exposed}"
        # the HTTP API is among them, on the port asked for
        assert any(s[3] == port for s in sockets), sockets


def test_importing_rayflow_leaves_the_environment_alone() -> None:
    """`import rayflow` has no side effects on os.environ: the loopback default is
    applied by `rayflow.init()` (the test above checks it holds whatever the
    import order). Ray's own import is taken first, so only rayflow's changes count."""
    script = (
        "import os, ray; before = dict(os.environ); "
        "import rayflow, rayflow.streams, rayflow.task, rayflow.client; "
        "after = dict(os.environ); "
        "changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}; "
        "print(sorted(changed))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
