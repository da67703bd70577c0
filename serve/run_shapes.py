"""Run subscriptions in the ElectricSQL HTTP shape protocol (docs/wire.md).

Trigger.dev's clients (`runs.subscribeToRun`, `useRealtimeRun*`,
`useRealtimeRunsWithTag`, `useRealtimeBatch`) read runs through
`@electric-sql/client`'s `ShapeStream`: a first request `offset=-1` gets
every row of the shape, then long polls (`live=true`) get what changed. Each
row is a run as Trigger.dev's database has it (`SubscribeRunRawShape`).

Stateless: a replica keeps nothing per client. The offset a client echoes
back is `<watermark>_<digest>`: the newest change time (ms) of the rows it
has and a digest of their contents. A live poll answers at once when the
digest differs, else waits on the replica's run feed (serve/run_feed.py) —
a push from the Store's commit, not polling — and answers "up-to-date" with
the same offset when nothing changed within `Settings.run_shape_live_s`
(20 s).

Rows changed since the watermark (less `SKEW_MS`, for clocks of different
nodes) are sent; a multi-row shape may resend a few unchanged rows, which
the client merges as no-ops.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi.responses import JSONResponse

from rayflow._runtime.serving import current
from rayflow._status import RunStatus
from rayflow.runs import run_metadata
from rayflow.store.base import RunRecord
from serve.errors import BadRequest
from serve.run_feed import Changes, feed

#: clock skew between nodes tolerated when picking the rows to resend
SKEW_MS = 2000
#: at most this many runs in a tag or batch shape (newest first)
MAX_ROWS = 500

#: rayflow status -> Trigger.dev's database status (TaskRunStatus)
DB_STATUS: dict[str, str] = {
    RunStatus.QUEUED: "PENDING",
    RunStatus.EXECUTING: "EXECUTING",
    RunStatus.WAITING: "WAITING_TO_RESUME",
    RunStatus.COMPLETED: "COMPLETED_SUCCESSFULLY",
    RunStatus.FAILED: "COMPLETED_WITH_ERRORS",
    RunStatus.CANCELED: "CANCELED",
    RunStatus.CRASHED: "CRASHED",
    RunStatus.TIMED_OUT: "TIMED_OUT",
}

#: columns the client must always get (it cannot parse a row without them)
REQUIRED = {"id", "friendlyId", "taskIdentifier", "status", "createdAt", "updatedAt"}

#: the `electric-schema` header: types of the text columns. Other columns
#: (numbers, booleans, tags, error, streams) are sent as JSON values and
#: left out, so the client's parser passes them through as they are.
SCHEMA = json.dumps(
    {
        name: {"type": "text"}
        for name in ("id", "friendlyId", "taskIdentifier", "status", "payload", "output")
    }
)


def shape_time(ms: int | None) -> str | None:
    """Postgres `timestamp` text, UTC without a zone (the client adds "Z")."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _error(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        return {"type": "STRING_ERROR", "raw": str(value)}
    return {
        "type": "BUILT_IN_ERROR",
        "name": str(value.get("name") or "Error"),
        "message": str(value.get("message") or ""),
        "stackTrace": str(value.get("stackTrace") or value.get("stack") or ""),
    }


def run_row(run: RunRecord, stream_keys: list[str]) -> dict[str, Any]:
    """A run as `SubscribeRunRawShape` expects it."""
    started, finished = run.started_at, run.finished_at
    tags = json.loads(run.tags) or []
    metadata = run_metadata(run)
    return {
        "id": run.id,
        "friendlyId": run.id,
        "taskIdentifier": run.task_id,
        "status": DB_STATUS.get(run.status, run.status),
        "createdAt": shape_time(run.created_at),
        "updatedAt": shape_time(run.updated_at),
        "startedAt": shape_time(started),
        "queuedAt": shape_time(run.created_at),
        "completedAt": shape_time(finished),
        "delayUntil": None,
        "expiredAt": None,
        "idempotencyKey": run.idempotency_key,
        "number": 0,
        "isTest": False,
        "usageDurationMs": (finished - started) if started and finished else 0,
        "costInCents": 0,
        "baseCostInCents": 0,
        "ttl": None,
        "payload": run.payload,
        "payloadType": "application/json",
        "output": run.output,
        "outputType": "application/json" if run.output is not None else None,
        "metadata": json.dumps(metadata) if metadata is not None else None,
        "metadataType": "application/json" if metadata is not None else None,
        "runTags": tags if isinstance(tags, list) else [str(tags)],
        "error": _error(run.error),
        "realtimeStreams": stream_keys,
        "batchId": run.batch_id,
    }


@dataclass
class ShapeRow:
    row: dict[str, Any]
    #: the newest change to the row (ms): run update or a new stream
    version: int


def read_rows(runs: list[RunRecord], skip: set[str]) -> list[ShapeRow]:
    """Rows of `runs` (blocking: run in a thread)."""
    store = current().store
    rows = []
    for run in runs:
        streams = store.list_streams(run.id)
        version = max([run.updated_at, *(s.created_at for s in streams)])
        row = run_row(run, [s.key for s in streams])
        for name in skip - REQUIRED:
            row.pop(name, None)
        rows.append(ShapeRow(row, version))
    return rows


def _digest(rows: list[ShapeRow]) -> int:
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r.row["id"]):
        h.update(json.dumps(r.row, sort_keys=True, separators=(",", ":")).encode())
    return int(h.hexdigest()[:12], 16)


