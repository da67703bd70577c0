"""Who listens on the HTTP port of a local deployment: the Serve replica
itself, with no Serve proxy between the client and the app.

Two ways, `Settings.http_ingress`:
- "rayflow" (the default): rayflow's own HTTP server in the replica
  (`serve/listener.py`: uvicorn on the replica's event loop, serving the
  same FastAPI app). Ray Serve's direct ingress stays off; nothing of Serve
  runs per request. Measured (benchmarks/README.md, Durable Streams):
  Serve's direct-ingress request path (request metadata, its receive task,
  route matching for metrics, the access-log record, metrics) was ~65 % of
  the replica's CPU under 64 producers of small appends.
- "serve": Ray Serve's direct ingress (2.60), turned on for the whole Ray
  cluster by `RAY_SERVE_*` environment variables that its controller and
  replicas read when they start, so `configure(port, ...)` must run before
  the local Ray does (`bootstrap.start_ray`); the workers inherit the
  driver's environment.
Either way the proxy hop is gone (~0.9 ms of every SSE chunk and half of an
HTTP append's time on this hardware, measured before).

Invariants:
- Only a Ray that rayflow starts here is configured; joining a cluster
  (`address=`) leaves Serve as the cluster was started (its proxy serves).
- One replica serves the port (a second could not bind it), so this serves
  one replica; more replicas go through the proxy: `rayflow dev --replicas N`.
- Serve still runs its proxy; it listens on a free port of the same host
  (`serve/app.py`).
- A variable the user set wins: `RAY_SERVE_ENABLE_DIRECT_INGRESS=0` (or any
  `RAY_SERVE_DIRECT_INGRESS_*` of their own) keeps Serve's proxy on the port.
- "serve": no port quarantine and no drain period: those exist so an
  external load balancer can deregister a replica; here the port must come
  back to the restarted replica at once. Its range is exactly the HTTP port.
- The port is bound with `SO_REUSEADDR` either way ("serve":
  `reuse_address`, called in the replica's constructor). Serve 2.60 binds a
  replica's port without it, so after a replica dies with connections open
  (an SSE reader is always open) their server-side ends sit in TIME_WAIT
  for Linux's fixed 60 s and every replacement's bind fails (Serve then
  blocks the port and reports `NoAvailablePortError`) until they expire:
  measured 62 s. With it the port comes back as soon as the new replica is
  up (~10 s after a SIGKILL on this box; `tests/test_http_ingress.py`).
  `SO_REUSEADDR` (what uvicorn, asyncio and Serve's own proxy set) still
  refuses a port that another socket listens on, so one port still means
  one replica.
"""

from __future__ import annotations

import os
import socket
from typing import Any

ENABLE = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
MIN_PORT = "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"
#: exclusive upper end of the range
MAX_PORT = "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"
DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
QUARANTINE = "RAY_SERVE_PORT_QUARANTINE_S"

#: what `configure` last wrote (so it can be told apart from the user's own)
_ours: dict[str, str] = {}
#: the port a replica serves itself in the Ray this process started, if any
_direct_port: int | None = None
#: who serves `_direct_port`: "rayflow" (its own listener) or "serve"
_mode = "rayflow"


def _user_decided() -> bool:
    """The user set Serve's direct-ingress variables themselves."""
    names = [k for k in os.environ if k == ENABLE or k.startswith("RAY_SERVE_DIRECT_INGRESS_")]
    return any(os.environ[k] != _ours.get(k) for k in names)


def configure(port: int | None, mode: str = "rayflow") -> None:
    """Before starting a local Ray: let the replica serve `port` itself, with
    rayflow's own listener (`mode` "rayflow") or Serve's direct ingress
    ("serve"); None: leave Serve's proxy on the HTTP port. Removes what an
    earlier call set."""
    global _direct_port, _mode
    _direct_port = None
    if _user_decided():
        return
    for name in _ours:
        os.environ.pop(name, None)
    _ours.clear()
    if port is None:
        return
    _direct_port, _mode = port, mode
    if mode == "rayflow":
        return  # Serve's direct ingress stays off: the replica starts rayflow's listener
    _ours.update({ENABLE: "1", MIN_PORT: str(port), MAX_PORT: str(port + 1)})
    _ours.update({k: "0" for k in (DRAIN, QUARANTINE) if k not in os.environ})
    os.environ.update(_ours)


def not_started() -> None:
    """This process joins a cluster it did not start: Serve is as it was started."""
    global _direct_port
    _direct_port = None


def direct_port() -> int | None:
    """The HTTP port the Serve replica listens on itself, in the Ray this
    process started; None when Serve's proxy serves the HTTP port."""
    return _direct_port


def own_listener(port: int) -> bool:
    """The replica serves `port` with rayflow's own listener (not Serve's
    direct ingress, not the proxy)."""
    return _direct_port == port and _mode == "rayflow"


class _ReusingSockets:
    """The `socket` module as Serve's HTTP server start sees it, except that a
    new socket has `SO_REUSEADDR` set before Serve binds it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def socket(*args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.socket(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


def reuse_address() -> None:
    """In a Serve replica, before Serve starts its direct-ingress HTTP server
    (it does after the constructor): bind that server's port with
    `SO_REUSEADDR`, so a replacement replica gets the port of one that died
    with connections open at once, not after their 60 s TIME_WAIT. Serve
    2.60's `start_asgi_http_server` creates the socket through its module's
    `socket`; the replica's other sockets (gRPC, Ray's) are not touched."""
    from ray.serve._private import http_util

    module: Any = http_util
    if module.socket is socket:
        module.socket = _ReusingSockets()
