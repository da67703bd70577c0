"""Many runs on one RunActor (issue 21): the runs of an `async def` task share
an actor's event loop, each with its own context, streams, metadata and
inputs; one run's cancel, timeout or failure leaves the others running; a
run that blocks the loop is named; an actor whose loop lags takes no new
runs; an actor killed with many runs on it loses none of their chunks, and
runs killed with their actor again and again are resumed each time.

Every test here runs on a deployment of its own whose pool keeps one warm
actor (`pool_size=1`), so that runs triggered together share it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from conftest import eventually

import rayflow
from rayflow import metadata, streams, task
from rayflow._runtime import connection
from rayflow._runtime.supervisor import MAX_CRASH_RESUMES
from rayflow._status import FINISHED_STATUSES

said = streams.define("shared-said", str)
heard = streams.input("shared-heard", str)
ticks = streams.define("shared-ticks", int)
turns = streams.input("shared-turns", int)


@task(id="shared-probe")
async def probe(payload: dict) -> dict:
    me = rayflow.context().id
    metadata.set("who", me)
    await said.append(f"from {me}")
    got = (await heard.once(timeout_s=60)).unwrap()
    # the other run wrote, was sent and set its metadata meanwhile
    return {
        "pid": os.getpid(),
        "context": rayflow.context().id,
        "metadata": metadata.current(),
        "got": got,
    }


@task(id="shared-ticker")
async def ticker(payload: dict) -> int:
    for i in range(payload["n"]):
        await ticks.append(i)
        await asyncio.sleep(payload["gap"])
    return os.getpid()


@task(id="shared-rounds")
async def rounds(payload: dict) -> list[int]:
    """`chunks` ticks per round, then one message (`.once()`): the run waits
    on its actor for the test to send it."""
    got = []
    for r in range(payload["rounds"]):
        for i in range(payload["chunks"]):
            await ticks.append(100 * r + i)
        got.append((await turns.once(timeout_s=120)).unwrap())
    return got


@task(id="shared-kills-its-actor")
async def kills_its_actor(payload: dict) -> None:
    await ticks.append(0)
    os.kill(os.getpid(), signal.SIGKILL)


@task(id="shared-fails")
async def fails(payload: dict) -> None:
    await asyncio.sleep(0.3)
    raise RuntimeError("this run fails on its own")


@task(id="shared-too-slow", max_duration=1)
async def too_slow(payload: dict) -> None:
    await asyncio.sleep(60)


@task(id="shared-blocks")
async def blocks(payload: dict) -> int:
    """Holds the event loop with blocking calls, `times` times."""
    for _ in range(payload["times"]):
        time.sleep(payload["s"])
        await asyncio.sleep(0.01)
    return os.getpid()


@task(id="shared-leaves-a-thread")
async def leaves_a_thread(payload: dict) -> int:
    threading.Thread(target=time.sleep, args=(3600,), name="left-behind").start()
    return os.getpid()


@task(id="shared-pid")
async def pid_of(payload: dict) -> int:
    return os.getpid()


@pytest.fixture(scope="module")
def one_actor(
    rf: Any, session_store_url_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A deployment whose pool keeps one warm (shared) actor."""
    backend = "postgres" if rf.store.startswith("postgres") else "sqlite"
    rayflow.shutdown()
    rayflow.init(
        store=session_store_url_for(backend),
        namespace=f"rf-test-shared-{backend}-{os.getpid()}",
        data_dir=tmp_path_factory.mktemp(f"shared-{backend}"),
        pool_size=1,
    )
    eventually(lambda: pool_stats()["idle"] == 1, what="the pool's one warm actor")
    yield
    rayflow.shutdown(stop_runs=True)
    rayflow.init(store=rf.store, namespace=rf.namespace, data_dir=rf.data_dir, pool_size=2)


pytestmark = pytest.mark.usefixtures("one_actor")


def pool_stats() -> dict[str, int]:
    return dict(ray.get(connection.current().controller.pool_stats.remote()))


def actor_of(run_id: str) -> Any:
    _, actor = ray.get(connection.current().controller.locate.remote(run_id))
    return actor


def written(run_id: str) -> int:
    """Chunks the run's ticks stream holds so far."""
    listed = streams.list_streams(run_id).result()
    return sum(s["length"] for s in listed if s["key"] == "shared-ticks")


def finished(handle: Any, timeout_s: float = 60) -> Any:
    return rayflow.runs.wait(handle.id).result(timeout_s=timeout_s)


