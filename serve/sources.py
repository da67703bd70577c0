"""Where SSE responses take their records from.

Output streams come from `serve.fanout` (one live subscription per replica
and stream). `StoreSource` reads a stream (or an input stream's message log) straight
from the Store: acknowledged = durable = visible, so everything a writer was
told has happened is there. It seeks by index, returns whatever is there in
one batch, and while caught up polls at `poll_s`. Input-stream logs are
read this way: the runtime has no push reader for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from rayflow.store import Store
from serve.sse import Batch, Record

#: at most this many records in one SSE event
BATCH_LIMIT = 1000


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
