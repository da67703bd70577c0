"""Small runtime entry points the HTTP app (serve/) needs beyond the public API.

Owned by serve/: writes with a writer id and per-writer sequence numbers
(the SDK's v1 NDJSON writer resends chunks after a reconnect; they must be
stored once), and the writer's last stored position for its `HEAD` probe.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from rayflow._runtime.calls import RunMoved
from rayflow._runtime.connection import current
from rayflow.errors import RunFinished, RunNotFound, StreamTooLarge
from rayflow.store.base import ChunkWrite, StreamTooLargeError


async def append_writes(run_id: str, key: str, writes: list[ChunkWrite]) -> list[int | None]:
    """Append to a run's output stream from outside the run; returns the
    index of each write (None for a duplicate `(writer_id, writer_seq)`).

    Goes to the live RunActor (group commit, wakes its readers) or, when the
    run has no live actor (queued or suspended), straight to the Store.
    Raises RunNotFound, RunFinished, StreamTooLarge.
    """
    conn = current()
    status, actor = await conn.controller.locate.remote(run_id)
    if status in ("COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT"):
        raise RunFinished(
            f"run {run_id} is {status}; its streams are closed and take no more chunks"
        )
    if actor is not None:
        try:
            seqs: list[int | None] = await actor.append.remote(run_id, key, writes)
            return seqs
        except (ray.exceptions.RayActorError, RunMoved):
            pass  # the run left that actor meanwhile: the Store is the truth
        except RunFinished:
            run = await asyncio.to_thread(conn.store.get_run, run_id)
            if run is None or run.finished:
                raise
    return await _append_to_store(run_id, key, writes)


async def _append_to_store(run_id: str, key: str, writes: list[ChunkWrite]) -> list[int | None]:
    conn = current()
    run = await asyncio.to_thread(conn.store.get_run, run_id)
    if run is None:
        raise RunNotFound(f"run {run_id} does not exist")
    if run.finished:
        raise RunFinished(f"run {run_id} is {run.status}; its streams take no more chunks")
    try:
        result = await asyncio.to_thread(
            conn.store.append_chunks, run_id, key, writes, conn.settings.max_stream_bytes
        )
    except StreamTooLargeError as e:
        raise StreamTooLarge(
            f"stream {key!r} of run {run_id} would grow to {e.size} bytes, over its limit of"
            f" {e.limit}; nothing of this write was stored"
        ) from e
    return result.seqs


async def writer_position(run_id: str, key: str, writer_id: str) -> int:
    """The last `writer_seq` stored for `writer_id` on the stream, -1 if none."""
    conn = current()
    positions: dict[Any, int] = await asyncio.to_thread(conn.store.writer_positions, run_id)
    return positions.get((key, writer_id), -1)
