"""The HTTP port of a local deployment is served by the Serve replica itself
(rayflow's own listener in it, serve/listener.py; rayflow/_runtime/ingress.py),
not by Serve's proxy.

A script starts the embedded default with the HTTP API
(`rayflow.init(serve=True)`) and a run that holds. The test finds which
process listens on the HTTP port (the replica; the proxy listens on another
loopback port), appends and reads the run's stream over it, then kills the
replica while an SSE reader is connected: Serve starts a new one, which must
take the same port back within `RECOVERY_S`, and an SSE reader resuming with
`Last-Event-ID` gets the chunks appended since.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
from _browser_fixtures import free_port
from _embedded import embedded_script
from _http_fixtures import HttpApi, read_sse
from conftest import eventually

from rayflow import Settings
from rayflow._runtime import ingress
from rayflow.errors import RayflowError
from serve.app import start

#: a killed replica's port is served again within this. Without SO_REUSEADDR
#: (rayflow/_runtime/ingress.py) the connections the replica had open hold the
#: port in TIME_WAIT for Linux's fixed 60 s: it came back after 62 s; with it
#: ~10 s (load 12); the margin is for a loaded 2-core box.
RECOVERY_S = 40

SCRIPT = textwrap.dedent(
    """
    import sys

    import rayflow
    from rayflow import streams, task

    go = streams.input("go", dict)


    @task(id="ingress-hold")
    async def hold(payload: dict) -> str:
        await go.once(timeout_s=600)  # until the test is done with the run
        return "done"


    rayflow.init(data_dir=sys.argv[1], serve=True, http_port=int(sys.argv[2]))
    handle = hold.trigger({}).result()
    print("READY", handle.id, handle.public_access_token, flush=True)
    sys.stdin.read()  # until the test closes stdin
    """
)


def _listeners(root: psutil.Process) -> dict[int, tuple[int, str]]:
    """port -> (pid, process name) of every loopback listener under `root`."""
    found: dict[int, tuple[int, str]] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found[conn.laddr.port] = (proc.pid, proc.name())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _open_sse(port: int, path: str, token: str) -> socket.socket:
    """An SSE reader connected to `path`, its response begun (a raw socket:
    the test closes it when the server's end has gone)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Accept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _drained(sock: socket.socket) -> bool:
    """The server closed its end of `sock` (the rest was read)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def _time_wait_on(port: int) -> bool:
    """A connection of the HTTP port's own end is in TIME_WAIT (what holds a
    port without SO_REUSEADDR for 60 s)."""
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT
        for c in psutil.net_connections(kind="tcp4")
    )


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_replica_serves_the_http_port_and_takes_it_back_after_a_crash(
    tmp_path: Path,
) -> None:
    port = free_port()
    secret = "sk_" + "i" * 32
    api = HttpApi(url=f"http://127.0.0.1:{port}", secret_key=secret)
    with embedded_script(tmp_path, SCRIPT, port, secret) as (proc, log):
        line = next(x for x in log.read_text().splitlines() if x.startswith("READY"))
        _, run_id, token = line.split()
        root = psutil.Process(proc.pid)

        listeners = _listeners(root)
        pid, name = listeners[port]
        assert "Replica" in name, f"port {port} is served by {name}, not the replica"
        proxies = [p for p, (_, n) in listeners.items() if "Proxy" in n]
        assert proxies and port not in proxies, listeners
        # rayflow's own listener (serve/listener.py), not Serve's direct
        # ingress, which would answer its own `/-/routes` with 200
        routes = httpx.get(f"{api.url}/-/routes", timeout=10)
        assert routes.status_code == 404 and "error" in routes.json(), routes.text

        path = f"/realtime/v1/streams/{run_id}/out"

        async def append(texts: list[str]) -> None:
            async with api.client() as c:
                for text in texts:
                    r = await c.post(
                        f"/realtime/v1/streams/{run_id}/self/out/append",
                        headers=api.headers(),
                        content=text,
                    )
                    assert r.status_code == 200, r.text

        asyncio.run(append(["a", "b", "c"]))
        first = asyncio.run(read_sse(api, path, token=token, max_records=3))
        assert [d for _, d in first.chunks] == ["a", "b", "c"]
        last_id = first.events[-1].id
        assert last_id is not None

        # a reader connected when the replica dies, as one always is in use:
        # its connection's server end is left in TIME_WAIT on the HTTP port
        reader = _open_sse(port, path, token)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # the replica: a child of our script's Ray
        eventually(lambda: _drained(reader), what="the dead replica's end of the SSE reader")
        reader.close()
        assert _time_wait_on(port), "the kill left no TIME_WAIT on the port to recover from"

        def replaced() -> bool:
            # the health check first: until a replica answers, a refused
            # connection costs nothing, while listing every socket of every
            # process of the cluster 20 times a second takes a core the
            # restarting replica needs
            if not _healthy(api.url):
                return False
            now = _listeners(root).get(port)
            return now is not None and now[0] != pid

        eventually(replaced, timeout_s=RECOVERY_S, what="a new replica on the same port")
        print(f"port served again {time.monotonic() - killed:.1f} s after the kill")
        assert "Replica" in _listeners(root)[port][1]

        asyncio.run(append(["d", "e"]))
        rest = asyncio.run(
            read_sse(api, path, token=token, headers={"Last-Event-ID": last_id}, max_records=2)
        )
        assert [d for _, d in rest.chunks] == ["d", "e"]


def test_a_taken_http_port_is_reported_before_serve_tries_it() -> None:
    """The replica binds the HTTP port itself; a port another
    process holds is named at once (Serve itself fails the deployment with a
    generic error after retrying for ~20 s)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        saved = dict(os.environ)
        ingress.configure(port)  # as `rayflow.init(serve=True)` does before Ray starts
        try:
            with pytest.raises(RayflowError, match=f"port {port} on 127.0.0.1 is in use"):
                start(Settings(http_host="127.0.0.1", http_port=port))
        finally:
            ingress.configure(None)
            assert dict(os.environ) == saved
