"""`runs.retrieve / list / cancel`: look at and steer runs from anywhere."""

from __future__ import annotations

import asyncio
import builtins

from rayflow._response import Response
from rayflow._run_model import Run
from rayflow._run_model import run_metadata as run_metadata
from rayflow._runtime import connection
from rayflow._runtime.calls import call
from rayflow._status import RunStatus
from rayflow.errors import RunNotFound


def retrieve(run_id: str) -> Response[Run]:
    """The run's current state. Raises `RunNotFound`."""

    async def go() -> Run:
        store = connection.current().store
        record = await asyncio.to_thread(store.get_run, run_id)
        if record is None:
            raise RunNotFound(
                f"run {run_id} does not exist (or was removed by retention)", run_id=run_id
            )
        return Run.from_record(record)

    return Response(go)


def list(
    *,
    status: str | builtins.list[str] | None = None,
    task_id: str | None = None,
    parent_id: str | None = None,
    tag: str | builtins.list[str] | None = None,
    batch_id: str | None = None,
    limit: int = 100,
) -> Response[builtins.list[Run]]:
    """Runs, newest first, filtered by status(es), task, parent, batch, or
    tag(s): with several tags, the runs carrying every one of them."""
    statuses = [status] if isinstance(status, str) else status
    tags = [tag] if isinstance(tag, str) else tag

    async def go() -> builtins.list[Run]:
        store = connection.current().store
        records = await asyncio.to_thread(
            store.list_runs,
            statuses=statuses,
            task_id=task_id,
            parent_id=parent_id,
            tags=tags,
            batch_id=batch_id,
            limit=limit,
        )
        return [Run.from_record(r) for r in records]

    return Response(go)


def cancel(run_id: str) -> Response[bool]:
    """Cancel a run (and its active child runs): its code is stopped, its
    streams closed. Resolves False if it had already finished. Raises
    `RunNotFound`."""

    async def go() -> bool:
        conn = connection.current()
        canceled: bool = await call(conn.controller.cancel.remote(run_id))
        return canceled

    return Response(go)


def wait(run_id: str) -> Response[Run]:
    """Wait until a run has finished and resolve to it. Raises `RunNotFound`."""

    async def go() -> Run:
        conn = connection.current()
        await call(conn.controller.wait_run.remote(run_id))
        return await retrieve(run_id)

    return Response(go)


__all__ = ["Run", "RunStatus", "cancel", "list", "retrieve", "wait"]