def test_two_runs_on_one_actor_never_see_each_others_context_streams_metadata_or_inputs() -> None:
    a, b = probe.batch_trigger([{}, {}]).result()
    for h in (a, b):  # both wrote their first chunk: both are live
        assert next(iter(said.read(h.id, timeout_s=30))) == f"from {h.id}"
    assert ray.get(actor_of(a.id).pid.remote()) == ray.get(actor_of(b.id).pid.remote())
    heard.send(b.id, "for b").result()
    heard.send(a.id, "for a").result()
    runs = {h.id: finished(h) for h in (a, b)}
    assert runs[a.id].output["pid"] == runs[b.id].output["pid"]
    for h, message in ((a, "for a"), (b, "for b")):
        out = runs[h.id].output
        assert runs[h.id].status == "COMPLETED", runs[h.id].error
        assert out["context"] == h.id
        assert out["metadata"] == {"who": h.id}
        assert out["got"] == message
        assert list(said.read(h.id, timeout_s=5)) == [f"from {h.id}"]
        assert runs[h.id].metadata == {"who": h.id}


def test_cancel_timeout_and_failure_of_one_run_leave_the_others_on_its_actor_running() -> None:
    started = pool_stats()["started"]
    tickers = ticker.batch_trigger([{"n": 30, "gap": 0.1}] * 4).result()
    doomed = ticker.trigger({"n": 1000, "gap": 0.1}).result()
    failing = fails.trigger({}).result()
    slow = too_slow.trigger({}).result()
    eventually(
        lambda: all(written(h.id) > 2 for h in [*tickers, doomed]),
        what="every ticker to tick",
    )
    pid = ray.get(actor_of(doomed.id).pid.remote())
    rayflow.runs.cancel(doomed.id).result()
    assert finished(doomed).status == "CANCELED"
    assert finished(failing).status == "FAILED"
    assert finished(slow).status == "TIMED_OUT"
    for h in tickers:
        run = finished(h)
        assert run.status == "COMPLETED", run.error
        assert run.output == pid, "the tickers shared the actor with the runs that ended"
        assert list(ticks.read(h.id, timeout_s=5)) == list(range(30))
    assert psutil.pid_exists(pid)
    assert pool_stats()["started"] == started, "no run needed a process of its own"


def test_a_run_that_leaves_a_thread_retires_its_actor_once_the_other_runs_there_have_left() -> None:
    steady = ticker.trigger({"n": 40, "gap": 0.1}).result()
    eventually(lambda: written(steady.id) > 0, what="the ticker to tick")
    pid = ray.get(actor_of(steady.id).pid.remote())
    leaver = leaves_a_thread.trigger({}).result()
    assert finished(leaver).output == pid, "the runs should have shared the actor"
    # retired: no new run goes there, but the ticker there goes on
    assert finished(pid_of.trigger({}).result()).output != pid
    assert psutil.pid_exists(pid)
    run = finished(steady)
    assert run.status == "COMPLETED" and run.output == pid, run.error
    assert list(ticks.read(steady.id, timeout_s=5)) == list(range(40))
    eventually(lambda: not psutil.pid_exists(pid), what=f"the retired actor {pid} to stop")


def test_a_run_that_blocks_the_event_loop_is_marked_and_the_others_are_not() -> None:
    quiet = ticker.trigger({"n": 20, "gap": 0.05}).result()
    blocker = blocks.trigger({"times": 1, "s": 0.4}).result()
    assert finished(blocker).status == "COMPLETED"
    assert finished(quiet).status == "COMPLETED"
    blocked_ms = rayflow.runs.retrieve(blocker.id).result().loop_blocked_ms
    assert blocked_ms is not None and 300 <= blocked_ms <= 2000, blocked_ms
    assert rayflow.runs.retrieve(quiet.id).result().loop_blocked_ms is None


def test_an_actor_whose_loop_lags_takes_no_new_run_and_the_pool_starts_another() -> None:
    hog = blocks.trigger({"times": 20, "s": 0.3}).result()
    eventually(lambda: actor_of(hog.id) is not None, what="the hog to start")
    hog_pid = ray.get(actor_of(hog.id).pid.remote())
    eventually(lambda: pool_stats()["lagging"] >= 1, timeout_s=30, what="the pool to see the lag")
    elsewhere = pid_of.trigger({}).result()
    assert finished(elsewhere).output != hog_pid
    assert finished(hog).status == "COMPLETED"
    eventually(lambda: pool_stats()["lagging"] == 0, timeout_s=30, what="the lag to clear")


