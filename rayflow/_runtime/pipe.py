"""Piping an iterable into an output stream: values taken in batches (a sync
iterable in runs of up to PIPE_BATCH or PIPE_BATCH_S, an async one as its
values arrive), encoded together and written with one future per batch;
local tees see the values as they pass.

Inside a task a pipe is a durable operation (`stream_journal`): its
completion is journaled once every chunk is durable, and a replay that
meets a completed pipe returns the recorded count without iterating the
source (the source object is created by the task's code, never consumed);
its tee yields the chunks the pipe stored, read back from the stream."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Generic, TypeVar

from rayflow._runtime import connection, stream_journal
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
        #: the task awaits the pipe: it must not hold for a replay (stream_journal.admit)
        self._awaited = asyncio.Event()
        #: indexes the pipe's chunks got (journaled with its completion)
        self._indexes: list[int] = []
        journal = writer.journal
        self._recorded = (
            stream_journal.completion(journal, writer.writer_id, 0) if journal else None
        )
        self._task: asyncio.Future[int]
        if self._recorded is not None:
            # a replay of a completed pipe: the recorded outcome, the source untouched
            writer.skipping = True
            writer.advance_to(int(self._recorded["position"]))
            self._task = asyncio.get_running_loop().create_future()
            self._task.set_result(int(self._recorded["count"]))
        else:
            self._task = asyncio.ensure_future(self._run(source))

    @property
    def in_flight(self) -> int:
        """Chunks taken from the source and not yet known to be durable."""
        return sum(n for f, n in self._pending if not f.done())

    async def _run(self, source: AsyncIterable[T] | Iterable[T]) -> int:
        count = 0
        writer, journal = self._writer, self._writer.journal
        try:
            async for values in _batches(source):
                if journal is not None:
                    end = writer.position + len(values)
                    await stream_journal.admit(journal, writer.writer_id, end, self._awaited)
                if len(values) == 1:
                    self._write(writer.write(self._codec.encode(values[0])), 1)
                else:
                    try:
                        datas = self._codec.encode_many(values)
                    except ValidationError:
                        # as without batching: the values before the bad one are written
                        for value in values:
                            self._write(writer.write(self._codec.encode(value)), 1)
                    else:
                        self._write(writer.write_many(datas), len(values))
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
        await writer.flush()
        if journal is not None:
            outcome = {
                "count": count,
                "position": writer.position,
                "ranges": stream_journal.ranges(self._indexes),
            }
            await stream_journal.complete(journal, writer.writer_id, 0, outcome)
        return count

    def _write(self, future: asyncio.Future[Any], n: int) -> None:
        self._pending.append((future, n))
        future.add_done_callback(self._collect)

    def _collect(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        got = future.result()
        for index in got if isinstance(got, list) else [got]:
            if index is not None:
                self._indexes.append(index)

    @property
    def stream(self) -> AsyncIterator[T]:
        """The piped values as they pass (a local tee; take it right after
        pipe()). A replay of a completed pipe yields the chunks it stored."""
        if self._recorded is not None:
            return self._stored()
        q: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        self._tees.append(q)

        async def tee() -> AsyncIterator[T]:
            while True:
                done, value = await q.get()
                if done:
                    return
                yield value

        return tee()

    async def _stored(self) -> AsyncIterator[T]:
        assert self._recorded is not None
        store = connection.current().store
        w = self._writer
        for start, stop in self._recorded["ranges"]:
            at = start
            while at < stop:
                chunks = await asyncio.to_thread(
                    store.read_chunks, w.run_id, w.key, at, min(stop - at, 1000)
                )
                if not chunks:
                    return
                for chunk in chunks:
                    yield self._codec.decode(chunk.data)
                at = chunks[-1].seq + 1

    async def wait_until_complete(self) -> int:
        """Wait until every piped chunk is durable; returns how many were piped.
        Inside a task the completion is journaled before this returns."""
        self._awaited.set()
        return await asyncio.shield(self._task)
