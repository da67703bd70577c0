"""A RunActor's output streams: group commit, in-memory tail, sealed segments.

Writes queue per stream; one committer per stream takes everything queued
and commits it to the Store in one transaction (group commit), so a burst of
writes costs one commit. Only then are the chunks visible to readers and the
writers' futures resolved: acknowledged = durable = visible.

Memory stays bounded however long a stream grows: the newest `tail_chunks`
chunks stay in the actor's heap; full batches are sealed into the Ray object
store with `ray.put` (Ray spills them to disk under pressure) and only the
newest `object_store_segments` of those are remembered. Anything older is
read from the Store by an index seek.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import ray

from rayflow._runtime import hops
from rayflow.errors import RunFinished, StreamTooLarge
from rayflow.store import Store
from rayflow.store.base import AppendResult, Chunk, ChunkWrite, StreamTooLargeError

log = logging.getLogger("rayflow")

#: most writes in one group commit
COMMIT_BATCH = 512

#: one chunk as sent to readers: (seq, JSON text, created_at ms, record id)
Row = tuple[int, str, int, str | None]


@dataclass
class ReadReply:
    """What a reader gets from `StreamBuffer.read`: rows, or where to find them."""

    rows: list[Row]
    #: a sealed segment holding the rows from `ref_start` on, when not in `rows`
    ref: Any = None
    ref_start: int = 0
    #: the reader's index is older than the actor remembers: read the Store
    from_store: bool = False
    length: int = 0
    closed: bool = False


class StreamBuffer:
    def __init__(
        self,
        run_id: str,
        key: str,
        store: Store,
        *,
        length: int,
        tail_chunks: int,
        segments: int,
        max_bytes: int,
    ) -> None:
        self.run_id, self.key, self.store = run_id, key, store
        self.length = length
        self.tail: list[Row] = []
        self.tail_start = length
        self.segments: deque[tuple[int, int, Any]] = deque(maxlen=segments)
        self.tail_chunks, self.max_bytes = tail_chunks, max_bytes
        self.closed = False
        self._changed = asyncio.Event()
        self._pending: list[tuple[ChunkWrite, asyncio.Future[int | None]]] = []
        self._committer: asyncio.Task[None] | None = None

    # -- writing ---------------------------------------------------------------
    def submit(self, write: ChunkWrite) -> asyncio.Future[int | None]:
        """Queue a write for the next group commit; the future gives its index
        once durable (None when it was a duplicate)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int | None] = loop.create_future()
        if self.closed:
            future.set_exception(RunFinished(f"stream {self.key!r} of run {self.run_id} is closed"))
            return future
        self._pending.append((write, future))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_loop())
        return future

    async def submit_many(self, writes: list[ChunkWrite]) -> list[int | None]:
        hops.mark("actor", [hops.write_id(w.writer_id, w.writer_seq) for w in writes])
        return list(await asyncio.gather(*(self.submit(w) for w in writes)))

    async def _commit_loop(self) -> None:
        while self._pending:
            # bounded batches: a flood of writes becomes visible in steps,
            # not all at once after one huge transaction
            batch, self._pending = self._pending[:COMMIT_BATCH], self._pending[COMMIT_BATCH:]
            try:
                await self._commit(batch)
            except StreamTooLargeError:
                # one of them is too large: commit the others, fail only those
                for item in batch:
                    try:
                        await self._commit([item])
                    except StreamTooLargeError as e:
                        item[1].set_exception(too_large(e))
                    except Exception as e:
                        item[1].set_exception(e)
            except BaseException as e:  # the Store failed: every writer must hear it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                if not isinstance(e, Exception):
                    raise

    async def _commit(self, batch: list[tuple[ChunkWrite, asyncio.Future[int | None]]]) -> None:
        writes = [w for w, _ in batch]
        result = await asyncio.to_thread(self._append, writes)
        self._publish(writes, result.seqs, result.length)
        for (_, fut), seq in zip(batch, result.seqs, strict=True):
            if not fut.done():
                fut.set_result(seq)

    def _append(self, writes: list[ChunkWrite]) -> AppendResult:
        if not hops.enabled():
            return self.store.append_chunks(self.run_id, self.key, writes, self.max_bytes)
        ids = [hops.write_id(w.writer_id, w.writer_seq) for w in writes]
        hops.mark("commit_start", ids)
        result = self.store.append_chunks(self.run_id, self.key, writes, self.max_bytes)
        hops.mark("committed", ids)
        return result

    def _publish(self, writes: list[ChunkWrite], seqs: list[int | None], length: int) -> None:
        from rayflow.store.base import now_ms

        now = now_ms()
        rows = [
            (seq, w.data, now, w.record_id)
            for w, seq in zip(writes, seqs, strict=True)
            if seq is not None
        ]
        if rows and rows[0][0] != self.length:
            # someone wrote to the Store directly meanwhile (the run was not
            # live for them): take the gap from the Store to keep order
            gap = self.store.read_chunks(
                self.run_id, self.key, self.length, rows[0][0] - self.length
            )
            rows = [(c.seq, c.data, c.created_at, c.record_id) for c in gap] + rows
        if rows:
            self.tail.extend(rows)
            self.length = rows[-1][0] + 1
            self._seal()
            self._notify()
            if hops.enabled():
                done = [(w, s) for w, s in zip(writes, seqs, strict=True) if s is not None]
                hops.mark(
                    "visible",
                    [hops.stream_id(self.run_id, self.key, s) for _, s in done],
                    [hops.write_id(w.writer_id, w.writer_seq) for w, _ in done],
                )
        elif length > self.length:
            self.length = length

    def _seal(self) -> None:
        while len(self.tail) >= 2 * self.tail_chunks:
            sealed = self.tail[: self.tail_chunks]
            self.tail = self.tail[self.tail_chunks :]
            start = sealed[0][0]
            self.segments.append((start, start + len(sealed), ray.put(sealed)))
            self.tail_start = self.tail[0][0]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed."""
        while self._committer is not None and not self._committer.done():
            await asyncio.shield(self._committer)

    def close(self) -> None:
        self.closed = True
        self._notify()

    # -- reading ---------------------------------------------------------------
    async def read(self, start: int, limit: int, wait_s: float) -> ReadReply:
        if start >= self.length and not self.closed and wait_s > 0:
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), wait_s)
        return self._serve(start, limit)

    def _serve(self, start: int, limit: int) -> ReadReply:
        reply = ReadReply(rows=[], length=self.length, closed=self.closed)
        if start >= self.length:
            return reply
        if start >= self.tail_start:
            offset = start - self.tail_start
            reply.rows = self.tail[offset : offset + limit]
            return reply
        for seg_start, seg_end, ref in self.segments:
            if seg_start <= start < seg_end:
                reply.ref, reply.ref_start = ref, seg_start
                return reply
        reply.from_store = True
        return reply


def too_large(e: StreamTooLargeError) -> StreamTooLarge:
    return StreamTooLarge(
        f"stream {e.key!r} of run {e.run_id} would grow to {e.size} bytes, over its limit of"
        f" {e.limit}; nothing of this write was stored. Write large results elsewhere and"
        " stream references to them."
    )


class StreamBuffers:
    """All output streams of one run, created on first use."""

    def __init__(self, run_id: str, store: Store, settings: Any) -> None:
        self.run_id, self.store, self.settings = run_id, store, settings
        self.streams: dict[str, StreamBuffer] = {}
        self.closed = False

    def get(self, key: str) -> StreamBuffer:
        buf = self.streams.get(key)
        if buf is None:
            info = self.store.stream_info(self.run_id, key)
            buf = StreamBuffer(
                self.run_id,
                key,
                self.store,
                length=info.length if info else 0,
                tail_chunks=self.settings.tail_chunks,
                segments=self.settings.object_store_segments,
                max_bytes=self.settings.max_stream_bytes,
            )
            if self.closed or (info is not None and info.closed):
                buf.closed = True
            self.streams[key] = buf
        return buf

    async def drain(self) -> None:
        for buf in list(self.streams.values()):
            await buf.drain()

    def release(self) -> None:
        """The run left this actor: wake every long poll, so that its reader
        asks again and is sent to the Store (or the run's next actor)."""
        for buf in self.streams.values():
            buf._notify()

    def close_all(self) -> None:
        self.closed = True
        for buf in self.streams.values():
            buf.close()


def rows_from_chunks(chunks: list[Chunk]) -> list[Row]:
    return [(c.seq, c.data, c.created_at, c.record_id) for c in chunks]
