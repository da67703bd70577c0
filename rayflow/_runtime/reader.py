"""Reading an output stream from any process: history, then live, then the end.

A reader asks the run's live RunActor for chunks (a long poll: one Ray call
per batch, not per chunk). Chunks the actor no longer holds come from a
sealed segment in the Ray object store or, older still, straight from the
Store by index seek. When the run has no actor (queued, suspended,
finished) the reader reads the Store and, while the run is still active,
polls for it to come back. It ends when the stream is closed (run finished
or writer closed it) or after `timeout_s` without a new chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import ray

from rayflow._runtime import connection
from rayflow._runtime.calls import call
from rayflow._runtime.output import Row, rows_from_chunks
from rayflow.store.base import FINISHED_STATUSES

#: how often a reader without a live actor asks where the run went
RELOCATE_S = 0.25
#: longest single long poll, so a reader notices the run's actor change
LONG_POLL_S = 5.0


class ChunkReader:
    """Batches of rows `(seq, JSON text, created_at ms, record id)`, in order."""

    def __init__(
        self,
        run_id: str,
        key: str,
        start_index: int = 0,
        timeout_s: float | None = 60.0,
        batch: int = 1000,
    ) -> None:
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, not {start_index}")
        self.run_id, self.key, self.batch = run_id, key, batch
        self.next_index = start_index
        self.timeout_s = timeout_s
        #: set when the reader ended because the stream is closed
        self.closed = False

    async def _read_store(self, start: int) -> list[Row]:
        store = connection.current().store
        chunks = await asyncio.to_thread(
            store.read_chunks, self.run_id, self.key, start, self.batch
        )
        return rows_from_chunks(chunks)

    async def _store_says_closed(self) -> bool:
        store = connection.current().store
        run = await asyncio.to_thread(store.get_run, self.run_id)
        if run is None or run.status in FINISHED_STATUSES:
            return True
        info = await asyncio.to_thread(store.stream_info, self.run_id, self.key)
        return info is not None and info.closed

    async def batches(self) -> AsyncIterator[list[Row]]:
        conn = connection.current()
        idle_deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        actor: Any = None
        located_at = 0.0
        # the first locate also raises RunNotFound for an unknown run
        status, actor = await call(conn.controller.locate.remote(self.run_id))
        located_at = time.monotonic()
        while True:
            now = time.monotonic()
            if idle_deadline is not None and now >= idle_deadline:
                return
            if actor is None and now - located_at >= RELOCATE_S:
                status, actor = await call(conn.controller.locate.remote(self.run_id))
                located_at = time.monotonic()
            rows: list[Row] = []
            if actor is not None:
                wait = (
                    LONG_POLL_S if idle_deadline is None else min(idle_deadline - now, LONG_POLL_S)
                )
                try:
                    reply = await actor.read.remote(
                        self.run_id, self.key, self.next_index, self.batch, wait
                    )
                except ray.exceptions.RayActorError:
                    actor, located_at = None, 0.0
                    continue
                if reply.rows:
                    rows = reply.rows
                elif reply.ref is not None:
                    segment = await reply.ref
                    offset = self.next_index - reply.ref_start
                    rows = segment[offset : offset + self.batch]
                elif reply.from_store:
                    rows = await self._read_store(self.next_index)
                    if not rows:
                        actor = None  # the actor holds no run: fall back to the Store
                        continue
                elif reply.closed:
                    self.closed = True
                    return
            else:
                rows = await self._read_store(self.next_index)
                if not rows:
                    if status in FINISHED_STATUSES or await self._store_says_closed():
                        # a last look: chunks committed just before the close
                        rows = await self._read_store(self.next_index)
                        if not rows:
                            self.closed = True
                            return
                    else:
                        await asyncio.sleep(0.05)
                        continue
            if rows:
                self.next_index = rows[-1][0] + 1
                if self.timeout_s is not None:
                    idle_deadline = time.monotonic() + self.timeout_s
                yield rows
