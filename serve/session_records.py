"""A session's streams as the SDK reads them: S2 records over SSE and the
non-SSE `records` drain (docs/wire.md, "Sessions").

The records come from the sessions runtime (`read_records`: positions of the
session's named streams, `seq_num` from 0). A data record's `body` is the
envelope `{"data": <the value>, "id": <its part id>}` as stored, for `.in` as
for `.out` (the SDK's reader takes `JSON.parse(body).data`); a control
record's body is `""` with its `headers`.

Live readers follow the sessions runtime's `RecordFollower`: woken by the
named streams' signals (a commit in this process) and the replica's change
feed (a commit anywhere, one shared long poll per replica), then they read
the Store again (the truth); a `.out` reader of a session whose run is live
is also handed the rows the run commits, straight from its RunActor's commit
thread to this replica's loopback inbox (no feed hop, no Store read, no Ray
call; `rayflow/_runtime/session_reads.py`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from rayflow._runtime.serving import (
    Armed,
    RecordFollower,
    RecordPage,
    S2Record,
    feed_key,
    read_records,
    signals,
)
from serve import run_feed
from serve.sse import DONE, Event

#: records per read at most
READ_ROWS = 1000
TURN_COMPLETE = "turn-complete"


def wire(record: S2Record) -> dict[str, Any]:
    """The record in an SSE `batch`."""
    found = {"seq_num": record.seq_num, "timestamp": record.timestamp, "body": record.body}
    if record.headers:
        found["headers"] = record.headers
    return found


def drained(record: S2Record) -> dict[str, Any]:
    """The record in a `records` drain: `data` parsed, its seq as its id."""
    data = record.value() if record.body else None
    found: dict[str, Any] = {"data": data, "id": str(record.seq_num), "seqNum": record.seq_num}
    if record.headers:
        found["headers"] = record.headers
    return found


def is_command(record: S2Record) -> bool:
    """An S2 command record (trim, fence): its first header has no name."""
    return bool(record.headers) and record.headers[0][0] == ""


async def read(
    session_id: str, io: str, channel: str | None, start: int, limit: int = READ_ROWS
) -> RecordPage:
    """The records from `start` on, at once."""
    return await read_records(session_id, io, channel=channel, start=start, limit=limit)  # type: ignore[arg-type]


async def read_all(session_id: str, io: str, channel: str | None, start: int) -> list[S2Record]:
    """Every record from `start` to the tail (the `records` drain)."""
    found: list[S2Record] = []
    while True:
        page = await read(session_id, io, channel, start)
        found += page.records
        if not page.records or page.records[-1].seq_num + 1 >= page.tail:
            return found
        start = page.records[-1].seq_num + 1


async def feed_waiter(path: str) -> Armed:
    """A wait for a change of `path`, armed before the read it follows: a
    commit in this process (its signal) or anywhere (the replica's shared
    change feed, `run_feed`) after the arming ends it."""
    event = signals().event(path)
    feed = run_feed.feed()
    since = await feed.changes()

    async def wait(timeout_s: float) -> None:
        waits = [
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(feed.wait_for(since, {feed_key(path)}, timeout_s)),
        ]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.wait(waits)  # never raises what the waits raised

    return wait


async def settled(session_id: str, channel: str | None) -> bool:
    """Whether `.out`'s newest record past S2 command records is a
    `turn-complete` (the `X-Peek-Settled` peek)."""
    end = (await read(session_id, "out", channel, 0, limit=1)).tail
    while end > 0:
        start = max(0, end - 16)
        page = await read(session_id, "out", channel, start, limit=end - start)
        window = [r for r in page.records if r.seq_num < end]
        if not window:
            return False  # trimmed: a trim deletes every record below its point
        for record in reversed(window):
            if not is_command(record):
                return record.control == TURN_COMPLETE
        end = start
    return False


def encode(records: list[S2Record], tail: int) -> bytes:
    """One `event: batch`, its `id` the last record's seq (what a browser's
    EventSource resumes from), with the stream's tail."""
    data = json.dumps(
        {
            "records": [wire(r) for r in records],
            "tail": {"seq_num": tail, "timestamp": int(time.time() * 1000)},
        },
        separators=(",", ":"),
    )
    return f"event: batch\nid: {records[-1].seq_num}\ndata: {data}\n\n".encode()


async def events(
    session_id: str, io: str, channel: str | None, start: int, *, idle_timeout_s: float
) -> AsyncIterator[Event]:
    """The SSE body: records from `start` as they come, `[DONE]` once the
    session is closed (and drained) or idle `idle_timeout_s` (0: drain what
    is there)."""
    loop = asyncio.get_running_loop()
    last_activity = loop.time()
    follower = RecordFollower(
        session_id,
        io,  # type: ignore[arg-type]
        channel,
        feed_waiter,
        closed_ends=True,
        reread_s=None,  # the feed says when it lost track
        take_pushes=True,  # a replica's loop: the run's commit thread pushes here
    )
    try:
        while True:
            idle_left = last_activity + idle_timeout_s - loop.time()
            got = await follower.next(start, READ_ROWS, max(idle_left, 0.0))
            if got.records:
                yield encode(got.records, got.tail)
                start = got.records[-1].seq_num + 1
                last_activity = loop.time()
                continue
            if got.closed or idle_left <= 0:
                yield DONE
                return
    finally:
        follower.close()
