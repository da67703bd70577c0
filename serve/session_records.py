"""A session's streams as the SDK reads them: S2 records over SSE and the
non-SSE `records` drain (docs/wire.md, "Sessions").

A session stream is a named JSON stream (`rayflow/store/named.py`) that no
run owns: `sessions/<session id>/in` and `/out`, a side channel's
`sessions/<session id>/channels/<name>/in` and `/out`. Each message is one
record, its position the record's `seq_num` (from 0, as S2 counts), in one of
two shapes:

- a data record, `{"data": <value>, "id": <part id>}`: that JSON text is the
  S2 record's `body`;
- a control or command record, `{"headers": [[name, value], ...]}`: body
  `""`, the headers as S2 carries them (`trigger-control: turn-complete`,
  `["", "trim"]`).

Readers are woken by the named streams' signals (a commit in this process)
and the change feed (a commit anywhere), then read the Store: the truth.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from rayflow._runtime.serving import current, feed_key, signals
from rayflow.store.named import NamedChunk, NamedStreamInfo
from serve import run_feed
from serve.sse import DONE, Event

#: records per read at most, and about this many bytes
READ_ROWS = 1000
READ_BYTES = 1024 * 1024
CONTROL_HEADER = "trigger-control"
TURN_COMPLETE = "turn-complete"


def stream_path(session_id: str, io: str, channel: str | None = None) -> str:
    """The named stream of a session's `io` (`in`/`out`), or of a side channel's."""
    if channel is None:
        return f"sessions/{session_id}/{io}"
    return f"sessions/{session_id}/channels/{channel}/{io}"


@dataclass
class S2Record:
    """One record as S2 shows it."""

    seq: int
    created_at: int
    #: a data record's `{"data", "id"}` JSON text; "" for a control record
    body: str
    headers: list[list[str]] | None

    @property
    def control(self) -> str | None:
        """The `trigger-control` subtype, None for a data or command record."""
        for name, value in self.headers or []:
            if name == CONTROL_HEADER:
                return value
        return None

    @property
    def command(self) -> bool:
        """An S2 command record (trim, fence): its first header has no name."""
        return bool(self.headers) and self.headers[0][0] == ""  # type: ignore[index]

    def s2(self) -> dict[str, Any]:
        """The record in an SSE `batch`."""
        record: dict[str, Any] = {"seq_num": self.seq, "timestamp": self.created_at}
        record["body"] = self.body
        if self.headers is not None:
            record["headers"] = self.headers
        return record

    def drained(self) -> dict[str, Any]:
        """The record in a `records` drain: `data` parsed, the seq as its id."""
        data: Any = None
        if self.body:
            data = json.loads(self.body).get("data")
        record: dict[str, Any] = {"data": data, "id": str(self.seq), "seqNum": self.seq}
        if self.headers is not None:
            record["headers"] = self.headers
        return record


def to_record(chunk: NamedChunk) -> S2Record:
    text = chunk.data.decode()
    message = json.loads(text)
    if isinstance(message, dict) and "headers" in message and "data" not in message:
        headers = [[str(h[0]), str(h[1])] for h in message["headers"]]
        return S2Record(chunk.pos, chunk.created_at, "", headers)
    return S2Record(chunk.pos, chunk.created_at, text, None)


@dataclass
class Read:
    records: list[S2Record]
    info: NamedStreamInfo | None

    @property
    def closed(self) -> bool:
        return self.info is not None and self.info.closed

    @property
    def length(self) -> int:
        return self.info.length if self.info is not None else 0


async def read(path: str, start: int, limit: int = READ_ROWS) -> Read:
    """The records from `start` on, at once (none yet: an empty read)."""
    got = await asyncio.to_thread(current().store.named_read, path, start, limit, READ_BYTES)
    return Read([to_record(c) for c in got.chunks], got.stream)


async def read_all(path: str, start: int) -> list[S2Record]:
    """Every record from `start` to the tail (the `records` drain)."""
    found: list[S2Record] = []
    while True:
        got = await read(path, start)
        found += got.records
        if not got.records or got.records[-1].seq + 1 >= got.length:
            return found
        start = got.records[-1].seq + 1


async def wait(path: str, start: int, timeout_s: float) -> Read:
    """Like `read`, waiting up to `timeout_s` for a record when there is none."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    feed = run_feed.feed()
    while True:
        # both taken before the read: a commit after it wakes the wait
        event = signals().event(path)
        since = await feed.changes()
        got = await read(path, start)
        left = deadline - loop.time()
        if got.records or got.closed or left <= 0:
            return got
        waits = [
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(feed.wait_for(since, {feed_key(path)}, left)),
        ]
        try:
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.wait(waits)


async def last_record(path: str) -> S2Record | None:
    """The newest record that is not an S2 command (the `X-Peek-Settled` peek)."""
    got = await read(path, 0, limit=1)
    end = got.length
    while end > 0:
        start = max(0, end - 16)
        batch = (await read(path, start, limit=end - start)).records
        for record in reversed([r for r in batch if r.seq < end]):
            if not record.command:
                return record
        end = start
    return None


def encode(records: list[S2Record], tail: int) -> bytes:
    """One `event: batch`, its `id` the last record's seq (what a browser's
    EventSource resumes from), with the stream's tail."""
    data = json.dumps(
        {
            "records": [r.s2() for r in records],
            "tail": {"seq_num": tail, "timestamp": int(time.time() * 1000)},
        },
        separators=(",", ":"),
    )
    return f"event: batch\nid: {records[-1].seq}\ndata: {data}\n\n".encode()


async def events(path: str, start: int, *, idle_timeout_s: float) -> AsyncIterator[Event]:
    """The SSE body: records from `start` as they come, `[DONE]` once the
    stream is closed or idle `idle_timeout_s` (0: drain what is there)."""
    loop = asyncio.get_running_loop()
    last_activity = loop.time()
    while True:
        idle_left = last_activity + idle_timeout_s - loop.time()
        got = await wait(path, start, max(idle_left, 0.0))
        if got.records:
            yield encode(got.records, got.length)
            start = got.records[-1].seq + 1
            last_activity = loop.time()
            continue
        if got.closed or idle_left <= 0:
            yield DONE
            return
