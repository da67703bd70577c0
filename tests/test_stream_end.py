"""No chunk lands after its run's end (issue 20, item 8): a canceled run's
streams are closed in the same transaction that finishes it, and the writes
its RunActor still held then are refused, not committed after the end —
a reader that saw the stream end has seen every chunk it will ever hold."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import eventually_async

import rayflow
from rayflow import streams, task
from rayflow._runtime.connection import current

pytestmark = pytest.mark.usefixtures("rf")

flood_out = streams.define("se-flood", int)


@task(id="se-flood")
async def flood(payload: dict) -> None:  # type: ignore[type-arg]
    """Writes as fast as it can, many writes in flight, until canceled."""
    i = 0
    while True:
        await asyncio.gather(*(flood_out.append(i + j) for j in range(50)))
        i += 50


def first_closed_length(run_id: str, key: str, stop: threading.Event) -> int | None:
    """Polls the Store: the stream's length when it is first seen closed."""
    store = current().store
    while not stop.is_set():
        info = store.stream_info(run_id, key)
        if info is not None and info.closed:
            return info.length
        time.sleep(0.0005)
    return None


async def test_a_canceled_run_commits_no_chunk_after_its_end() -> None:
    handle = await flood.trigger({})

    async def streaming() -> bool:
        info = await asyncio.to_thread(current().store.stream_info, handle.id, flood_out.id)
        return info is not None and info.length > 500

    await eventually_async(streaming, timeout_s=60, what="the run streaming")
    stop = threading.Event()
    watcher = asyncio.create_task(
        asyncio.to_thread(first_closed_length, handle.id, flood_out.id, stop)
    )
    try:
        assert await rayflow.runs.cancel(handle.id)
        seen_at_end = await asyncio.wait_for(watcher, 30)
    finally:
        stop.set()
    run = await rayflow.runs.wait(handle.id)
    assert run.status == "CANCELED"
    # the RunActor has stopped the run (cancel waits for it): whatever is
    # stored now is all there will be
    final = await asyncio.to_thread(current().store.stream_info, handle.id, flood_out.id)
    assert final is not None and final.closed
    assert final.length == seen_at_end, (
        f"{final.length - (seen_at_end or 0)} chunks committed after the stream was closed"
        " by the run's end"
    )
    got = [x async for x in flood_out.read(handle.id, timeout_s=1)]
    assert got == list(range(len(got))) and len(got) == final.length
