"""rayflow's own additions for the dashboard and tools: task ids, a run's
streams, run-status events, and the dashboard's static files."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from serve import core, open_streams
from serve.deps import AppState, Caller
from serve.routes.runs import run_response
from serve.routes.streams import SSE_RESPONSES
from serve.run_feed import feed
from serve.sse import DONE, SEP, sse_response
from serve.wire import WireModel

router = APIRouter(tags=["rayflow"])

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
RUN_EVENTS_POLL_S = 1.0
RUN_EVENTS_MAX_S = 600.0


class TaskItem(BaseModel):
    id: str


class TaskList(BaseModel):
    data: list[TaskItem]


class OutputStreamInfo(WireModel):
    key: str
    length: int
    size_bytes: int
    closed: bool
    created_at: int
    updated_at: int


class InputStreamInfo(BaseModel):
    id: str
    messages: int
    waiting: bool


class RunStreams(WireModel):
    run_id: str
    outputs: list[OutputStreamInfo]
    inputs: list[InputStreamInfo]


@router.get("/rayflow/v1/tasks", response_model=TaskList)
async def list_tasks(who: Caller) -> TaskList:
    """The ids of the tasks that can be triggered."""
    who.require("read", "runs", None)
    ids = await core.task_ids()
    return TaskList(data=[TaskItem(id=i) for i in ids])


@router.get("/rayflow/v1/runs/{run_id}/streams", response_model=RunStreams)
async def run_streams(run_id: str, who: Caller) -> RunStreams:
    """A run's output streams (length, size, closed) and input streams
    (messages sent, whether the run waits on it)."""
    who.require("read", "runs", run_id)
    outputs, inputs = await core.run_streams(run_id)
    return RunStreams(
        run_id=run_id,
        outputs=[
            OutputStreamInfo(
                key=o.key,
                length=o.length,
                size_bytes=o.size_bytes,
                closed=o.closed,
                created_at=o.created_at,
                updated_at=o.updated_at,
            )
            for o in outputs
        ],
        inputs=[InputStreamInfo(id=i, messages=n, waiting=w) for i, n, w in inputs],
    )


@router.get("/rayflow/v1/runs/{run_id}/events", responses=SSE_RESPONSES)
async def run_events(run_id: str, who: Caller, st: AppState) -> EventSourceResponse:
    """`event: run` with the run (as `GET /api/v3/runs/{id}`) whenever its
    status changes, then `data: [DONE]` once it has finished."""
    who.require("read", "runs", run_id)
    await core.get_run(run_id)
    release = open_streams.take(who, st.settings.max_streams_per_token)
    return sse_response(_run_events(run_id), on_close=release)


async def _run_events(run_id: str) -> AsyncIterator[ServerSentEvent]:
    last_key = None
    started = time.monotonic()
    changes = feed()
    while time.monotonic() - started < RUN_EVENTS_MAX_S:
        since = await changes.changes()
        run, parent, root, children = await core.retrieve_with_relations(run_id)
        key = (run.status, run.updated_at, len(children))
        if key != last_key:
            last_key = key
            body = run_response(run, parent, root, children).model_dump_json()
            yield ServerSentEvent(body, event="run", sep=SEP)
        if run.finished:
            yield DONE
            return
        # pushed by the run change feed; the timeout only catches a new child
        await changes.wait_for(since, {run_id}, RUN_EVENTS_POLL_S)


def dashboard_config_js(api_origins: list[str]) -> str:
    """The dashboard's `config.js`: the API origins besides the page's own that
    `?api=` may name (the dashboard sends its key there, so no other)."""
    origins = [o.rstrip("/") for o in api_origins]
    return f"export const API_ORIGINS = Object.freeze({json.dumps(origins)});\n"


def mount_dashboard(app: FastAPI, api_origins: list[str]) -> None:
    """The dashboard at /dashboard/ (and / redirects there); its JS client at /client.js."""
    if not DASHBOARD_DIR.is_dir():
        return
    config_js = dashboard_config_js(api_origins)

    # before the static mount, so the operator's setting wins over the file's default
    @app.get("/dashboard/config.js", include_in_schema=False)
    async def config() -> Response:
        return Response(config_js, media_type="text/javascript")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/client.js", include_in_schema=False)
    async def client_js() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "client.js", media_type="text/javascript")

    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
