"""Piping an iterable into an output stream: values taken in batches (a sync
iterable in runs of up to PIPE_BATCH or PIPE_BATCH_S, an async one as its
values arrive), encoded together and written with one future per batch;
local tees see the values as they pass."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Generic, TypeVar

from rayflow._runtime.codec import Codec
from rayflow._runtime.writer import ChunkWriter
from rayflow.errors import ValidationError

T = TypeVar("T")


async def each(source: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[T]:
    if hasattr(source, "__aiter__"):
        async for value in source:
            yield value
    else:
        for i, value in enumerate(source):
            yield value
            if i % 64 == 63:
                await asyncio.sleep(0)  # let the committer run


#: most values a pipe takes from a sync iterable at once, and the longest it
#: keeps taking before it writes what it has (a slow generator is not held up)
PIPE_BATCH = 1024
PIPE_BATCH_S = 0.002
#: chunks a pipe holds taken but not yet durable before it takes more from its
#: source: a few batches keep the group commit busy; more would only queue
PIPE_MAX_IN_FLIGHT = 4 * PIPE_BATCH


async def _batches(source: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[list[T]]:
    """The values of `source` in batches: a sync iterable in runs of up to
    PIPE_BATCH (or PIPE_BATCH_S), an async one value by value (its values
    arrive when they arrive; the writer coalesces whatever queues up)."""
    if hasattr(source, "__aiter__"):
        async for value in source:
            yield [value]
        return
    it = iter(source)
    while True:
        deadline = time.perf_counter() + PIPE_BATCH_S
        batch: list[T] = []
        for value in it:
            batch.append(value)
            if len(batch) >= PIPE_BATCH or time.perf_counter() >= deadline:
                break
        if not batch:
            return
        yield batch
        await asyncio.sleep(0)  # let the committer and the tees run


class Pipe(Generic[T]):
    """A running pipe: `.stream` tees the values locally as they pass,
    `await wait_until_complete()` returns once all of them are durable.

    Values are taken, encoded and written in batches: one future and one
    group commit per batch, not per value."""

    def __init__(self, codec: Codec[T], writer: ChunkWriter, source: Any) -> None:
        self._codec, self._writer = codec, writer
        self._tees: list[asyncio.Queue[tuple[bool, Any]]] = []
        #: (future, chunks) per write not yet awaited, oldest first
        self._pending: deque[tuple[asyncio.Future[Any], int]] = deque()
        self._taken = 0  # chunks in `_pending`
        self._task = asyncio.ensure_future(self._run(source))

    @property
    def in_flight(self) -> int:
        """Chunks taken from the source and not yet known to be durable."""
        return sum(n for f, n in self._pending if not f.done())

    async def _run(self, source: AsyncIterable[T] | Iterable[T]) -> int:
        count = 0
        try:
            async for values in _batches(source):
                if len(values) == 1:
                    self._pending.append((self._writer.write(self._codec.encode(values[0])), 1))
                else:
                    try:
                        datas = self._codec.encode_many(values)
                    except ValidationError:
                        # as without batching: the values before the bad one are written
                        for value in values:
                            future = self._writer.write(self._codec.encode(value))
                            self._pending.append((future, 1))
                    else:
                        self._pending.append((self._writer.write_many(datas), len(values)))
                self._taken += len(values)
                count += len(values)
                for q in self._tees:
                    for value in values:
                        q.put_nowait((False, value))
                # back-pressure: take no more while too much waits to be durable
                while self._taken > PIPE_MAX_IN_FLIGHT:
                    future, n = self._pending.popleft()
                    self._taken -= n
                    await future
        finally:
            for q in self._tees:
                q.put_nowait((True, None))
        await asyncio.gather(*(f for f, _ in self._pending))
        await self._writer.flush()
        return count

    @property
    def stream(self) -> AsyncIterator[T]:
        """The piped values as they pass (a local tee; take it right after pipe())."""
        q: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        self._tees.append(q)

        async def tee() -> AsyncIterator[T]:
            while True:
                done, value = await q.get()
                if done:
                    return
                yield value

        return tee()

    async def wait_until_complete(self) -> int:
        """Wait until every piped chunk is durable; returns how many were piped."""
        return await asyncio.shield(self._task)
