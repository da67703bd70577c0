"""Writing chunks into one run's stream, from the run itself or from anywhere.

Every writer has an id and numbers its writes, so a retried or replayed
write is dropped by the Store instead of duplicated. A writer inside the
run it targets hands chunks straight to the run's stream buffer (group
commit does the batching); any other writer coalesces chunks for
`flush_interval_s` and sends them in one Ray call to the target's RunActor,
or, when the run has no actor (queued or suspended), appends to the Store
directly. One flusher per writer keeps its writes in order.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import ray

from rayflow._runtime import connection
from rayflow._runtime.calls import RunMoved, call
from rayflow._runtime.context import current_run
from rayflow._runtime.output import too_large
from rayflow.errors import RunFinished, RunNotFound
from rayflow.store.base import FINISHED_STATUSES, ChunkWrite, StreamTooLargeError

Pending = tuple[ChunkWrite, "asyncio.Future[int | None]"]


def finished_error(run_id: str, status: str) -> RunFinished:
    return RunFinished(f"run {run_id} is {status}; its streams are closed and take no more chunks")


class ChunkWriter:
    def __init__(self, run_id: str, key: str, writer_id: str | None = None) -> None:
        self.run_id, self.key = run_id, key
        self.writer_id = writer_id or f"ext:{uuid.uuid4().hex}"
        self._seq = 0
        self._queue: list[Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._actor: Any = None
        ctx = current_run()
        self._local = ctx.buffers.get(key) if ctx is not None and ctx.run_id == run_id else None

    def write(self, data_json: str, record_id: str | None = None) -> asyncio.Future[int | None]:
        """Queue one chunk (JSON text); the future resolves to its index once
        durable (None when it was a duplicate)."""
        w = ChunkWrite(
            data=data_json, writer_id=self.writer_id, writer_seq=self._seq, record_id=record_id
        )
        self._seq += 1
        if self._local is not None:
            return self._local.submit(w)
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._queue.append((w, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        return fut

    async def _flush_loop(self) -> None:
        interval = connection.current().settings.flush_interval_s
        while self._queue:
            await asyncio.sleep(interval)
            batch, self._queue = self._queue, []
            try:
                seqs = await self._send([w for w, _ in batch])
            except BaseException as e:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                continue
            for (_, fut), seq in zip(batch, seqs, strict=True):
                if not fut.done():
                    fut.set_result(seq)

    async def _send(self, writes: list[ChunkWrite]) -> list[int | None]:
        conn = connection.current()
        for _ in range(10):
            if self._actor is None:
                status, self._actor = await call(conn.controller.locate.remote(self.run_id))
                if status in FINISHED_STATUSES:
                    raise finished_error(self.run_id, status)
                if self._actor is None:
                    return await self._append_to_store(writes)
            try:
                result: list[int | None] = await call(
                    self._actor.append.remote(self.run_id, self.key, writes)
                )
                return result
            except ray.exceptions.RayActorError:
                self._actor = None  # it moved (finished, suspended, crashed): look again
            except (RunFinished, RunMoved):
                self._actor = None
        raise RunNotFound(f"could not reach run {self.run_id} to write to {self.key!r}")

    async def _append_to_store(self, writes: list[ChunkWrite]) -> list[int | None]:
        conn = connection.current()
        try:
            result = await asyncio.to_thread(
                conn.store.append_chunks,
                self.run_id,
                self.key,
                writes,
                conn.settings.max_stream_bytes,
            )
        except StreamTooLargeError as e:
            raise too_large(e) from None
        return result.seqs

    async def flush(self) -> None:
        """Wait until every queued write is durable."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._local is not None:
            await self._local.drain()
