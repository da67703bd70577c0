"""What idle subscribers cost the Store (issue 20, item 11): a change
to a run that does not carry the shape's tags wakes no read, and the live
polls of one shape share one read per change; an idle input-log reader
polls at most twice a second. Driven in-process on the
replica's own code (`serve.run_shapes`), counting the shape's reads, with
the real run change feed, Ray and both Stores."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from conftest import eventually_async

import rayflow
from rayflow import task
from rayflow._runtime.connection import current
from rayflow.store.base import RunRecord
from serve.run_feed import feed
from serve.run_shapes import ShapeRequest, serve_shape

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)


@task(id="shape-quick")
async def shape_quick(payload: dict) -> int:  # type: ignore[type-arg]
    return 1


async def test_a_tag_shape_reads_again_only_for_its_runs_and_once_per_change(rf: Any) -> None:
    tag = f"shape-{uuid.uuid4().hex[:8]}"
    shape_id = f"tags:{tag}:None"
    store = current().store
    loads = 0

    async def load() -> list[RunRecord]:
        nonlocal loads
        loads += 1
        return await asyncio.to_thread(store.list_runs, tags=[tag], limit=500)

    def admits(run: RunRecord) -> bool:
        return tag in (json.loads(run.tags) or [])

    first = await serve_shape(ShapeRequest("-1", None, False, set()), shape_id, load, None, admits)
    offset, handle = first.headers["electric-offset"], first.headers["electric-handle"]
    polls = [
        asyncio.ensure_future(
            serve_shape(ShapeRequest(offset, handle, True, set()), shape_id, load, None, admits)
        )
        for _ in range(10)
    ]
    changes = feed()
    start = (await changes.changes()).gen
    # runs without the tag come and go: many changes, none of this shape
    others = [await shape_quick.trigger({}, tags=["other"]) for _ in range(5)]
    for h in others:
        await rayflow.runs.wait(h.id)
    await eventually_async(
        lambda: changes.gen >= start + 5, what="the feed to record the other runs' changes"
    )
    await asyncio.sleep(0)  # the polls woke and went back to waiting (same loop)
    assert not any(p.done() for p in polls)
    unrelated_loads = loads
    mine = await shape_quick.trigger({}, tags=[tag])
    answers = await asyncio.wait_for(asyncio.gather(*polls), 60)
    for answer in answers:
        ids = [m["value"]["id"] for m in json.loads(answer.body) if "value" in m]
        assert ids == [mine.id], ids
    # one read for the first request and the polls (same position), none
    # for the other runs' changes; the polls' re-read is shared (a change or
    # two of the new run may land between their wake-ups)
    assert unrelated_loads <= 2, unrelated_loads
    assert loads - unrelated_loads <= 3, loads


async def test_an_idle_input_log_reader_polls_the_store_at_most_twice_a_second(
    rf: Any,
) -> None:
    from serve import core

    handle = await shape_hold.trigger({})
    source = await core.input_source(handle.id, "nothing-yet", 0)
    reads = 0
    read = source._read

    def counted(start: int, limit: int) -> Any:
        nonlocal reads
        reads += 1
        return read(start, limit)

    source._read = counted
    batch = await source.next_batch(3.0)
    assert batch.records == [] and not batch.closed
    assert reads <= 12, reads  # was every 5-50 ms: ~65 in 3 s
    await rayflow.runs.cancel(handle.id)


@task(id="shape-hold")
async def shape_hold(payload: dict) -> str:  # type: ignore[type-arg]
    await asyncio.sleep(120)
    return "held"
