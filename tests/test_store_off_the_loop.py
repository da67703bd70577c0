"""Store calls never run on a RunActor's event loop (docs/architecture.md, "The Store").

Store methods block; on the loop they would stall every read, append and
delivery of the run (and, on a recycled actor, of the next one) for as long
as the database takes. These tests give the runtime's pieces a real Store
behind a wrapper that makes every call slow, and check that a heartbeat on
the loop keeps ticking meanwhile: a new stream's length, the gap fill after
a direct write, going live, and `.on()` deliveries handed over on replay.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from conftest import eventually_async

from rayflow._config import Settings
from rayflow._runtime.context import RunContext
from rayflow._runtime.journal import Journal
from rayflow._runtime.run_inputs import RunInputs
from rayflow._runtime.stream_buffers import StreamBuffers
from rayflow.store import Store
from rayflow.store.base import ChunkWrite, JournalEntry, RunRecord

#: how long every call of the slow Store takes; a loop that waited on one
#: would miss its heartbeat by at least this much
DELAY_S = 1.0


class SlowStore:
    """A real Store whose every call first sleeps DELAY_S (in the caller's thread)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def slow(*args: Any, **kwargs: Any) -> Any:
            time.sleep(DELAY_S)
            return attr(*args, **kwargs)

        return slow


@dataclass
class Beat:
    longest_gap_s: float = 0.0


@asynccontextmanager
async def heartbeat() -> AsyncIterator[Beat]:
    """Ticks every 5 ms on the running loop; records the longest gap between ticks."""
    beat = Beat()

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            beat.longest_gap_s = max(beat.longest_gap_s, now - last)
            last = now

    task = asyncio.get_running_loop().create_task(tick())
    await asyncio.sleep(0.02)  # ticking before the body runs
    try:
        yield beat
    finally:
        task.cancel()


def new_run(store: Store) -> str:
    run_id = f"run_{uuid.uuid4().hex[:20]}"
    store.create_run(RunRecord(id=run_id, task_id="off-the-loop", status="EXECUTING", attempt=1))
    return run_id


def write(data: str, seq: int, writer: str = "w") -> ChunkWrite:
    return ChunkWrite(data=data, writer_id=writer, writer_seq=seq)


async def test_a_new_stream_reads_its_length_from_the_store_off_the_loop(store: Store) -> None:
    run_id = new_run(store)
    store.append_chunks(run_id, "k", [write('"old"', 0, "before")], 1 << 20)
    buffers = StreamBuffers(run_id, SlowStore(store), Settings())  # type: ignore[arg-type]
    async with heartbeat() as beat:
        buf = buffers.get("k")
        assert await buf.submit(write('"new"', 0)) == 1  # after the stored chunk
        reply = await buf.peek(1, 10)
        assert reply is not None
    assert [row[:2] for row in reply.rows] == [(1, '"new"')]
    assert beat.longest_gap_s < DELAY_S / 2, f"the loop stalled {beat.longest_gap_s:.2f} s"


async def test_the_gap_after_a_direct_write_is_read_off_the_loop(store: Store) -> None:
    run_id = new_run(store)
    buffers = StreamBuffers(run_id, SlowStore(store), Settings())  # type: ignore[arg-type]
    buf = buffers.get("k")
    assert await buf.submit(write('"a"', 0)) == 0
    # someone for whom the run was not live wrote to the Store directly
    await asyncio.to_thread(store.append_chunks, run_id, "k", [write('"b"', 0, "direct")], 1 << 20)
    async with heartbeat() as beat:
        assert await buf.submit(write('"c"', 1)) == 2
    reply = await buf.peek(0, 10)
    assert reply is not None
    assert [row[:2] for row in reply.rows] == [(0, '"a"'), (1, '"b"'), (2, '"c"')]
    assert beat.longest_gap_s < DELAY_S / 2, f"the loop stalled {beat.longest_gap_s:.2f} s"


async def test_replayed_on_deliveries_and_going_live_read_the_store_off_the_loop(
    store: Store,
) -> None:
    run_id = new_run(store)
    sent = store.inbox_send_many(
        [(run_id, "approval", '{"n": 1}', None), (run_id, "later", '{"n": 2}', None)]
    )
    assert all(isinstance(s, tuple) for s in sent), sent
    store.journal_append(run_id, 1, [JournalEntry(0, "on", "approval", '{"seq": 0}')])
    slow = SlowStore(store)
    journal = await asyncio.to_thread(Journal, slow, run_id, 1)  # type: ignore[arg-type]
    inputs = RunInputs(slow, run_id)  # type: ignore[arg-type]
    ctx = RunContext(
        run_id,
        "off-the-loop",
        1,
        None,
        run_id,
        journal,
        StreamBuffers(run_id, slow, Settings()),  # type: ignore[arg-type]
    )
    ctx.inputs = inputs
    got: list[Any] = []
    async with heartbeat() as beat:
        await inputs.prepare(journal)
        inputs.bind(ctx)
        # the replay hands the journaled message over at once, then goes live
        inputs.add_handler("approval", got.append)
        assert got == [{"n": 1}]
        assert inputs.live

        # a stream the task has not named yet is found in a thread
        async def found_later() -> bool:
            s = inputs.streams.get("later")
            return s is not None and [m.seq for m in s.buffer] == [0]

        await eventually_async(found_later, timeout_s=30, what="the 'later' message buffered")
        await inputs.close()
    assert beat.longest_gap_s < DELAY_S / 2, f"the loop stalled {beat.longest_gap_s:.2f} s"
