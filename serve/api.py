"""The FastAPI application: routers, error handlers, CORS and body limits."""

from __future__ import annotations

from fastapi import FastAPI

from rayflow._config import Settings
from serve import openapi
from serve.deps import MAX_APPEND_BYTES, ServeState
from serve.errors import ERROR_RESPONSES, install_error_handlers
from serve.middleware import default_body_limits, install_middleware
from serve.routes import (
    batches,
    dashboard,
    durable_streams,
    inputs,
    realtime_runs,
    runs,
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

    install_middleware(app, default_body_limits(settings.max_input_bytes, MAX_APPEND_BYTES))
    return app
