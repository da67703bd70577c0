"""Server-sent events in the Trigger.dev realtime v2 (S2-style) wire format.

One `event: batch` carries many records (that is how throughput is reached);
`ping` keeps proxies from cutting a caught-up connection; `data: [DONE]`
and a clean end of the body tell the client the stream is finished — it
never reconnects after that, so the body ends only when the stream is closed
or after the idle timeout. See docs/wire.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

#: Response headers of every SSE read.
SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Stream-Version": "v2",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

PING_INTERVAL_S = 10.0
DONE = b"data: [DONE]\n\n"


@dataclass
class Record:
    """One record of a stream: its index, JSON text and unique id."""

    seq: int
    data: str  # JSON text, passed through unparsed
    created_at: int  # ms since the epoch
    record_id: str | None = None


@dataclass
class Batch:
    records: list[Record]
    #: True when no record will ever follow these (run finished, writer closed).
    closed: bool = False


class RecordSource(Protocol):
    """Where an SSE response gets its records from."""

    async def next_batch(self, timeout_s: float) -> Batch:
        """Records from the current position on; an empty, open batch when
        nothing arrived within `timeout_s`."""
        ...

    async def aclose(self) -> None: ...


def record_body(record: Record) -> str:
    """The `body` of a record: a JSON string holding `{"data", "id"}`.

    The chunk's JSON text is spliced in as is, so a chunk is never parsed
    and re-serialised on its way to the client.
    """
    rid = record.record_id if record.record_id is not None else str(record.seq)
    return '{"data":' + record.data + ',"id":' + json.dumps(rid) + "}"


def encode_batch(records: Sequence[Record]) -> bytes:
    """One `event: batch` whose id is the last record's index."""
    parts = [
        f'{{"seq_num":{r.seq},"timestamp":{r.created_at},"body":{json.dumps(record_body(r))}}}'
        for r in records
    ]
    data = '{"records":[' + ",".join(parts) + "]}"
    return f"event: batch\nid: {records[-1].seq}\ndata: {data}\n\n".encode()


def encode_ping(now_ms: int | None = None) -> bytes:
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    return f'event: ping\ndata: {{"timestamp":{ts}}}\n\n'.encode()


def encode_error(message: str) -> bytes:
    """An `event: error`: the client fails the read with this message."""
    data = json.dumps({"error": message})
    return f"event: error\ndata: {data}\n\n".encode()


def parse_last_event_id(value: str | None) -> int | None:
    """The record index of a `Last-Event-ID` header (digits before `,` or `-`).

    Returns None when absent or blank; raises ValueError when malformed.
    """
    if value is None or not value.strip():
        return None
    head = value.strip().split(",", 1)[0].split("-", 1)[0]
    if not head.isdigit():
        raise ValueError(f"Last-Event-ID must start with a record index, got {value!r}")
    return int(head)


async def event_stream(
    source: RecordSource,
    *,
    idle_timeout_s: float,
    ping_interval_s: float = PING_INTERVAL_S,
) -> AsyncIterator[bytes]:
    """Encode `source` as SSE until it closes or stays idle `idle_timeout_s`.

    A `ping` goes out whenever `ping_interval_s` passes without a record; the
    body ends with `data: [DONE]` only when the stream is closed or idle.
    """
    try:
        last_activity = time.monotonic()
        last_sent = last_activity
        while True:
            now = time.monotonic()
            idle_left = last_activity + idle_timeout_s - now
            if idle_left <= 0:
                yield DONE
                return
            ping_left = last_sent + ping_interval_s - now
            batch = await source.next_batch(max(0.0, min(idle_left, ping_left)))
            if batch.records:
                yield encode_batch(batch.records)
                last_activity = last_sent = time.monotonic()
            if batch.closed:
                yield DONE
                return
            if not batch.records and time.monotonic() >= last_sent + ping_interval_s:
                yield encode_ping()
                last_sent = time.monotonic()
    finally:
        await source.aclose()
