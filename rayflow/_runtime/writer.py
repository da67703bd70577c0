"""Writing chunks into one run's stream, from the run itself or from anywhere.

Every writer has an id and numbers its writes, so a retried or replayed
write is dropped by the Store instead of duplicated. A writer inside the
run it targets hands chunks straight to the run's stream buffer (group
commit does the batching). Any other writer goes through a `StreamAppender`:
one Ray call at a time to the target's RunActor (found through the
`locations` cache, not a Controller call per write) or, when the run has no
actor (queued or suspended), one append to the Store.

Coalescing is adaptive: with nothing in flight a write leaves at once (on
the next turn of the event loop, so writes made in one go share a call);
writes made while a call is in flight wait for it and then leave together.
Latency at a trickle is one round trip, throughput under a flood is one
call per batch. One call in flight per appender keeps its writes in order.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import ray

from rayflow._runtime import connection, hops, locations
from rayflow._runtime.calls import RunMoved, call
from rayflow._runtime.context import current_run
from rayflow._runtime.stream_commit import Entry
from rayflow.errors import RunFinished, RunNotFound, StreamClosed
from rayflow.store.base import FINISHED_STATUSES, ChunkWrite

#: most writes in one Ray call (a flood leaves in bounded messages)
MAX_BATCH = 10_000


def finished_error(run_id: str, status: str, key: str | None = None) -> RunFinished:
    return RunFinished(
        f"run {run_id} is {status}; its streams are closed and take no more chunks",
        run_id=run_id,
        stream=key,
        status=status,
    )


class StreamAppender:
    """Appends to one (run, key) from outside the run, batching adaptively."""

    def __init__(self, run_id: str, key: str) -> None:
        self.run_id, self.key = run_id, key
        self._queue: list[Entry] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, write: ChunkWrite) -> asyncio.Future[int | None]:
        """Queue one write; the future resolves to its index once durable
        (None for a duplicate)."""
        return self._submit([write], True)

    def submit_batch(self, writes: list[ChunkWrite]) -> asyncio.Future[list[int | None]]:
        """Queue writes that travel together (one future for all)."""
        return self._submit(writes, False)

    def _submit(self, writes: list[ChunkWrite], single: bool) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append(Entry(writes, fut, single))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_loop())
        return fut

    async def append(self, writes: list[ChunkWrite]) -> list[int | None]:
        return await self.submit_batch(writes)

    @property
    def idle(self) -> bool:
        return not self._queue and (self._flusher is None or self._flusher.done())

    def _take(self) -> list[Entry]:
        count = n = 0
        while n < len(self._queue) and (n == 0 or count + len(self._queue[n].writes) <= MAX_BATCH):
            count += len(self._queue[n].writes)
            n += 1
        taken, self._queue = self._queue[:n], self._queue[n:]
        return taken

    async def _flush_loop(self) -> None:
        delay = connection.current().settings.flush_interval_s
        if delay > 0:
            await asyncio.sleep(delay)
        while self._queue:
            batch = self._take()
            writes = [w for e in batch for w in e.writes]
            ids = (
                [hops.write_id(w.writer_id, w.writer_seq) for w in writes] if hops.enabled() else []
            )
            hops.mark("send", ids)
            try:
                seqs = await self._send(writes)
            except BaseException as e:
                for entry in batch:
                    entry.fail(e)
                if not isinstance(e, Exception):
                    raise
                continue
            hops.mark("ack", ids)
            at = 0
            for entry in batch:
                entry.settle(seqs[at : at + len(entry.writes)])
                at += len(entry.writes)

    async def _send(self, writes: list[ChunkWrite]) -> list[int | None]:
        for _ in range(10):
            status, actor = await locations.locate(self.run_id)
            if status in FINISHED_STATUSES:
                raise finished_error(self.run_id, status, self.key)
            if actor is None:
                return await self._append_to_store(writes)
            try:
                result: list[int | None] = await call(
                    actor.append.remote(self.run_id, self.key, writes)
                )
                return result
            except (ray.exceptions.RayActorError, RunMoved):
                # it moved (finished, suspended, crashed, recycled): look again
                locations.forget(self.run_id, actor)
        raise RunNotFound(
            f"could not reach run {self.run_id} to write to {self.key!r}",
            run_id=self.run_id,
            stream=self.key,
        )

    async def _append_to_store(self, writes: list[ChunkWrite]) -> list[int | None]:
        conn = connection.current()

        def append() -> list[int | None]:
            # a live run's buffer refuses a closed stream itself; here the
            # Store's flag says it (a stream closed before the run suspended)
            info = conn.store.stream_info(self.run_id, self.key)
            if info is not None and info.closed:
                raise StreamClosed(
                    f"stream {self.key!r} of run {self.run_id} is closed; it takes no more chunks",
                    run_id=self.run_id,
                    stream=self.key,
                )
            max_bytes = conn.settings.max_stream_bytes
            return conn.store.append_chunks(self.run_id, self.key, writes, max_bytes).seqs

        return await asyncio.to_thread(append)

    async def flush(self) -> None:
        """Wait until every queued write is durable."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)


class ChunkWriter:
    def __init__(self, run_id: str, key: str, writer_id: str | None = None) -> None:
        self.run_id, self.key = run_id, key
        self.writer_id = writer_id or f"ext:{uuid.uuid4().hex}"
        self._seq = 0
        ctx = current_run()
        self._local = ctx.buffers.get(key) if ctx is not None and ctx.run_id == run_id else None
        self._remote = StreamAppender(run_id, key) if self._local is None else None

    def write(self, data_json: str, record_id: str | None = None) -> asyncio.Future[int | None]:
        """Queue one chunk (JSON text); the future resolves to its index once
        durable (None when it was a duplicate)."""
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
