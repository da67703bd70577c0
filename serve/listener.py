"""rayflow's own HTTP listener inside a Serve replica.

When the process that deploys the API also started the local Ray
(`rayflow.init(serve=True)`, `rayflow dev`; `Settings.http_ingress` =
"rayflow", the default), the one replica serves `http_host:http_port`
itself with a plain uvicorn server (httptools; a Durable Streams append
answered below ASGI, `serve/ds_protocol.py`) on the replica's own event
loop, serving the app the replica built (`serve/api.py`): every route,
the same auth, body limits, CORS and errors. Nothing of Ray Serve's
per-request path runs (request metadata, its disconnect-watching receive
task, route matching for metrics, access-log records, per-request metrics):
measured at ~65 % of the replica's CPU under small requests
(benchmarks/README.md, Durable Streams). Serve still runs the replica
(placement, restarts, health checks) and its proxy on another port.

Invariants:
- Started by the replica (`RayflowHTTP.__serve_build_asgi_app__`), stopped
  with it (`__del__`, which Serve calls on a graceful stop; a killed
  replica's socket dies with its process). A listener that stopped on its
  own fails the replica's health check (`check`): Serve replaces it.
- Bound with `SO_REUSEADDR`: a replacement replica takes the port back at
  once although the dead one's connections sit in TIME_WAIT; a port another
  socket *listens* on is still refused. A bind refused that way is retried
  for `BIND_WAIT_S` (a replica being replaced may still hold it), then the
  constructor fails with a message naming the port (Serve retries it).
- Loopback unless the user set `RAYFLOW_HTTP_HOST` otherwise: it binds
  exactly `http_host`, as Serve's proxy would have.
- A client that disconnects is not watched per request (Serve's direct
  ingress cancels the handler): a long poll runs to its timeout and its
  answer is dropped; an SSE body notices on its next event (sse-starlette
  listens for `http.disconnect` itself).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import Any

import uvicorn

from rayflow.errors import RayflowError

log = logging.getLogger("rayflow.serve")

#: how long a replica waits for its port while another process listens on it
BIND_WAIT_S = 30.0
#: an idle keep-alive connection is closed after this (Serve's own default)
KEEP_ALIVE_S = 90
#: a graceful stop waits this long for open responses (SSE bodies never end
#: by themselves; their clients resume by offset or `Last-Event-ID`)
STOP_GRACE_S = 2


class ReplicaListener:
    """One uvicorn server on an already bound socket, run as a task of the
    replica's event loop."""

    def __init__(self, app: Any, sock: socket.socket, protocol: type | None = None) -> None:
        """`protocol`: the HTTP protocol class (a subclass of uvicorn's
        httptools one: `serve/ds_protocol.py`); default uvicorn's."""
        # uvicorn's logger otherwise prints every connection's lifecycle
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        host, port = sock.getsockname()[:2]
        self.port: int = port
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                http=protocol or "httptools",
                ws="none",
                lifespan="off",  # Serve already ran the app's lifespan
                access_log=False,
                server_header=False,  # a header every response carries for nothing
                log_config=None,
                proxy_headers=False,  # the edge: no proxy in front to trust
                timeout_keep_alive=KEEP_ALIVE_S,
                timeout_graceful_shutdown=STOP_GRACE_S,
            )
        )
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        except Exception:
            log.exception("the HTTP listener on port %d stopped", self.port)
            raise

    async def started(self) -> None:
        """Return once the server accepts connections."""
        while not self._server.started:
            if self._task.done():
                self._task.result()  # its error
                raise RayflowError(f"the HTTP listener on port {self.port} exited at start")
            await asyncio.sleep(0.01)

    def check(self) -> None:
        """Raise when the server is no longer serving (the replica's health
        check: Serve then replaces the replica, which listens again)."""
        if self._task.done() and not self._server.should_exit:
            raise RayflowError(f"the HTTP listener on port {self.port} stopped")

    def stop(self) -> None:
        """Stop accepting, finish (or after `STOP_GRACE_S` cut) open responses."""
        self._server.should_exit = True

    async def stopped(self) -> None:
        """Return once the server has stopped (after `stop`)."""
        await asyncio.shield(self._task)


def bind(host: str, port: int, wait_s: float = BIND_WAIT_S) -> socket.socket:
    """A listening-ready socket bound to `host:port` with `SO_REUSEADDR`,
    waiting up to `wait_s` while another socket listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + wait_s
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return sock
        except OSError as e:
            sock.close()
            if e.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise RayflowError(
                    f"the rayflow HTTP API cannot listen on {host}:{port} ({e.strerror});"
                    " stop what listens there or set another port (RAYFLOW_HTTP_PORT)"
                ) from None
        time.sleep(0.2)


async def start(app: Any, host: str, port: int, protocol: type | None = None) -> ReplicaListener:
    """Serve `app` on `host:port` from the running event loop (`protocol`:
    see `ReplicaListener`)."""
    sock = await asyncio.to_thread(bind, host, port)
    listener = ReplicaListener(app, sock, protocol)
    await listener.started()
    return listener
