"""The FastAPI application: routers, error handlers, CORS and body limits;
and what rayflow's own listener serves (`listener_app`)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from rayflow._config import Settings
from serve import ds_append, ds_wire, openapi, realtime_append
from serve.deps import MAX_APPEND_BYTES, ServeState
from serve.errors import ERROR_RESPONSES, install_error_handlers
from serve.middleware import (
    BodyLimits,
    EdgeMiddleware,
    default_body_limits,
    edge,
    install_middleware,
)
from serve.routes import (
    batches,
    dashboard,
    durable_streams,
    inputs,
    realtime_runs,
    runs,
    s2,
    session_streams,
    sessions,
    streams,
    tokens,
    types,
    waitpoints,
)


def create_app(settings: Settings, secret_key: str) -> FastAPI:
    """The HTTP API over the rayflow deployment this process is connected to.

    Holds no state beyond the settings and the secret key, so any number of
    copies (Ray Serve replicas) serve the same API.
    """
    app = FastAPI(
        title="rayflow",
        version="0.1.0",
        description=(
            "Trigger tasks, read their output streams as SSE, send to their input "
            "streams. The realtime endpoints follow Trigger.dev's wire format."
        ),
        responses=ERROR_RESPONSES,
    )
    app.state.rayflow = ServeState(settings=settings, secret_key=secret_key)
    install_error_handlers(app)
    # inputs before streams: `…/input/{id}` must win over `…/{target}/{key}`
    # Durable Streams first: its prefix is its own, and a producer's append
    # should not be matched against every route before it
    for module in (
        durable_streams,
        runs,
        batches,
        realtime_runs,
        inputs,
        streams,
        sessions,
        session_streams,
        s2,
        tokens,
        waitpoints,
        types,
        dashboard,
    ):
        app.include_router(module.router)
    dashboard.mount_dashboard(app, settings.dashboard_api_origins)
    openapi.install(app)

    @app.get("/healthz", tags=["rayflow"])
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    install_middleware(app, _limits(settings))
    return app


def _limits(settings: Settings) -> BodyLimits:
    return default_body_limits(settings.max_input_bytes, MAX_APPEND_BYTES)


def listener_protocol(app: FastAPI) -> type:
    """The HTTP protocol of rayflow's listener serving `listener_app(app)`:
    uvicorn's, with a Durable Streams append whose body is whole answered
    below ASGI (`serve/ds_protocol.py`, `serve/ds_append.py: DirectAppends`;
    the same answers as `listener_app` gives)."""
    from serve.ds_protocol import protocol_for

    limits = EdgeMiddleware(_durable_stream, limits=_limits(app.state.rayflow.settings))
    return protocol_for(ds_append.DirectAppends(app.state.rayflow, limits))


def listener_app(app: FastAPI) -> ASGIApp:
    """`app` as rayflow's listener serves it (`serve/listener.py`): a
    Durable Streams stream URL goes straight to its route, behind the same
    CORS, body limits and last-resort 500 (`serve/middleware.py`) but none of
    FastAPI's own layers (exception middlewares, an exit stack, the router's
    walk: ~30 % of the replica's event loop under 64 producers of small
    appends, benchmarks/README.md); a POST (a producer's append) is
    answered in raw ASGI (`serve/ds_append.py`, the same answers); so is a
    run stream's `POST …/{run_id}/{target}/{key}/append` (a backend's
    append: `serve/realtime_append.py`); every other request goes to `app`.
    The route answers its own errors (`serve/routes/durable_streams.py`)."""
    limits = _limits(app.state.rayflow.settings)
    direct = edge(_durable_stream, limits)
    limits_only = EdgeMiddleware(_durable_stream, limits=limits)
    st: ServeState = app.state.rayflow
    prefix = durable_streams.PREFIX
    methods = set(durable_streams.METHODS)
    run_append = realtime_append.PATH

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "POST" and path.endswith("/append"):
            match = run_append.match(path)
            if match is not None:
                params = match.groupdict()
                await realtime_append.append(st, limits_only, scope, receive, send, params)
                return
        if scope["type"] == "http" and path.startswith(prefix) and scope["method"] in methods:
            if scope["method"] == "POST":  # a producer's append: raw ASGI
                await ds_append.append(st, limits_only, scope, receive, send, path[len(prefix) :])
                return
            scope["app"] = app  # what `request.app` is under FastAPI
            scope["path_params"] = {"path": path[len(prefix) :]}
            await direct(scope, receive, send)
        else:
            await app(scope, receive, send)

    return serve


async def _durable_stream(scope: Scope, receive: Receive, send: Send) -> None:
    try:
        response = await durable_streams.durable_stream(Request(scope, receive))
    except HTTPException as e:  # a chunked body cut off at its limit (413)
        response = ds_wire.error(e.status_code, str(e.detail))
    await response(scope, receive, send)
