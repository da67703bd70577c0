"""`client.runs`: retrieve, list, cancel, wait and subscribe over HTTP."""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rayflow._response import Response, run_sync
from rayflow._status import RunStatus
from rayflow.client._transport import Transport

if TYPE_CHECKING:
    from rayflow._run_model import Run

#: Trigger.dev database status (run subscriptions) -> rayflow status
_STATUS = {
    "PENDING": RunStatus.QUEUED,
    "EXECUTING": RunStatus.EXECUTING,
    "WAITING_TO_RESUME": RunStatus.WAITING,
    "COMPLETED_SUCCESSFULLY": RunStatus.COMPLETED,
    "COMPLETED_WITH_ERRORS": RunStatus.FAILED,
    "CANCELED": RunStatus.CANCELED,
    "CRASHED": RunStatus.CRASHED,
    "TIMED_OUT": RunStatus.TIMED_OUT,
}


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_from_api(body: dict[str, Any]) -> Run:
    """A `Run` from `GET /api/v3/runs/{id}` (or a list entry)."""
    # imported when first needed: pydantic's model machinery is half of
    # `import rayflow.client`, and a backend may only trigger and stream
    from rayflow._run_model import Run

    related = body.get("relatedRuns") or {}
    return Run(
        id=body["id"],
        task_id=body["taskIdentifier"],
        status=body["status"],
        payload=body.get("payload"),
        output=body.get("output"),
        error=body.get("error"),
        tags=body.get("tags") or [],
        metadata=body.get("metadata") or {},
        batch_id=body.get("batchId"),
        attempt_count=body.get("attemptCount", 0),
        parent_id=(related.get("parent") or {}).get("id"),
        root_id=(related.get("root") or {}).get("id"),
        created_at=_when(body["createdAt"]),  # type: ignore[arg-type]
        updated_at=_when(body["updatedAt"]),  # type: ignore[arg-type]
        started_at=_when(body.get("startedAt")),
        finished_at=_when(body.get("finishedAt")),
    )


def _shape_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value + "+00:00")


def run_from_row(row: dict[str, Any]) -> Run:
    """A `Run` from a run-subscription row (`/realtime/v1/runs/{id}`)."""
    from rayflow._run_model import Run

    error = row.get("error")
    return Run(
        id=row["id"],
        task_id=row["taskIdentifier"],
        status=_STATUS.get(row["status"], RunStatus.QUEUED),
        payload=json.loads(row["payload"]) if row.get("payload") else None,
        output=json.loads(row["output"]) if row.get("output") else None,
        error={"name": error.get("name"), "message": error.get("message")} if error else None,
        tags=row.get("runTags") or [],
        metadata=json.loads(row["metadata"]) if row.get("metadata") else {},
        batch_id=row.get("batchId"),
        created_at=_shape_time(row["createdAt"]),  # type: ignore[arg-type]
        updated_at=_shape_time(row["updatedAt"]),  # type: ignore[arg-type]
        started_at=_shape_time(row.get("startedAt")),
        finished_at=_shape_time(row.get("completedAt")),
    )


class RunSubscription:
    """Snapshots of one run as it changes, ending once it has finished:
    `for run in …` or `async for run in …`. Pushed by the server (a long poll
    answered when the run changes), not polled."""

    def __init__(self, transport: Transport, run_id: str) -> None:
        self._t, self.run_id = transport, run_id

    async def __aiter__(self) -> AsyncIterator[Run]:
        path = f"/realtime/v1/runs/{self.run_id}"
        params: dict[str, str] = {"offset": "-1", "log": "full"}
        while True:
            r = await self._t.request("GET", path, params=params, timeout=60)
            for message in r.json():
                if "value" in message:
                    run = run_from_row(message["value"])
                    yield run
                    if run.finished_at is not None:
                        return
            params = {
                "offset": r.headers["electric-offset"],
                "handle": r.headers["electric-handle"],
                "cursor": r.headers.get("electric-cursor", ""),
                "live": "true",
            }

    def __iter__(self) -> Iterator[Run]:
        runs = self.__aiter__()
        try:
            while True:
                try:
                    yield run_sync(runs.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            run_sync(runs.aclose())  # type: ignore[attr-defined]


class Runs:
    """The same calls as `rayflow.runs`, over HTTP."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def retrieve(self, run_id: str) -> Response[Run]:
        """The run's current state. Raises `RunNotFound`."""

        async def go() -> Run:
            return run_from_api((await self._t.request("GET", f"/api/v3/runs/{run_id}")).json())

        return Response(go)

    def list(
        self,
        *,
        status: str | builtins.list[str] | None = None,
        task_id: str | None = None,
        tag: str | builtins.list[str] | None = None,
        batch_id: str | None = None,
        limit: int = 100,
    ) -> Response[builtins.list[Run]]:
        """Runs, newest first (at most 100), filtered like `rayflow.runs.list`."""
        params: dict[str, str | int] = {"page[size]": min(limit, 100)}
        if status:
            params["filter[status]"] = status if isinstance(status, str) else ",".join(status)
        if task_id:
            params["filter[taskIdentifier]"] = task_id
        if tag:
            params["filter[tag]"] = tag if isinstance(tag, str) else ",".join(tag)
        if batch_id:
            params["filter[batch]"] = batch_id

        async def go() -> builtins.list[Run]:
            body = (await self._t.request("GET", "/api/v1/runs", params=params)).json()
            return [run_from_api(d) for d in body["data"]]

        return Response(go)

    def cancel(self, run_id: str) -> Response[bool]:
        """Cancel a run; resolves False when it had already finished.
        Raises `RunNotFound`."""

        async def go() -> bool:
            before = await self.retrieve(run_id)
            await self._t.request("POST", f"/api/v2/runs/{run_id}/cancel")
            return before.finished_at is None

        return Response(go)

    def subscribe(self, run_id: str) -> RunSubscription:
        """The run, each time it changes, until it has finished."""
        return RunSubscription(self._t, run_id)

    def wait(self, run_id: str) -> Response[Run]:
        """Wait until the run has finished and resolve to it."""

        async def go() -> Run:
            last: Run | None = None
            async for run in self.subscribe(run_id):
                last = run
            assert last is not None
            return await self.retrieve(last.id)

        return Response(go)
