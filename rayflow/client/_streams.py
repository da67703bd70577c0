"""Reading an output stream over SSE, resumable and exactly once.

The reader remembers the index of the last record it yielded; when the
connection breaks (a proxy, a restart, the network) it reconnects with
`Last-Event-ID: <that index>` and the server continues after it. Records
at or below that index are skipped, so each chunk is yielded once, in
order, whatever happens to the connections. The read ends at the server's
`[DONE]` (stream closed, or idle `timeout_s`). httpx-sse parses the events;
a body that is not `text/event-stream` is an `SSEError` (a TransportError),
so it is retried like a cut connection.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import httpx
from httpx_sse import EventSource

from rayflow import errors
from rayflow._response import run_sync
from rayflow.client._transport import Transport, error_for

#: reconnects allowed without a record in between before the read fails
MAX_RECONNECTS = 8
#: the server's range for `Timeout-Seconds` (whole seconds)
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1, 600


def timeout_header(timeout_s: float) -> str:
    """`Timeout-Seconds` for an idle timeout of `timeout_s`: whole seconds,
    rounded up, at least 1 (the server refuses 0 and fractions)."""
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise errors.InvalidArgument(
            f"timeout_s must be above 0 and at most {MAX_TIMEOUT_S} seconds (the server's"
            f" limit for an idle stream); got {timeout_s!r}. Read again to wait longer"
        )
    return str(max(MIN_TIMEOUT_S, math.ceil(timeout_s)))


class HttpStreamReader:
    """Chunks of one stream: `for` (blocking) or `async for`."""

    def __init__(
        self, transport: Transport, run_id: str, key: str, start_index: int, timeout_s: float
    ) -> None:
        self._t = transport
        self._timeout_header = timeout_header(timeout_s)
        self.run_id, self.key = run_id, key
        #: the index of the next chunk this reader yields (to resume elsewhere)
        self.next_index = start_index
        self.timeout_s = timeout_s
        #: connections made so far (1 + reconnects)
        self.connections = 0

    async def __aiter__(self) -> AsyncIterator[Any]:
        failures = 0
        while True:
            try:
                async for kind, value in self._connect():
                    if kind == "done":
                        return
                    failures = 0
                    yield value
            except (httpx.TransportError, httpx.RemoteProtocolError) as e:
                failures += 1
                if failures > MAX_RECONNECTS:
                    raise errors.Unavailable(
                        f"stream {self.key!r} of run {self.run_id}: {failures} reconnects failed;"
                        f" read again from index {self.next_index} to resume",
                        run_id=self.run_id,
                        stream=self.key,
                    ) from e
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            # the body ended without [DONE]: the connection was cut; resume
            failures += 1
            if failures > MAX_RECONNECTS:
                raise errors.Unavailable(
                    f"stream {self.key!r} of run {self.run_id} keeps ending without [DONE];"
                    f" read again from index {self.next_index} to resume",
                    run_id=self.run_id,
                    stream=self.key,
                )

    async def _connect(self) -> AsyncIterator[tuple[str, Any]]:
        headers = {"Accept": "text/event-stream", "Timeout-Seconds": self._timeout_header}
        if self.next_index > 0:
            headers["Last-Event-ID"] = str(self.next_index - 1)
        path = self._path()
        timeout = httpx.Timeout(self._t.timeout_s, read=self.timeout_s + 30)
        self.connections += 1
        async with self._t.client().stream("GET", path, headers=headers, timeout=timeout) as r:
            if r.status_code >= 400:
                await r.aread()
                raise error_for(r)
            # pings (`event: ping`) and any other event are passed over
            async with aclosing(EventSource(r).aiter_sse()) as events:
                async for event in events:
                    if event.data == "[DONE]":
                        yield "done", None
                        return
                    if event.event == "batch":
                        for record in json.loads(event.data)["records"]:
                            seq = int(record["seq_num"])
                            if seq < self.next_index:
                                continue  # already yielded before a reconnect
                            self.next_index = seq + 1
                            if self._wanted(record):
                                yield "chunk", json.loads(record["body"])["data"]
                    elif event.event == "error":
                        raise errors.Unavailable(
                            f"reading stream {self.key!r} of run {self.run_id} failed:"
                            f" {event.data}",
                            run_id=self.run_id,
                            stream=self.key,
                        )

    def _path(self) -> str:
        return f"/realtime/v1/streams/{self.run_id}/{self.key}"

    def _wanted(self, record: dict[str, Any]) -> bool:
        """Whether a record is a chunk to yield (every record of a run's stream)."""
        return True

    def __iter__(self) -> Iterator[Any]:
        chunks = self.__aiter__()
        try:
            while True:
                try:
                    yield run_sync(chunks.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            run_sync(chunks.aclose())  # type: ignore[attr-defined]
