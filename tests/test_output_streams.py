"""Output streams through the public API, against real Ray and real stores."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import ray
from pydantic import BaseModel

import rayflow
from rayflow import errors, streams, task

pytestmark = pytest.mark.usefixtures("rf")


class Token(BaseModel):
    text: str
    index: int


tokens = streams.define("tokens", Token)
numbers = streams.define("numbers", int)
gate = streams.define("gate", str)


@task(id="count-slowly")
async def count_slowly(payload: dict) -> int:
    # waits until the test says go, so a reader can attach before chunk 0
    for i in range(payload["n"]):
        await numbers.append(i)
        if payload.get("delay"):
            await asyncio.sleep(payload["delay"])
    return payload["n"]


@task(id="typed-tokens")
async def typed_tokens(payload: dict) -> dict:
    await tokens.append(Token(text="ok", index=0))
    try:
        await tokens.append({"text": 5, "index": "not a number"})  # type: ignore[arg-type]
    except errors.ValidationError as e:
        rejected = str(e)
    else:
        rejected = ""
    await tokens.append(Token(text="after", index=1))
    return {"rejected": rejected}


def test_reader_started_before_the_first_chunk_sees_every_chunk() -> None:
    handle = count_slowly.trigger({"n": 30, "delay": 0.02}).result()
    # read immediately: the run may not even have started yet
    assert list(numbers.read(handle.id, timeout_s=30)) == list(range(30))
    assert rayflow.runs.retrieve(handle.id).result().status == "COMPLETED"


def test_reader_started_after_the_run_ended_reads_history_and_ends() -> None:
    handle = count_slowly.trigger({"n": 25}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == 25
    assert list(numbers.read(handle.id, timeout_s=5)) == list(range(25))


def test_start_index_in_the_middle() -> None:
    handle = count_slowly.trigger({"n": 40}).result()
    assert list(numbers.read(handle.id, start_index=33, timeout_s=30)) == list(range(33, 40))
    assert list(numbers.read(handle.id, start_index=40, timeout_s=5)) == []


async def test_async_iteration_and_awaitable_trigger() -> None:
    handle = await count_slowly.trigger({"n": 12, "delay": 0.01})
    got = [c async for c in numbers.read(handle.id, timeout_s=30)]
    assert got == list(range(12))


async def test_readers_starting_together_share_one_first_look() -> None:
    """Readers that start together in one process look at the Store in one
    thread hop and a few reads (`reader.first_looks`), each with its own
    answer: a finished run's history from where it starts, an unknown
    run's RunNotFound, a key nobody wrote ending with its run, a live run
    followed to its end."""
    from rayflow._runtime import reader

    done = await count_slowly.trigger({"n": 5})
    assert (await rayflow.runs.wait(done.id)).status == "COMPLETED"
    live = await count_slowly.trigger({"n": 3, "delay": 0.05})

    async def read(run_id: str, start: int = 0, stream: Any = numbers) -> list[Any]:
        return [c async for c in stream.read(run_id, start_index=start, timeout_s=30)]

    looks = reader.first_look_batches
    got = await asyncio.gather(
        read(done.id),
        read(done.id, 3),
        read("run_nosuchrun"),
        read(done.id, stream=gate),
        read(live.id),
        read(done.id, 5),
        return_exceptions=True,
    )
    # one first look for the six; the live run's reader may look once more
    # when its run ends (a last look, shared like a first one)
    assert looks + 1 <= reader.first_look_batches <= looks + 2
    assert got[:2] == [[0, 1, 2, 3, 4], [3, 4]]
    assert isinstance(got[2], errors.RunNotFound) and got[2].run_id == "run_nosuchrun"
    assert got[3:] == [[], [0, 1, 2], []]


async def test_a_reader_of_an_executing_run_follows_the_actor_its_row_names() -> None:
    """A reader whose first look finds the run EXECUTING follows the RunActor
    the run's row names (`locations.named`), without asking the Controller
    where the run is (`locate_many`): a burst of readers saves that round.
    When the run ends, the reader's last look at the Store is one shared
    look (`first_looks`), not reads of its own (five, when the actor had
    let the run go: 1,000 runs ending together, 5,000 thread hops)."""
    from rayflow._runtime import locations, reader

    live = await count_slowly.trigger({"n": 20, "delay": 0.05})
    async for first in numbers.read(live.id, timeout_s=30):
        assert first == 0  # the run is executing: its row names its actor
        break
    locations.forget(live.id)  # as in a process that never met the run
    calls, looks, lone = locations.locate_calls, reader.first_look_batches, reader.lone_reads
    assert [c async for c in numbers.read(live.id, timeout_s=30)] == list(range(20))
    assert locations.locate_calls == calls
    assert reader.lone_reads == lone and reader.first_look_batches - looks <= 2


def test_typed_chunk_is_validated_and_a_wrong_one_stores_nothing() -> None:
    handle = typed_tokens.trigger({}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert "not a valid Token" in run.output["rejected"]
    got = list(tokens.read(handle.id, timeout_s=5))
    assert got == [Token(text="ok", index=0), Token(text="after", index=1)]


def test_append_from_outside_a_task_with_a_wrong_type_raises_before_storing() -> None:
    handle = count_slowly.trigger({"n": 1}).result()
    with pytest.raises(errors.ValidationError):
        numbers.append("seven", target=handle.id).result()  # type: ignore[arg-type]


def test_outside_a_task_a_run_id_is_required() -> None:
    with pytest.raises(errors.OutsideTask, match="target=handle.id"):
        numbers.append(1).result()


def test_unknown_run_raises_run_not_found() -> None:
    with pytest.raises(errors.RunNotFound, match="run_nope"):
        list(numbers.read("run_nope", timeout_s=1))
    with pytest.raises(errors.RunNotFound):
        rayflow.runs.retrieve("run_nope").result()
    with pytest.raises(errors.RunNotFound):
        numbers.append(1, target="run_nope").result()


# -- children piping to parent and root ---------------------------------------

family = streams.define("family", str)


@task(id="grandchild")
async def grandchild(payload: dict) -> str:
    await family.append("grandchild->parent", target="parent")
    await family.append("grandchild->root", target="root")
    return "gc"


@task(id="child")
async def child(payload: dict) -> str:
    await family.append("child->parent", target="parent")
    result = await grandchild.trigger_and_wait({})
    return "child+" + result.unwrap()


@task(id="parent")
async def parent(payload: dict) -> dict:
    await family.append("parent-self")
    result = await child.trigger_and_wait({})
    return {"child": result.unwrap()}


def test_child_runs_pipe_to_parent_and_root() -> None:
    handle = parent.trigger({}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED", run.error
    assert run.output == {"child": "child+gc"}
    got = list(family.read(handle.id, timeout_s=5))
    assert sorted(got) == ["child->parent", "grandchild->root", "parent-self"]
    kids = rayflow.runs.list(parent_id=handle.id).result()
    assert len(kids) == 1 and kids[0].task_id == "child" and kids[0].root_id == handle.id
    grandkids = rayflow.runs.list(parent_id=kids[0].id).result()
    assert grandkids[0].root_id == handle.id
    assert list(family.read(kids[0].id, timeout_s=5)) == ["grandchild->parent"]


# -- several writers, pipes and writers ------------------------------------------

merged = streams.define("merged", str)


async def letters(prefix: str, n: int) -> Any:
    for i in range(n):
        yield f"{prefix}{i}"
        await asyncio.sleep(0)


@task(id="two-writers")
async def two_writers(payload: dict) -> int:
    a = merged.pipe(letters("a", 200))
    local = [v async for v in a.stream]
    async with merged.writer() as w:
        w.merge(letters("b", 200))
        for i in range(100):
            w.write(f"c{i}")
    n = await a.wait_until_complete()
    return n + len(local)


def test_two_writers_into_one_stream_keep_each_writers_order() -> None:
    handle = two_writers.trigger({}).result()
    got = list(merged.read(handle.id, timeout_s=30))
    assert rayflow.runs.retrieve(handle.id).result().output == 400
    assert len(got) == 500 and len(set(got)) == 500
    for prefix, n in (("a", 200), ("b", 200), ("c", 100)):
        assert [g for g in got if g[0] == prefix] == [f"{prefix}{i}" for i in range(n)]


def test_outside_writers_pipe_concurrently_into_a_running_task() -> None:
    handle = count_slowly.trigger({"n": 100, "delay": 0.05}).result()

    async def write_all() -> None:
        p1 = streams.pipe("outside", (f"x{i}" for i in range(300)), target=handle.id)
        p2 = streams.pipe("outside", (f"y{i}" for i in range(300)), target=handle.id)
        await asyncio.gather(p1.wait_until_complete(), p2.wait_until_complete())
        await streams.append("outside", "z", target=handle.id)

    asyncio.run(write_all())
    got = list(streams.read(handle.id, "outside", timeout_s=20))
    assert len(got) == 601
    assert [g for g in got if g[0] == "x"] == [f"x{i}" for i in range(300)]
    assert [g for g in got if g[0] == "y"] == [f"y{i}" for i in range(300)]


def test_a_replayed_write_is_not_duplicated() -> None:
    from rayflow._runtime.writer import ChunkWriter

    handle = count_slowly.trigger({"n": 50, "delay": 0.05}).result()

    async def write_twice() -> list[int | None]:
        first = ChunkWriter(handle.id, "idem", writer_id="w-1")
        seqs = [await first.write(json.dumps(i)) for i in range(5)]
        # the same writer after a crash/retry: same id, numbering from 0 again
        again = ChunkWriter(handle.id, "idem", writer_id="w-1")
        seqs += [await again.write(json.dumps(i)) for i in range(7)]
        return seqs

    seqs = asyncio.run(write_twice())
    assert seqs == [0, 1, 2, 3, 4, None, None, None, None, None, 5, 6]
    rayflow.runs.cancel(handle.id).result()
    assert list(streams.read(handle.id, "idem", timeout_s=5)) == list(range(7))


def test_appending_to_a_finished_run_is_refused() -> None:
    handle = count_slowly.trigger({"n": 1}).result()
    rayflow.runs.wait(handle.id).result()
    with pytest.raises(errors.RunFinished, match="COMPLETED"):
        streams.append("late", "x", target=handle.id).result()


def test_a_closed_stream_ends_its_readers_while_the_run_goes_on() -> None:
    handle = count_slowly.trigger({"n": 200, "delay": 0.05}).result()
    streams.append("notes", "one", target=handle.id).result()
    streams.define("notes").close(target=handle.id).result()
    assert list(streams.read(handle.id, "notes", timeout_s=10)) == ["one"]
    assert rayflow.runs.retrieve(handle.id).result().status == "EXECUTING"
    rayflow.runs.cancel(handle.id).result()


def test_reading_from_another_process_connected_to_the_cluster(rf: Any) -> None:
    handle = count_slowly.trigger({"n": 60, "delay": 0.01}).result()
    script = textwrap.dedent(
        f"""
        import rayflow
        from rayflow import streams
        rayflow.init(address={ray.get_runtime_context().gcs_address!r},
                     store={rf.store!r}, namespace={rf.namespace!r},
                     data_dir={str(rf.data_dir)!r})
        print(sum(1 for _ in streams.read({handle.id!r}, "numbers", timeout_s=30)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "60"


# -- limits -------------------------------------------------------------------

big = streams.define("big", str)


@task(id="too-big")
async def too_big(payload: dict) -> dict:
    chunk = "x" * (payload["mib"] * 1024 * 1024)
    stored = 0
    try:
        while True:
            await big.append(chunk)
            stored += 1
    except errors.StreamTooLarge as e:
        return {"stored": stored, "error": str(e)}


def test_a_stream_past_300_mib_is_refused_clearly() -> None:
    handle = too_big.trigger({"mib": 25}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED", run.error
    # 11 chunks of 25 MiB (+ 2 bytes of JSON quotes) fit in 300 MiB; the 12th does not
    assert run.output["stored"] == 11
    assert "over its limit" in run.output["error"]
    info = {s["key"]: s for s in streams.list_streams(handle.id).result()}
    assert info["big"]["length"] == 11


flood = streams.define("flood", int)
flood_closed = streams.define("flood-closed", int)


@task(id="flow-controlled-writers")
async def flow_controlled_writers(payload: dict) -> dict:
    """A writer and a pipe that produce far faster than chunks commit."""
    most_written = 0
    async with flood.writer(max_in_flight=100) as w:
        for i in range(3000):
            w.write(i)
            if i % 50 == 49:
                await w.drain()
                most_written = max(most_written, w.in_flight)
    pipe: Any = None
    most_piped = 0

    def source() -> Any:
        nonlocal most_piped
        for i in range(3000, 23000):
            if pipe is not None:
                most_piped = max(most_piped, pipe.in_flight)
            yield i

    pipe = flood.pipe(source())
    await pipe.wait_until_complete()
    await flood_closed.close()
    late = flood_closed.writer(max_in_flight=0)
    late.write(1)
    try:
        await late.drain()
    except errors.StreamClosed as e:
        refused = type(e).__name__
    else:
        refused = "nothing"
    return {"written": most_written, "piped": most_piped, "refused": refused}


def test_drain_and_pipes_bound_what_waits_to_be_durable() -> None:
    """A producer faster than the commit used to queue every chunk in memory
    (write → read latency then grows with the flood: peers workload 1)."""
    from rayflow._runtime.pipe import PIPE_BATCH, PIPE_MAX_IN_FLIGHT

    handle = flow_controlled_writers.trigger({}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED", run.error
    assert list(flood.read(handle.id, timeout_s=30)) == list(range(23000))
    assert run.output["written"] <= 100
    # a pipe takes at most one batch past its bound before it waits
    assert run.output["piped"] <= PIPE_MAX_IN_FLIGHT + PIPE_BATCH
    assert run.output["refused"] == "StreamClosed", "drain() raises the error it waited for"
