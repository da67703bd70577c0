"""Run subscriptions: what `runs.subscribeToRun`, `subscribeToRunsWithTag`,
`subscribeToBatch` and the `useRealtimeRun*` hooks read.

ElectricSQL shape protocol (serve/run_shapes.py, docs/wire.md). Any 4xx but
429 is final for the client, so an unknown run is a 404 only on the first
request of a subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from contextlib import AbstractContextManager
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from rayflow._runtime.serving import current
from rayflow._tokens import allows
from rayflow.errors import Forbidden
from rayflow.store.base import RunRecord
from serve import core, open_streams
from serve.auth import Principal
from serve.deps import AppState, Caller, ServeState
from serve.errors import BadRequest
from serve.routes.runs import check_tag_filter
from serve.run_shapes import MAX_ROWS, ShapeRequest, serve_shape

router = APIRouter(tags=["run subscriptions"])

SHAPE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": (
            "ElectricSQL shape log: a JSON array of `{key, value: <run row>, headers:"
            " {operation}}` messages, then `{headers: {control: 'up-to-date'}}`"
        )
    }
}


def _request(
    offset: str, handle: str | None, live: str | None, skip_columns: str | None
) -> ShapeRequest:
    skip = {c.strip() for c in (skip_columns or "").split(",") if c.strip()}
    return ShapeRequest(offset=offset, handle=handle, live=live == "true", skip=skip)


def _held(who: Principal, st: ServeState, req: ShapeRequest) -> AbstractContextManager[None]:
    """A live poll holds one of the caller's open streams while it waits."""
    if not req.live:
        return contextlib.nullcontext()
    return open_streams.hold(who, st.settings.max_streams_per_token)


Offset = Annotated[
    str, Query(description="`-1` for the whole shape, else the last electric-offset")
]
Handle = Annotated[str | None, Query(description="the electric-handle of the shape")]
Live = Annotated[str | None, Query(description="`true`: wait for a change (long poll)")]
Skip = Annotated[str | None, Query(alias="skipColumns", description="columns to leave out")]


@router.get("/realtime/v1/runs/{run_id}", responses=SHAPE_RESPONSES)
async def subscribe_to_run(
    run_id: str,
    who: Caller,
    st: AppState,
    offset: Offset = "-1",
    handle: Handle = None,
    live: Live = None,
    skip_columns: Skip = None,
) -> JSONResponse:
    """One run, pushed as it changes (status, metadata, output, its streams).
    Secret key, or a token with `read:runs:<runId>`."""
    who.require("read", "runs", run_id)
    await core.get_run(run_id)

    async def load() -> list[RunRecord]:
        run = await asyncio.to_thread(current().store.get_run, run_id)
        return [run] if run is not None else []

    req = _request(offset, handle, live, skip_columns)
    with _held(who, st, req):
        return await serve_shape(req, f"run:{run_id}", load, {run_id})


_DURATION = re.compile(r"^([0-9]+)\s*(s|m|h|d|w)$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def created_after(value: str | None) -> int | None:
    """`createdAt=1h` (a period back from now) or an ISO date, as ms."""
    if value is None or not value.strip():
        return None
    v = value.strip()
    m = _DURATION.match(v)
    if m:
        # a period longer than the epoch is "every run", not a negative time;
        # past 15 digits it is longer whatever the unit (and `int` of
        # thousands of digits is an error)
        if len(m.group(1)) > 15:
            return 0
        return max(0, int(time.time() * 1000) - int(m.group(1)) * _UNIT_MS[m.group(2)])
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        shown = v if len(v) <= 40 else v[:40] + f"… ({len(v)} characters)"
        raise BadRequest(
            f"createdAt must be a period like 1h or 7d, or an ISO date; got {shown!r}"
        ) from None


@router.get("/realtime/v1/runs", responses=SHAPE_RESPONSES)
async def subscribe_to_runs_with_tag(
    who: Caller,
    st: AppState,
    tags: Annotated[
        str | None, Query(description="comma-separated; runs carrying all of them")
    ] = None,
    created_at: Annotated[str | None, Query(alias="createdAt")] = None,
    offset: Offset = "-1",
    handle: Handle = None,
    live: Live = None,
    skip_columns: Skip = None,
) -> JSONResponse:
    """Runs carrying every tag in `tags` (newest 500), pushed as they change
    and as new ones are triggered. Secret key, `read:runs`, or a token with
    `read:tags:<tag>` for one of the tags."""
    wanted = [t.strip() for t in (tags or "").split(",") if t.strip()]
    if not wanted:
        raise BadRequest("tags is required: /realtime/v1/runs?tags=tag1,tag2")
    check_tag_filter(wanted, "tags")
    scopes = list(who.scopes)
    if not who.secret and not (
        allows(scopes, "read", "runs", None)
        or any(allows(scopes, "read", "tags", t) for t in wanted)
    ):
        raise Forbidden(f"token does not allow reading runs tagged {wanted}; its scopes: {scopes}")
    since = created_after(created_at)

    async def load() -> list[RunRecord]:
        store = current().store
        return await asyncio.to_thread(
            store.list_runs, tags=wanted, created_after=since, limit=MAX_ROWS
        )

    def admits(run: RunRecord) -> bool:
        tags = json.loads(run.tags) or []
        carried = set(tags) if isinstance(tags, list) else {str(tags)}
        return carried.issuperset(wanted) and (since is None or run.created_at > since)

    req = _request(offset, handle, live, skip_columns)
    shape_id = f"tags:{','.join(sorted(wanted))}:{created_at}"
    with _held(who, st, req):
        return await serve_shape(req, shape_id, load, None, admits)


@router.get("/realtime/v1/batches/{batch_id}", responses=SHAPE_RESPONSES)
async def subscribe_to_batch(
    batch_id: str,
    who: Caller,
    st: AppState,
    offset: Offset = "-1",
    handle: Handle = None,
    live: Live = None,
    skip_columns: Skip = None,
) -> JSONResponse:
    """The runs of a batch trigger, pushed as they change. Secret key,
    `read:runs`, or a token with `read:batch:<batchId>`."""
    scopes = list(who.scopes)
    if not who.secret and not (
        allows(scopes, "read", "runs", None) or allows(scopes, "read", "batch", batch_id)
    ):
        raise Forbidden(f"token does not allow reading batch {batch_id}; its scopes: {scopes}")

    async def load() -> list[RunRecord]:
        store = current().store
        return await asyncio.to_thread(store.list_runs, batch_id=batch_id, limit=MAX_ROWS)

    runs = await load()
    if not runs and offset == "-1":
        from rayflow.errors import RunNotFound

        raise RunNotFound(f"batch {batch_id} not found (or its runs were removed by retention)")
    ids = {r.id for r in runs}
    req = _request(offset, handle, live, skip_columns)
    with _held(who, st, req):
        return await serve_shape(req, f"batch:{batch_id}", load, ids)