def _offset(rows: list[ShapeRow]) -> str:
    watermark = max((r.version for r in rows), default=0)
    return f"{watermark}_{_digest(rows)}"


def _parse_offset(offset: str) -> tuple[int, int] | None:
    """(watermark, digest) of an offset this API returned; None for `-1` or
    anything else not of that form (the whole shape is sent)."""
    head, _, tail = offset.partition("_")
    if not (head.isascii() and head.isdigit() and tail.isascii() and tail.isdigit()):
        return None
    if len(head) > 16 or len(tail) > 16:  # ours have at most 16; `int` of thousands fails
        raise BadRequest(f"offset is not one this API returned: {offset[:40]!r}… ({len(offset)})")
    return int(head), int(tail)


def _message(row: dict[str, Any], operation: str) -> dict[str, Any]:
    return {
        "key": f'"public"."TaskRun"/"{row["id"]}"',
        "value": row,
        "headers": {"operation": operation},
    }


UP_TO_DATE = {"headers": {"control": "up-to-date"}}


@dataclass
class ShapeRequest:
    """The protocol parameters of one request."""

    offset: str
    handle: str | None
    live: bool
    skip: set[str]


def _response(messages: list[dict[str, Any]], offset: str, handle: str, live: bool) -> JSONResponse:
    headers = {
        "electric-handle": handle,
        "electric-offset": offset,
        "electric-up-to-date": "",
        "electric-cursor": str(int(time.time())),
        "cache-control": "no-store",
    }
    if not live:
        headers["electric-schema"] = SCHEMA
    return JSONResponse([*messages, UP_TO_DATE], headers=headers)


#: a change to this many runs outside a shape is not looked at one by one:
#: the shape is read again
MAX_LOOKUPS = 50
#: shape reads shared between the requests of one replica (the newest kept)
MAX_SHARED_READS = 1000

#: (shape id, skipped columns) -> (feed position the read started at, the read)
_reads: OrderedDict[tuple[str, frozenset[str]], tuple[int, asyncio.Future[list[ShapeRow]]]] = (
    OrderedDict()
)


async def _shared_rows(
    shape_id: str, at: Changes, load: Callable[[], Awaitable[list[RunRecord]]], skip: set[str]
) -> list[ShapeRow]:
    """The shape's rows, read once per shape and change-feed position for
    every request of this replica that needs them (a tag shape watched by
    a thousand browsers costs one read per change, not a thousand). A read
    that started at position `at` saw every change up to `at`: what changes
    later moves the feed on, and those waiting read again."""
    key = (shape_id, frozenset(skip))
    entry = _reads.get(key)
    if entry is None or entry[0] != at.gen or _failed(entry[1]):

        async def read() -> list[ShapeRow]:
            return await asyncio.to_thread(read_rows, await load(), skip)

        entry = (at.gen, asyncio.ensure_future(read()))
        _reads[key] = entry
        while len(_reads) > MAX_SHARED_READS:
            _reads.popitem(last=False)
    _reads.move_to_end(key)
    return await asyncio.shield(entry[1])


def _failed(read: asyncio.Future[list[ShapeRow]]) -> bool:
    return read.done() and (read.cancelled() or read.exception() is not None)


async def _concerns(
    changed: set[str] | None, rows: list[ShapeRow], admits: Callable[[RunRecord], bool]
) -> bool:
    """Whether a change to the runs `changed` may alter a shape of `rows`
    that any run `admits` may enter: a run already in it, or a run that
    belongs there (looked up by id, at most MAX_LOOKUPS)."""
    if changed is None:
        return True
    if changed & {r.row["id"] for r in rows}:
        return True
    if len(changed) > MAX_LOOKUPS:
        return True
    store = current().store

    def lookup() -> bool:
        return any(run is not None and admits(run) for run in map(store.get_run, changed))

    return await asyncio.to_thread(lookup)


async def serve_shape(
    req: ShapeRequest,
    shape_id: str,
    load: Callable[[], Awaitable[list[RunRecord]]],
    run_ids: set[str] | None,
    admits: Callable[[RunRecord], bool] | None = None,
) -> JSONResponse:
    """Answer one shape request: the whole shape, or what changed since the
    client's offset (waiting for it when `live`).

    `load` reads the shape's runs from the Store; `run_ids` are the runs whose
    changes matter (None: any run may enter the shape, e.g. a new tagged run);
    then `admits` says which runs belong to the shape, so a change to a run
    that neither is in it nor belongs there wakes no read.
    """
    handle = "rf-" + hashlib.sha256(shape_id.encode()).hexdigest()[:16]
    changes = feed()
    since = await changes.changes()
    rows = await _shared_rows(shape_id, since, load, req.skip)
    known = _parse_offset(req.offset)
    if known is None or not req.live:
        operation = "insert" if known is None else "update"
        return _response([_message(r.row, operation) for r in rows], _offset(rows), handle, False)
    watermark, digest = known
    loop = asyncio.get_running_loop()
    deadline = loop.time() + current().settings.run_shape_live_s
    while _digest(rows) == digest:
        left = deadline - loop.time()
        if left <= 0 or not await changes.wait_for(since, run_ids, left):
            return _response([], req.offset, handle, True)
        upto = await changes.changes()
        changed = changes.changed_ids(since, upto)
        since = upto
        if admits is not None and not await _concerns(changed, rows, admits):
            continue
        rows = await _shared_rows(shape_id, since, load, req.skip)
    fresh = [r for r in rows if r.version >= watermark - SKEW_MS] or rows
    return _response([_message(r.row, "update") for r in fresh], _offset(rows), handle, True)
