"""Which ChunkWriter a stream handle writes through, and closing a stream.

Inside a task the writer ids are deterministic (`RunContext.next_writer_id`),
so writes replayed after a revival are recognised and dropped; outside a
task there is one default writer per (run, key) per event loop.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import ray

from rayflow._runtime import connection, locations
from rayflow._runtime.calls import RunMoved, call
from rayflow._runtime.context import current_run, resolve_target
from rayflow._runtime.writer import ChunkWriter


def default_writer(key: str, target: str | None) -> ChunkWriter:
    """The default writer of this (run, key, target) in the current context.

    Inside a task its id is deterministic, so writes replayed after a
    revival are recognised and dropped. Outside, one writer per event loop.
    """
    run_id = resolve_target(target)
    ctx = current_run()
    if ctx is not None:
        cache: dict[Any, ChunkWriter] = ctx.__dict__.setdefault("_append_writers", {})
        key_ = (run_id, key)
        if key_ not in cache:
            cache[key_] = ChunkWriter(run_id, key, ctx.next_writer_id("append"))
        return cache[key_]
    writers = _loop_writers.setdefault(asyncio.get_running_loop(), {})
    key_ = (run_id, key)
    if key_ not in writers:
        writers[key_] = ChunkWriter(run_id, key)
        if len(writers) > MAX_LOOP_WRITERS:
            _drop_idle(writers, keep=key_)
    return writers[key_]


#: default writers kept per event loop outside a task; past it the idle ones
#: go (a process writing to many runs keeps no writer per (run, key) forever)
MAX_LOOP_WRITERS = 1_000


def _drop_idle(writers: dict[Any, ChunkWriter], keep: Any) -> None:
    # a writer with writes in flight stays: a new one for its stream could
    # otherwise commit a later chunk before them
    for k in [k for k, w in writers.items() if w.idle and k != keep]:
        del writers[k]


_loop_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, ChunkWriter]] = (
    weakref.WeakKeyDictionary()
)


def new_writer(key: str, target: str | None) -> ChunkWriter:
    run_id = resolve_target(target)
    ctx = current_run()
    return ChunkWriter(run_id, key, ctx.next_writer_id("writer") if ctx is not None else None)


async def close_stream(run_id: str, key: str) -> None:
    conn = connection.current()
    for _ in range(10):
        _, actor = await locations.locate(run_id)
        if actor is None:
            break
        try:
            await call(actor.close_stream.remote(run_id, key))
            return
        except (RunMoved, ray.exceptions.RayActorError):
            locations.forget(run_id, actor)  # it left that actor: look again
    await asyncio.to_thread(conn.store.close_stream, run_id, key)
