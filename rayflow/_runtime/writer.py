"""Writing chunks into one run's stream, from the run itself or from anywhere.

Every writer has an id and numbers its writes, so a retried or replayed
write is dropped by the Store instead of duplicated. A writer inside the
run it targets hands chunks straight to the run's stream buffer (group
commit does the batching). Any other writer goes through a `StreamAppender`,
which hands its writes to the `run_appender.ProcessAppender` of its event
loop: all of a process's writes to runs it does not execute are committed to
the Store by that process, together (one commit in flight, adaptive
coalescing), and the runs' RunActors are told afterwards (see that module).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from rayflow._runtime import hops, stream_journal
from rayflow._runtime.context import current_run
from rayflow._runtime.journal import Journal
from rayflow._runtime.run_appender import (
    MAX_BATCH,
    ProcessAppender,
    finished_error,
    process_appender,
)
from rayflow.store.base import ChunkWrite

__all__ = ["MAX_BATCH", "ChunkWriter", "StreamAppender", "finished_error"]


class StreamAppender:
    """Appends to one (run, key) from outside the run, through the
    `ProcessAppender` of the current event loop."""

    def __init__(self, run_id: str, key: str) -> None:
        self.run_id, self.key = run_id, key
        #: futures handed out and not yet resolved (what `flush` waits for)
        self._unsettled: set[asyncio.Future[Any]] = set()
        #: the appender of the loop this one writes from (found on first use:
        #: not looked up per chunk)
        self._appender: ProcessAppender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, write: ChunkWrite) -> asyncio.Future[int | None]:
        """Queue one write; the future resolves to its index once durable
        (None for a duplicate)."""
        return self._submit([write], True)

    def submit_batch(self, writes: list[ChunkWrite]) -> asyncio.Future[list[int | None]]:
        """Queue writes that travel together (one future for all)."""
        return self._submit(writes, False)

    def _submit(self, writes: list[ChunkWrite], single: bool) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if self._appender is None or self._loop is not loop:
            self._appender, self._loop = process_appender(), loop
        future = self._appender.submit(self.run_id, self.key, writes, single)
        self._unsettled.add(future)
        future.add_done_callback(self._unsettled.discard)
        return future

    async def append(self, writes: list[ChunkWrite]) -> list[int | None]:
        return await self.submit_batch(writes)

    @property
    def idle(self) -> bool:
        return not self._unsettled

    async def flush(self) -> None:
        """Wait until every queued write is durable (or failed)."""
        while self._unsettled:
            await asyncio.wait(list(self._unsettled))


class ChunkWriter:
    """Numbered writes of one writer to one (run, key). Inside a task (a
    deterministic `writer_id`) its writes are journaled as `stream_journal`
    says: a replay writes nothing past the position the journal recorded."""

    def __init__(self, run_id: str, key: str, writer_id: str | None = None) -> None:
        self.run_id, self.key = run_id, key
        self.writer_id = writer_id or f"ext:{uuid.uuid4().hex}"
        self._seq = 0
        ctx = current_run()
        self._local = ctx.buffers.get(key) if ctx is not None and ctx.run_id == run_id else None
        self._remote = StreamAppender(run_id, key) if self._local is None else None
        #: the journal of the task that writes (None outside a task)
        self.journal: Journal | None = ctx.journal if ctx is not None and writer_id else None
        #: drop every write: a segment the journal recorded as complete is replayed
        self.skipping = False
        if self.journal is not None:
            stream_journal.register(self.journal, self)

    @property
    def position(self) -> int:
        """How many writes this writer numbered so far (its next write's number)."""
        return self._seq

    def advance_to(self, position: int) -> None:
        """Number the next write `position` at least (the journal says the
        writer had reached it)."""
        self._seq = max(self._seq, position)

    def _dropped(self) -> bool:
        """Whether the next writes are a replay's that the Store need not see
        (answered as duplicates): a completed segment's, or any made before
        the replay passed this writer's next suspension — below the position
        recorded there the chunk is stored already (every writer was flushed
        before it was recorded), at or past it the run did not write it
        before it suspended."""
        if self.skipping:
            return True
        if self.journal is None:
            return False
        return stream_journal.bound(self.journal, self.writer_id) is not None

    @property
    def idle(self) -> bool:
        """No write of this writer is in flight."""
        return self._remote is None or self._remote.idle

    def write(self, data_json: str, record_id: str | None = None) -> asyncio.Future[int | None]:
        """Queue one chunk (JSON text); the future resolves to its index once
        durable (None when it was a duplicate, or a replay's write past what
        the journal allows)."""
        if self.journal is not None and self._dropped():
            self._seq += 1
            return _done(None)
        w = ChunkWrite(
            data=data_json, writer_id=self.writer_id, writer_seq=self._seq, record_id=record_id
        )
        self._seq += 1
        if hops.enabled():
            hops.mark("write", [hops.write_id(w.writer_id, w.writer_seq)])
        if self._local is not None:
            return self._local.submit(w)
        assert self._remote is not None
        return self._remote.submit(w)

    def write_many(self, datas: list[str]) -> asyncio.Future[list[int | None]]:
        """Queue chunks (JSON text) that travel and commit together; the
        future resolves to their indexes once all are durable."""
        if self.journal is not None and self._dropped():
            self._seq += len(datas)
            return _done([None] * len(datas))
        first, self._seq = self._seq, self._seq + len(datas)
        writes = [
            ChunkWrite(data=d, writer_id=self.writer_id, writer_seq=first + i)
            for i, d in enumerate(datas)
        ]
        if hops.enabled():
            hops.mark("write", [hops.write_id(w.writer_id, w.writer_seq) for w in writes])
        if self._local is not None:
            return self._local.submit_batch(writes)
        assert self._remote is not None
        return self._remote.submit_batch(writes)

    async def flush(self) -> None:
        """Wait until every queued write is durable."""
        if self._remote is not None:
            await self._remote.flush()
        if self._local is not None:
            await self._local.drain()


def _done(value: Any) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
