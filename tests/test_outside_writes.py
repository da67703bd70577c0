"""Writes from outside a run to many of its streams at once (issue 10): one
process commits its writes to the Store itself, all keys together, and tells
the run's RunActor once per commit — one Ray call per round, not one per
stream — and still keeps each key's order, stores every chunk once, fails
only the writes of a closed stream, and follows a run that suspends or
finishes under them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import ray
from _outside_writers import outside_writers
from conftest import eventually, eventually_async

import rayflow
from rayflow import errors, streams, task
from rayflow._runtime.connection import current
from rayflow.store.base import ChunkWrite

pytestmark = pytest.mark.usefixtures("rf")

go = streams.input("ow-go", dict)
wake = streams.input("ow-wake", dict)


@task(id="ow-hold")
async def hold(payload: dict) -> str:  # type: ignore[type-arg]
    """Keeps its RunActor until told to finish."""
    await go.once(timeout_s=300)
    return "done"


@task(id="ow-suspend")
async def suspend_when_told(payload: dict) -> str:  # type: ignore[type-arg]
    """Live until told, then suspended (no actor) until woken."""
    await go.once(timeout_s=300)
    await wake.wait(timeout="1h")
    return "done"


@task(id="ow-close-then-suspend")
async def close_then_suspend(payload: dict) -> str:  # type: ignore[type-arg]
    await streams.append("shut", "only")
    await streams.define("shut").close()
    await wake.wait(timeout="1h")
    return "done"


def status(run_id: str) -> str:
    return rayflow.runs.retrieve(run_id).result().status


def live_run(task_: Any) -> str:
    handle = task_.trigger({}).result()
    eventually(lambda: status(handle.id) == "EXECUTING", timeout_s=60, what="run executing")
    return str(handle.id)


def read_keys(run_id: str, keys: list[str], timeout_s: float) -> dict[str, list[Any]]:
    """Every key's chunks, the keys read at once: each read ends `timeout_s`
    after its last chunk (a live run's stream), so reading them one after
    another would sit out that wait once per key."""

    async def one(key: str) -> list[Any]:
        return [x async for x in streams.read(run_id, key, timeout_s=timeout_s)]

    async def every() -> list[list[Any]]:
        return await asyncio.gather(*(one(k) for k in keys))

    return dict(zip(keys, asyncio.run(every()), strict=True))


def actor_of(run_id: str) -> Any:
    _, actor = ray.get(current().controller.locate.remote(run_id))
    assert actor is not None
    return actor


def test_many_keys_written_at_once_each_keep_their_order_and_every_chunk_once() -> None:
    run_id = live_run(hold)
    keys = [f"k{i}" for i in range(12)]

    async def by_writer(key: str) -> None:
        async with streams.define(key).writer(target=run_id) as w:
            for i in range(150):
                w.write(f"w{i}")
                if i % 16 == 0:
                    await w.drain()

    async def by_append(key: str) -> None:
        for i in range(40):
            await streams.append(key, f"a{i}", target=run_id)

    async def by_pipe(key: str) -> None:
        pipe = streams.define(key).pipe((f"p{i}" for i in range(100)), target=run_id)
        assert await pipe.wait_until_complete() == 100

    async def flood() -> None:
        await asyncio.gather(*(f(k) for k in keys for f in (by_writer, by_append, by_pipe)))

    asyncio.run(flood())
    for key, got in read_keys(run_id, keys, timeout_s=0.5).items():
        assert len(got) == 290 and len(set(got)) == 290, key
        for prefix, n in (("w", 150), ("a", 40), ("p", 100)):
            assert [g for g in got if g[0] == prefix] == [f"{prefix}{i}" for i in range(n)], key
    go.send(run_id, {}).result()
    assert rayflow.runs.wait(run_id).result().status == "COMPLETED"


def test_one_process_writing_many_keys_of_a_run_makes_one_actor_call_per_round() -> None:
    """50 keys written at once, 4 times: per-stream calls would be 200."""
    run_id = live_run(hold)
    actor = actor_of(run_id)
    before = ray.get(actor.published_calls.remote())

    async def rounds() -> None:
        for r in range(4):
            seqs = await asyncio.gather(
                *(streams.append(f"n{k}", r, target=run_id) for k in range(50))
            )
            assert seqs == [r] * 50

    asyncio.run(rounds())
    # the actor is told after each commit, in the background
    eventually(lambda: ray.get(actor.published_calls.remote()) - before >= 1, what="actor told")
    calls = ray.get(actor.published_calls.remote()) - before
    # a round's 50 writes may leave in two or three commits (the first leaves
    # at once) and each commit tells the actor once, coalesced while a call
    # is in flight: a handful per round, never one per stream
    assert 1 <= calls <= 20, calls
    for key, got in read_keys(run_id, [f"n{k}" for k in range(50)], timeout_s=0.3).items():
        assert got == [0, 1, 2, 3], key
    go.send(run_id, {}).result()
    rayflow.runs.wait(run_id).result()


def test_one_process_writing_many_runs_of_one_actor_makes_one_call_per_round() -> None:
    """Runs sharing a RunActor are told together: one call per commit to each
    actor, not one per run (16 runs, 3 rounds). 16, so that the busiest actor
    hosts at least 4 of them however many actors earlier tests left idle in
    the pool (up to 5; they stay `pool_idle_s`)."""
    runs = [live_run(hold) for _ in range(16)]
    actor_ids = {run_id: actor_of(run_id)._actor_id for run_id in runs}
    actors = {actor_of(run_id)._actor_id: actor_of(run_id) for run_id in runs}
    on = {a: [r for r in runs if actor_ids[r] == a] for a in actors}
    busiest = max(on, key=lambda a: len(on[a]))
    actor, its_runs = actors[busiest], on[busiest]
    assert len(its_runs) >= 4, on

    def told(length: int) -> bool:  # every run's actor holds the round in its tail
        return all(
            ray.get(actors[actor_ids[r]].stream_stats.remote(r)).get("m", {}).get("length")
            == length
            for r in runs
        )

    async def one_round(r: int) -> None:
        got = await asyncio.gather(*(streams.append("m", r, target=x) for x in runs))
        assert got == [r] * len(runs)

    calls = []
    for r in range(3):
        before = ray.get(actor.published_calls.remote())
        asyncio.run(one_round(r))
        eventually(lambda r=r: told(r + 1), what="actors told")
        calls.append(ray.get(actor.published_calls.remote()) - before)
    # a round leaves in one or two commits, each told to the actor once for
    # all its runs; one call per run would be >= 4
    assert all(1 <= n < len(its_runs) for n in calls), (calls, len(its_runs))
    for run_id in runs:
        assert list(streams.read(run_id, "m", timeout_s=0.3)) == [0, 1, 2]
        go.send(run_id, {}).result()
    for run_id in runs:
        assert rayflow.runs.wait(run_id).result().status == "COMPLETED"


def test_a_flood_of_outside_commits_tells_the_actor_once_per_gap() -> None:
    """Each append awaited before the next: one commit each, back to back,
    while the actor's calls are out. Told once per call in flight, the actor
    took a call every round trip (~2 ms here); under a flood calls begin
    `TELL_GAP_S` apart, carrying every commit since the last. Every chunk
    still reaches the actor's readers once, in order."""
    from rayflow._runtime.run_tells import TELL_GAP_S

    run_id = live_run(hold)
    actor = actor_of(run_id)
    before = ray.get(actor.published_calls.remote())

    async def flood() -> float:
        t0 = time.perf_counter()
        for i in range(400):
            assert await streams.append("flood", i, target=run_id) == i
        return time.perf_counter() - t0

    try:
        took = asyncio.run(flood())
        assert list(streams.read(run_id, "flood", timeout_s=0.5)) == list(range(400))
        calls = ray.get(actor.published_calls.remote()) - before
        assert calls <= took / TELL_GAP_S + 3, (calls, took)
    finally:  # a failure here must not leave a live run on a shared actor
        go.send(run_id, {}).result()
    assert rayflow.runs.wait(run_id).result().status == "COMPLETED"


async def _closed_and_open(run_id: str) -> list[Any]:
    return await asyncio.gather(
        streams.append("open-a", "a", target=run_id),
        streams.append("shut", "late", target=run_id),
        streams.append("open-b", "b", target=run_id),
        streams.append("shut", "later", target=run_id),
        streams.append("open-a", "a2", target=run_id),
        return_exceptions=True,
    )


def test_a_closed_stream_fails_only_its_own_writes_in_a_shared_call() -> None:
    run_id = live_run(hold)
    streams.append("shut", "only", target=run_id).result()
    streams.define("shut").close(target=run_id).result()
    actor = actor_of(run_id)
    before = ray.get(actor.published_calls.remote())
    a, late, b, later, a2 = asyncio.run(_closed_and_open(run_id))
    # one commit carried them all, and the actor heard of it in one call
    eventually(lambda: ray.get(actor.published_calls.remote()) - before == 1, what="actor told")
    assert isinstance(late, errors.StreamClosed) and late.stream == "shut"
    assert isinstance(later, errors.StreamClosed)
    assert (a, b, a2) == (0, 0, 1)
    assert list(streams.read(run_id, "shut", timeout_s=0.3)) == ["only"]
    assert list(streams.read(run_id, "open-a", timeout_s=0.3)) == ["a", "a2"]
    assert list(streams.read(run_id, "open-b", timeout_s=0.3)) == ["b"]
    go.send(run_id, {}).result()
    assert rayflow.runs.wait(run_id).result().status == "COMPLETED"


def test_a_closed_stream_of_a_suspended_run_fails_only_its_own_writes() -> None:
    """No actor: the writes of every key go to the Store together."""
    handle = close_then_suspend.trigger({}).result()
    eventually(lambda: status(handle.id) == "WAITING", timeout_s=60, what="run suspended")
    a, late, b, later, a2 = asyncio.run(_closed_and_open(handle.id))
    assert isinstance(late, errors.StreamClosed) and late.stream == "shut"
    assert isinstance(later, errors.StreamClosed)
    assert (a, b, a2) == (0, 0, 1)
    wake.send(handle.id, {}).result()
    assert rayflow.runs.wait(handle.id).result().status == "COMPLETED"
    assert list(streams.read(handle.id, "shut", timeout_s=0.3)) == ["only"]
    assert list(streams.read(handle.id, "open-a", timeout_s=0.3)) == ["a", "a2"]
    assert list(streams.read(handle.id, "open-b", timeout_s=0.3)) == ["b"]


KEYS = [f"f{i}" for i in range(6)]


async def _flood_round(run_id: str, r: int) -> list[Any]:
    return await asyncio.gather(
        *(streams.append(k, r, target=run_id) for k in KEYS), return_exceptions=True
    )


def test_a_run_that_suspends_mid_flood_takes_every_write_through_the_store() -> None:
    run_id = live_run(suspend_when_told)

    async def flood() -> int:
        r = 0
        while r < 5:  # some rounds while the run is live
            assert await _flood_round(run_id, r) == [r] * len(KEYS)
            r += 1
        await go.send(run_id, {})
        suspended_at: int | None = None

        async def suspended() -> bool:
            return (await rayflow.runs.retrieve(run_id)).status == "WAITING"

        while suspended_at is None or r < suspended_at + 5:
            assert await _flood_round(run_id, r) == [r] * len(KEYS)
            r += 1
            if suspended_at is None and await suspended():
                suspended_at = r
            assert r < 5000, "the run never suspended"
        await eventually_async(suspended, what="run suspended")
        return r

    rounds = asyncio.run(flood())
    # a suspended run's streams are read from the Store
    assert read_keys(run_id, KEYS, timeout_s=0.3) == {k: list(range(rounds)) for k in KEYS}
    wake.send(run_id, {}).result()
    assert rayflow.runs.wait(run_id).result().status == "COMPLETED"
    assert read_keys(run_id, KEYS, timeout_s=0.3) == {k: list(range(rounds)) for k in KEYS}


def test_a_run_that_finishes_mid_flood_refuses_later_writes_with_run_finished() -> None:
    """Every round also writes a key of its own, new to the run (its stream
    is still being loaded when the run may end): a write is acknowledged and
    stored, or refused with RunFinished — never StreamClosed."""
    run_id = live_run(hold)
    acknowledged: dict[str, list[int]] = {}
    refused: list[BaseException] = []

    async def flood() -> int:
        r = 0
        while True:
            keys = [*KEYS, f"fresh{r}"]
            results = await asyncio.gather(
                *(streams.append(k, r, target=run_id) for k in keys), return_exceptions=True
            )
            for k, result in zip(keys, results, strict=True):
                if isinstance(result, BaseException):
                    refused.append(result)
                else:
                    # no write of a key is acknowledged after one was refused
                    assert not any(
                        e.stream == k for e in refused if isinstance(e, errors.RayflowError)
                    )
                    acknowledged.setdefault(k, []).append(r)
            if all(isinstance(x, BaseException) for x in results):
                return r
            r += 1
            if r == 5:
                await go.send(run_id, {})
            assert r < 5000, "the run never finished"

    last = asyncio.run(flood())
    assert refused and all(isinstance(e, errors.RunFinished) for e in refused), refused
    assert {e.stream for e in refused if isinstance(e, errors.RunFinished)} >= {
        *KEYS,
        f"fresh{last}",
    }
    assert rayflow.runs.retrieve(run_id).result().status == "COMPLETED"
    for k in KEYS:
        assert acknowledged[k][:5] == list(range(5))
    # acknowledged = durable: exactly the acknowledged writes are stored
    for k in [*KEYS, *(f"fresh{r}" for r in range(last + 1))]:
        assert list(streams.read(run_id, k, timeout_s=5)) == acknowledged.get(k, []), k


@task(id="ow-interleave")
async def interleave(payload: dict) -> int:  # type: ignore[type-arg]
    """Writes its own chunks to "mix" while someone outside writes there too."""
    await go.once(timeout_s=300)
    for i in range(payload["n"]):
        await streams.append("mix", f"in{i}")
        await asyncio.sleep(0.004)
    await wake.once(timeout_s=300)
    return int(payload["n"])


async def test_a_follower_gets_inside_and_outside_writes_to_one_stream_once_each_in_order() -> None:
    """The run commits its writes through its RunActor, the driver commits
    its own straight to the Store and tells the actor afterwards: a reader
    following the actor gets every chunk once, in index order, with each
    writer's order kept — the actor's tail skips what it already holds and
    fills a gap from the Store."""
    n = 150
    handle = await interleave.trigger({"n": n})

    async def executing() -> bool:
        return (await rayflow.runs.retrieve(handle.id)).status == "EXECUTING"

    await eventually_async(executing, timeout_s=60, what="run executing")

    async def follow() -> list[str]:
        got: list[str] = []
        async for x in streams.read(handle.id, "mix", timeout_s=30):
            got.append(x)
            if len(got) == 2 * n:
                break
        return got

    reader = asyncio.create_task(follow())
    await go.send(handle.id, {})
    for i in range(n):
        await streams.append("mix", f"out{i}", target=handle.id)
        await asyncio.sleep(0.004)
    got = await asyncio.wait_for(reader, 60)
    assert [x for x in got if x.startswith("in")] == [f"in{i}" for i in range(n)]
    assert [x for x in got if x.startswith("out")] == [f"out{i}" for i in range(n)]
    stored = [x async for x in streams.read(handle.id, "mix", timeout_s=0.3)]
    assert got == stored  # the follower saw the Store's order, nothing twice
    await wake.send(handle.id, {})
    assert (await rayflow.runs.wait(handle.id)).status == "COMPLETED"


async def test_a_chunk_its_run_actor_was_never_told_of_reaches_a_follower_late_not_never() -> None:
    """An outside writer commits to the Store, then tells the RunActor; a
    writer that dies in between leaves the actor unaware. A reader already
    following the actor finds the chunk in the Store after one long poll."""
    handle = await hold.trigger({})

    async def executing() -> bool:
        return (await rayflow.runs.retrieve(handle.id)).status == "EXECUTING"

    await eventually_async(executing, timeout_s=60, what="run executing")
    await streams.append("told", "first", target=handle.id)
    _, actor = await current().controller.locate.remote(handle.id)

    async def actor_told() -> bool:
        return "told" in await actor.stream_stats.remote(handle.id)

    # the RunActor knows the stream (told of "first"), so it answers the
    # reader from its own tail, not from the Store
    await eventually_async(actor_told, what="the RunActor told of the first chunk")
    following = asyncio.Event()

    async def follow() -> list[str]:
        got: list[str] = []
        async for x in streams.read(handle.id, "told", timeout_s=60):
            got.append(x)
            following.set()  # it has caught up: it waits on the RunActor now
            if len(got) == 2:
                break
        return got

    reader = asyncio.create_task(follow())
    await asyncio.wait_for(following.wait(), 30)
    # the writer's commit, without the telling that would follow it
    store = current().store
    await asyncio.to_thread(
        store.append_chunks, handle.id, "told", [ChunkWrite('"silent"')], 1 << 20
    )
    assert await asyncio.wait_for(reader, 30) == ["first", "silent"]
    await go.send(handle.id, {})
    assert (await rayflow.runs.wait(handle.id)).status == "COMPLETED"


async def test_a_follower_misses_no_chunk_of_two_processes_writing_one_stream(rf: Any) -> None:
    """Two writers outside the run commit to one stream, each telling the
    RunActor of its commits (several commits per call while one is in
    flight): between a call's rows lie the other writer's. A reader already
    following the actor gets every acknowledged chunk once, in the Store's
    order — none skipped at the holes. Neither writer asks the Controller
    where the run is."""
    with outside_writers(rf, 2) as writers:
        handle = await hold.trigger({})

        async def executing() -> bool:
            return (await rayflow.runs.retrieve(handle.id)).status == "EXECUTING"

        await eventually_async(executing, timeout_s=60, what="run executing")
        await streams.append("many", "start", target=handle.id)
        following = asyncio.Event()

        async def follow() -> list[str]:
            got: list[str] = []
            async for x in streams.read(handle.id, "many", timeout_s=60):
                following.set()
                if x == "end":
                    break
                got.append(x)
            return got

        reader = asyncio.create_task(follow())
        await asyncio.wait_for(following.wait(), 30)
        for acknowledged, refused in await asyncio.gather(
            *(
                w.append.remote(handle.id, "many", [f"{name}{i}" for i in range(450)], coroutines=3)
                for name, w in zip("AB", writers, strict=True)
            )
        ):
            assert len(acknowledged) == 450 and not refused, refused
        await streams.append("many", "end", target=handle.id)
        got = await asyncio.wait_for(reader, 60)
        stored = [x async for x in streams.read(handle.id, "many", timeout_s=0.3)]
        assert len(stored) == 2 + 2 * 3 * 150
        missing = [x for x in stored[:-1] if x not in set(got)]
        assert got == stored[:-1], f"{len(missing)} acknowledged chunks skipped: {missing[:10]}"
        # each writer process learned the run's RunActor from its first
        # commit (the run's row names it): no Controller call before telling
        # it (2-6 ms of a new stream's first chunk)
        assert [await w.controller_locates.remote() for w in writers] == [0, 0]
        await go.send(handle.id, {})
        assert (await rayflow.runs.wait(handle.id)).status == "COMPLETED"


def test_a_writer_whose_event_loop_ends_at_once_still_tells_the_run_actor() -> None:
    """A script appends and its event loop ends (`asyncio.run` returns) as
    soon as the append is acknowledged: telling the RunActor, which follows
    the commit in the background, must not die with that loop (the run's
    followers would wait a whole long poll for the chunk)."""
    run_id = live_run(hold)
    actor = actor_of(run_id)
    before = ray.get(actor.published_calls.remote())

    async def append_once() -> int:
        return int(await streams.append("brief", "x", target=run_id))

    assert asyncio.run(append_once()) == 0
    eventually(lambda: ray.get(actor.published_calls.remote()) > before, what="actor told")
    go.send(run_id, {}).result()
    rayflow.runs.wait(run_id).result()


async def test_a_replayed_write_batched_with_a_refused_one_is_acknowledged_as_a_duplicate() -> None:
    """One commit carries a writer's retry of a chunk already stored and
    another writer's new chunk, both to a stream closed since: the new one
    is refused with StreamClosed, the retry answers as the first did
    (stored before: a duplicate) — one refusal must not fail the other."""
    from rayflow._runtime.run_appender import process_appender

    handle = await hold.trigger({})

    async def executing() -> bool:
        return (await rayflow.runs.retrieve(handle.id)).status == "EXECUTING"

    await eventually_async(executing, timeout_s=60, what="run executing")
    appender = process_appender()

    def write(writer_id: str, text: str) -> list[ChunkWrite]:
        return [ChunkWrite(f'"{text}"', writer_id=writer_id, writer_seq=0)]

    assert await appender.submit(handle.id, "shut", write("w1", "first"), True) == 0
    await streams.define("shut").close(target=handle.id)
    # submitted in one go: they leave in one commit
    retried = appender.submit(handle.id, "shut", write("w1", "first"), True)
    new = appender.submit(handle.id, "shut", write("w2", "late"), True)
    results = await asyncio.gather(retried, new, return_exceptions=True)
    assert results[0] is None, results
    assert isinstance(results[1], errors.StreamClosed), results
    assert [x async for x in streams.read(handle.id, "shut", timeout_s=0.3)] == ["first"]
    await go.send(handle.id, {})
    assert (await rayflow.runs.wait(handle.id)).status == "COMPLETED"
