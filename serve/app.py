"""The Ray Serve deployment of rayflow's HTTP API (wiring only).

- `start(settings)` deploys it from a driver that ran `rayflow.init()`
  (used by `rayflow.init(serve=True)` and `rayflow serve`);
- `serve run serve/serve_config.yaml` (or `serve run serve.app:build`)
  deploys it from Ray Serve's CLI, configured by `RAYFLOW_*` env vars.

The listen address is `RAYFLOW_HTTP_HOST`:`RAYFLOW_HTTP_PORT` (default
127.0.0.1:8000). Replicas hold no state; run as many as you like. When the
process that calls `start` also started the local Ray for it, the one
replica listens on that address itself (`rayflow/_runtime/ingress.py`): with
rayflow's own listener (`serve/listener.py`, the default) or Ray Serve's
direct ingress — no proxy hop per request or SSE event; otherwise Serve's
proxy does and routes to the replicas.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import httpx
from ray import serve
from ray.serve import Application

from rayflow._config import LOOPBACK_HOSTS, Settings
from rayflow._logging import serve_logging_config
from rayflow.errors import RayflowError, Unavailable

log = logging.getLogger("rayflow.serve")

APP_NAME = "rayflow"
#: Serve's default (5) makes the 6th concurrent SSE reader hang (docs/scaling.md);
#: an SSE reader costs a replica one idle coroutine, so allow many.
MAX_ONGOING_REQUESTS = 5000


def _keep_replica_grpc_on_loopback() -> None:
    """Ray Serve 2.60 starts each replica's inter-deployment gRPC server on
    `[::]:0` — every interface — whatever Ray's node address is. A loopback
    deployment must listen on nothing else (docs/security.md), so bind it to
    127.0.0.1. Runs in the replica's constructor, before Serve starts that
    server; on a multi-node cluster (not loopback) Serve's default stays."""
    from ray.serve._private import replica

    module: Any = replica
    original = module.add_port_to_grpc_server

    def loopback(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    module.add_port_to_grpc_server = loopback


@serve.deployment(
    name="RayflowHTTP",
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress()
class RayflowHTTP:
    """One replica: connects to the rayflow deployment and serves the API."""

    def __init__(self, settings_json: str, secret_key: str, listen: bool = False) -> None:
        """`listen`: serve `http_host:http_port` with rayflow's own listener
        (`serve/listener.py`) once the app is built."""
        from rayflow._runtime.serving import ingress, start_control_plane

        # before Serve starts this replica's direct-ingress server, if any
        ingress.reuse_address()
        settings = Settings.model_validate_json(settings_json)
        settings = settings.model_copy(update={"secret_key": secret_key})
        # joins the deployment's Controller, or starts it when the app was
        # deployed on its own (`serve run serve/serve_config.yaml`)
        start_control_plane(settings)
        if settings.http_host in LOOPBACK_HOSTS:
            _keep_replica_grpc_on_loopback()
        self._settings, self._secret_key, self._listen = settings, secret_key, listen
        self._listener: Any = None

    async def __serve_build_asgi_app__(self) -> Any:
        from serve import listener
        from serve.api import create_app, listener_app, listener_protocol

        app = create_app(self._settings, self._secret_key)
        if self._listen:
            host, port = self._settings.http_host, self._settings.http_port
            self._listener = await listener.start(
                listener_app(app), host, port, listener_protocol(app)
            )
        return app

    def check_health(self) -> None:
        """Serve's periodic health check: the replica's listener still serves."""
        if self._listener is not None:
            self._listener.check()

    def __del__(self) -> None:
        # Serve calls it on a graceful stop (on the replica's loop)
        if getattr(self, "_listener", None) is not None:
            self._listener.stop()


def application(settings: Settings, *, num_replicas: int = 1, listen: bool = False) -> Application:
    """The Serve application for `settings` (its secret key resolved);
    `listen`: its one replica serves the HTTP port with rayflow's listener."""
    from rayflow._runtime.serving import secret_key_for

    if settings.durable_streams_anonymous and settings.http_host not in LOOPBACK_HOSTS:
        raise RayflowError(
            "RAYFLOW_DURABLE_STREAMS_ANONYMOUS=true lets anyone read and write streams without"
            f" a key; it is refused while the HTTP API listens on {settings.http_host}. Use it"
            " on loopback only (RAYFLOW_HTTP_HOST=127.0.0.1), or give clients tokens scoped"
            " to their streams (read:streams:<path>, write:streams:<path>)"
        )
    secret = secret_key_for(settings)
    # replicas run in other directories: pin the Store and data_dir absolutely
    resolved = settings.model_copy(
        update={
            "secret_key": secret,
            "store": settings.store_url(),
            "data_dir": settings.data_dir.resolve(),
        }
    )
    settings_json = resolved.model_dump_json()
    deployment: Any = RayflowHTTP  # Serve's decorator returns a Deployment
    app: Application = deployment.options(
        num_replicas=num_replicas, logging_config=serve_logging_config(settings)
    ).bind(settings_json, secret, listen)
    return app


def build(args: dict[str, str]) -> Application:
    """App builder for `serve run serve.app:build [num_replicas=N]`; settings
    come from `RAYFLOW_*` env vars."""
    return application(Settings(), num_replicas=int(args.get("num_replicas", 1)))


def proxy_port(settings: Settings) -> int:
    """The port Serve's proxy listens on: `http_port`, unless the replica
    serves it itself (`rayflow/_runtime/ingress.py`); then a free port of the
    same host (Serve always runs a proxy)."""
    from rayflow._runtime.serving import ingress

    if ingress.direct_port() != settings.http_port:
        return settings.http_port
    with socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET) as s:
        s.bind((settings.http_host, 0))
        port: int = s.getsockname()[1]
        return port


def start(settings: Settings, *, num_replicas: int = 1) -> str:
    """Start Serve on `settings.http_host:http_port` and deploy the API; returns
    its base URL. Ray must be initialised (rayflow.init()). When this process
    started Ray for it (`rayflow.init(serve=True)`, `rayflow dev`), the one
    replica listens on that port itself (rayflow's listener, or Serve's
    direct ingress: `Settings.http_ingress`) and Serve's proxy on a free one."""
    from rayflow._runtime.serving import ingress

    if ingress.direct_port() == settings.http_port:
        if num_replicas != 1:
            raise RayflowError(
                f"the replica serves port {settings.http_port} itself, so there is one;"
                " for more, start Ray with RAY_SERVE_ENABLE_DIRECT_INGRESS=0"
            )
        # Serve would retry the replica on a taken port, then fail the whole
        # deployment with a generic error after ~20 s (measured): say it now
        with socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET) as s:
            try:
                s.bind((settings.http_host, settings.http_port))
            except OSError as e:
                raise RayflowError(
                    f"port {settings.http_port} on {settings.http_host} is in use ({e.strerror});"
                    " set another with http_port= / RAYFLOW_HTTP_PORT"
                ) from None
    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": settings.http_host, "port": proxy_port(settings)},
        logging_config=serve_logging_config(settings),
    )
    listen = ingress.own_listener(settings.http_port)
    serve.run(
        application(settings, num_replicas=num_replicas, listen=listen),
        name=APP_NAME,
        route_prefix="/",
        blocking=False,
    )
    url = f"http://{settings.http_host}:{settings.http_port}"
    log.info("rayflow HTTP API at %s (OpenAPI at %s/docs)", url, url)
    return url


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    """Return once the API at base URL `url` answers `GET /healthz` with 200;
    raise Unavailable after `timeout_s`. `start` returns when Serve has the
    deployment, which can be before the replica (or proxy) takes requests."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise Unavailable(
                f"the rayflow HTTP API did not answer on {url}/healthz within {timeout_s:g} s"
            )
        time.sleep(0.2)


def stop() -> None:
    """Remove the API (Serve itself keeps running)."""
    serve.delete(APP_NAME)
