"""Where SSE responses take their records from.

`ReaderSource` follows an output stream with the runtime's `ChunkReader`:
history from the RunActor, the Ray object store or the Store, then live
chunks pushed by the run's RunActor (one long-poll call per batch, never
one per chunk). Batches that pile up while the client is slow are merged
into one SSE event.

`StoreSource` reads a stream (or an input stream's message log) straight
from the Store: acknowledged = durable = visible, so everything a writer was
told has happened is there. It seeks by index, returns whatever is there in
one batch, and while caught up polls at `poll_s`. It is the fallback used
when the runtime offers no push reader for the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rayflow._runtime.reader import ChunkReader
from rayflow.store import Store
from serve.sse import Batch, Record

#: at most this many records in one SSE event
BATCH_LIMIT = 1000


_END = object()


class ReaderSource:
    """Records of one output stream from `start` on, via the runtime's reader."""

    def __init__(self, run_id: str, key: str, start: int, *, queued_batches: int = 8) -> None:
        # idle timeouts are the SSE layer's: the reader itself never gives up
        self._reader = ChunkReader(run_id, key, start, timeout_s=None, batch=BATCH_LIMIT)
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queued_batches)
        self._pump: asyncio.Task[None] | None = None
        self._ended = False

    async def _run(self) -> None:
        try:
            async for rows in self._reader.batches():
                await self._queue.put([Record(*row) for row in rows])
        except Exception as e:  # surfaces in next_batch; the client reconnects
            await self._queue.put(e)
            return
        await self._queue.put(_END)

    def _take(self, item: Any, records: list[Record]) -> bool:
        """Add a queued item to `records`; True when the stream ended."""
        if item is _END:
            self._ended = True
            return True
        if isinstance(item, Exception):
            raise item
        records.extend(item)
        return False

    async def next_batch(self, timeout_s: float) -> Batch:
        if self._ended:
            return Batch([], closed=True)
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run())
        records: list[Record] = []
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout_s)
        except asyncio.TimeoutError:
            return Batch([])
        ended = self._take(item, records)
        while not ended and not self._queue.empty() and len(records) < BATCH_LIMIT:
            ended = self._take(self._queue.get_nowait(), records)
        return Batch(records, closed=ended)

    async def aclose(self) -> None:
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


class StoreSource:
    """Records from index `start` on, read from the Store."""

    def __init__(
        self,
        read: Callable[[int, int], list[Record]],
        is_closed: Callable[[], Awaitable[bool]],
        start: int,
        *,
        poll_s: float = 0.005,
        max_poll_s: float = 0.05,
    ) -> None:
        self._read = read
        self._is_closed = is_closed
        self.position = start
        self.poll_s, self.max_poll_s = poll_s, max_poll_s

    async def _fetch(self) -> list[Record]:
        records = await asyncio.to_thread(self._read, self.position, BATCH_LIMIT)
        if records:
            self.position = records[-1].seq + 1
        return records

    async def next_batch(self, timeout_s: float) -> Batch:
        deadline = time.monotonic() + timeout_s
        delay = self.poll_s
        while True:
            records = await self._fetch()
            if records:
                return Batch(records)
            if await self._is_closed():
                # a last write may have landed between the read and the check
                return Batch(await self._fetch(), closed=True)
            left = deadline - time.monotonic()
            if left <= 0:
                return Batch([])
            await asyncio.sleep(min(delay, left))
            # back off while idle so an idle reader costs little
            delay = min(delay * 1.5, self.max_poll_s)

    async def aclose(self) -> None:
        return None


def output_reader(store: Store, run_id: str, key: str) -> Callable[[int, int], list[Record]]:
    def read(start: int, limit: int) -> list[Record]:
        return [
            Record(c.seq, c.data, c.created_at, c.record_id)
            for c in store.read_chunks(run_id, key, start, limit)
        ]

    return read


def input_reader(store: Store, run_id: str, stream_id: str) -> Callable[[int, int], list[Record]]:
    def read(start: int, limit: int) -> list[Record]:
        return [
            Record(m.seq, m.data, m.created_at, f"{stream_id}:{m.seq}")
            for m in store.inbox_read(run_id, stream_id, start, limit)
        ]

    return read
