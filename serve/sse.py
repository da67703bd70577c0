"""Server-sent events in the Trigger.dev realtime v2 (S2-style) wire format.

One `event: batch` carries many records (that is how throughput is reached);
`ping` keeps proxies from cutting a caught-up connection; `data: [DONE]`
and a clean end of the body tell the client the stream is finished — it
never reconnects after that, so the body ends only when the stream is closed
or after the idle timeout. See docs/wire.md.

sse-starlette's `EventSourceResponse` carries every SSE body: headers,
pings, the end of the body when the client goes away. Records are encoded
here, their JSON text spliced in unparsed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Receive, Scope, Send

#: Response headers of every SSE read besides sse-starlette's own
#: (`Connection: keep-alive`, `X-Accel-Buffering: no`).
SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Stream-Version": "v2",
}

PING_INTERVAL_S = 10.0
#: one newline between fields, as clients and tests have always seen it
#: (sse-starlette's default is CRLF)
SEP = "\n"
DONE = ServerSentEvent("[DONE]", sep=SEP)


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
    """One `event: batch` whose id is the last record's index, framed here.

    Its data is a single line (json.dumps escapes every newline), so the
    frame is written in one piece: ServerSentEvent's line splitting would add
    about a quarter to the cost of encoding a large batch.
    """
    parts = [
        f'{{"seq_num":{r.seq},"timestamp":{r.created_at},"body":{json.dumps(record_body(r))}}}'
        for r in records
    ]
    data = '{"records":[' + ",".join(parts) + "]}"
    return f"event: batch\nid: {records[-1].seq}\ndata: {data}\n\n".encode()


def ping_event() -> ServerSentEvent:
    """`event: ping` with the server's clock: sent by sse-starlette every
    PING_INTERVAL_S, so proxies never cut a caught-up connection."""
    return ServerSentEvent(f'{{"timestamp":{int(time.time() * 1000)}}}', event="ping", sep=SEP)


#: what an SSE body yields: a pre-encoded `event: batch`, or any other event
Event = bytes | ServerSentEvent


class SSEResponse(EventSourceResponse):
    """sse-starlette's response, minus a cancel scope per event, plus a hook
    when the body ends.

    Without a send timeout sse-starlette still wraps every send in
    `anyio.move_on_after(None)`, which costs several times the rest of
    sending an event (measured in-process: 5-15x a StreamingResponse's
    per-event cost). A send timeout would bound nothing here anyway: under
    Ray Serve the app's `send` never blocks (Serve queues the messages for
    the client, docs/security.md). `on_close` runs once the body has ended,
    however it ended.
    """

    def __init__(
        self, *args: Any, on_close: Callable[[], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()


def sse_response(
    events: AsyncIterator[Event], *, on_close: Callable[[], None] | None = None
) -> SSEResponse:
    """The response of every SSE endpoint: sse-starlette streams `events`,
    sends the pings and ends the body when the client goes away; then
    `on_close` runs."""
    return SSEResponse(
        events,
        headers=SSE_HEADERS,
        ping=PING_INTERVAL_S,
        ping_message_factory=ping_event,
        sep=SEP,
        on_close=on_close,
    )


_INDEX = re.compile(r"[0-9]{1,16}")


def parse_last_event_id(value: str | None) -> int | None:
    """The record index of a `Last-Event-ID` header (digits before `,` or `-`).

    Returns None when absent or blank; raises ValueError when malformed.
    """
    if value is None or not value.strip():
        return None
    head = value.strip().split(",", 1)[0].split("-", 1)[0]
    # ASCII digits, at most 16 (2**53 has 16): `int` of thousands is an error
    if head.isascii() and head.isdigit() and len(head) > 16:
        raise ValueError(
            f"Last-Event-ID must be a record index below {2**53}; got {len(head)} digits"
        )
    if not _INDEX.fullmatch(head):
        shown = value if len(value) <= 40 else value[:40] + f"… ({len(value)} characters)"
        raise ValueError(f"Last-Event-ID must start with a record index, got {shown!r}")
    return int(head)


async def event_stream(source: RecordSource, *, idle_timeout_s: float) -> AsyncIterator[Event]:
    """Encode `source` as SSE until it closes or stays idle `idle_timeout_s`.

    The body ends with `data: [DONE]` only when the stream is closed or idle
    (pings come from `sse_response`).
    """
    try:
        last_activity = time.monotonic()
        while True:
            idle_left = last_activity + idle_timeout_s - time.monotonic()
            if idle_left <= 0:
                yield DONE
                return
            batch = await source.next_batch(idle_left)
            if batch.records:
                yield encode_batch(batch.records)
                last_activity = time.monotonic()
            if batch.closed:
                yield DONE
                return
    finally:
        await source.aclose()