def test_an_actor_killed_with_many_runs_on_it_resumes_every_run_with_every_chunk_once(
    tmp_path: Path,
) -> None:
    n_runs, n_ticks = 30, 40
    handles = ticker.batch_trigger([{"n": n_ticks, "gap": 0.05}] * n_runs).result()
    eventually(
        lambda: all(written(h.id) >= 5 for h in handles),
        timeout_s=60,
        what="every run to write 5 chunks",
    )
    # one or two actors (the last test may have left a second one warm)
    pids = [ray.get(actor_of(h.id).pid.remote()) for h in handles]
    actors = set(pids)
    assert max(pids.count(p) for p in actors) >= n_runs // 2, pids
    # live readers across the kill
    live: dict[str, list[int]] = {h.id: [] for h in handles[:3]}

    def follow(run_id: str) -> None:
        live[run_id].extend(ticks.read(run_id, timeout_s=120))

    readers = [threading.Thread(target=follow, args=(r,)) for r in live]
    for t in readers:
        t.start()
    for pid in actors:
        os.kill(pid, signal.SIGKILL)
    for h in handles:
        run = finished(h, timeout_s=120)
        assert run.status == "COMPLETED", run.error
        assert run.output not in actors
        assert list(ticks.read(h.id, timeout_s=5)) == list(range(n_ticks)), h.id
    for t in readers:
        t.join(30)
    for run_id, got in live.items():
        assert got == list(range(n_ticks)), run_id


def test_runs_whose_actor_is_killed_again_and_again_resume_each_time_they_got_further() -> None:
    """Found by the chaos soak (benchmarks/chaos.py, run_actor phase): a lost
    actor counted as a crash of every run it hosted, for the run's whole
    life, so the fourth SIGKILL of the actor its runs shared CRASHED all of
    them ("lost its actor 4 times") though each had got further every time.
    Here all the runs share one actor, which is killed MAX_CRASH_RESUMES + 1
    times, each time after every run took a message and wrote a round more;
    every run completes, with every chunk and message exactly once."""
    n_runs, n_rounds, n_chunks = 6, MAX_CRASH_RESUMES + 2, 5
    handles = rounds.batch_trigger([{"rounds": n_rounds, "chunks": n_chunks}] * n_runs).result()
    expected = [100 * r + i for r in range(n_rounds) for i in range(n_chunks)]
    live: dict[str, list[int]] = {h.id: [] for h in handles[:2]}

    def follow(run_id: str) -> None:
        live[run_id].extend(ticks.read(run_id, timeout_s=120))

    readers = [threading.Thread(target=follow, args=(r,)) for r in live]
    for t in readers:
        t.start()
    for r in range(n_rounds - 1):
        eventually(
            lambda r=r: all(written(h.id) == (r + 1) * n_chunks for h in handles),
            timeout_s=60,
            what=f"every run to write round {r}",
        )
        pids = {ray.get(actor_of(h.id).pid.remote()) for h in handles}
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if r % 2:  # else the message is stored while its run has no actor
            eventually(
                lambda pids=pids: all(on_another_actor(h.id, pids) for h in handles),
                timeout_s=60,
                what=f"every run to resume on another actor after kill {r + 1}",
            )
        for h in handles:
            turns.send(h.id, r, idempotency_key=f"{h.id}-{r}").result()
    for h in handles:
        turns.send(h.id, n_rounds - 1).result()
    store = connection.current().store
    for h in handles:
        run = finished(h, timeout_s=60)
        assert run.status == "COMPLETED", run.error
        assert run.output == list(range(n_rounds))
        assert list(ticks.read(h.id, timeout_s=5)) == expected, h.id
        assert len(store.inbox_read(h.id, turns.id, 0, 100)) == n_rounds
    for t in readers:
        t.join(30)
    for run_id, got in live.items():
        assert got == expected, run_id


def test_a_run_that_kills_its_actor_at_the_same_point_every_time_is_crashed() -> None:
    """The other side of resuming runs that get further: a run that dies
    where it died before (its append is a duplicate on replay, no progress)
    is resumed MAX_CRASH_RESUMES times on the shared actors, once more on an
    actor of its own, and CRASHED when it kills that one too."""
    handle = kills_its_actor.trigger({}).result()
    run = finished(handle)
    assert run.status == "CRASHED", run
    times = MAX_CRASH_RESUMES + 2
    assert run.error["message"] == f"run {handle.id} lost its actor without progress {times} times"
    assert list(ticks.read(handle.id, timeout_s=5)) == [0]


def on_another_actor(run_id: str, dead: set[int]) -> bool:
    """Whether the run executes on an actor other than the `dead` ones
    (fails at once when it finished instead)."""
    status, actor = ray.get(connection.current().controller.locate.remote(run_id))
    if status in FINISHED_STATUSES:
        pytest.fail(f"run {run_id} ended {status}: {rayflow.runs.retrieve(run_id).result().error}")
    try:
        return (
            actor is not None
            and ray.get(actor.pid.remote(), timeout=5) not in dead
            and run_id in ray.get(actor.run_ids.remote(), timeout=5)
        )
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_runs_per_actor_must_be_a_whole_number_of_at_least_one(bad: Any) -> None:
    with pytest.raises(rayflow.errors.InvalidArgument, match="runs_per_actor"):
        task(id="shared-bad", runs_per_actor=bad)
