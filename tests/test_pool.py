"""The elastic pool of RunActors: recycling, isolation between runs, growth
and shrinking, pools per resource shape — on real Ray, both stores.

Runs of a task with `runs_per_actor=1` get a process each (recycled from run
to run); the runs of other `async def` tasks share actors (tests of that in
test_shared_actors.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from conftest import eventually
from pydantic import BaseModel

import rayflow
from rayflow import metadata, step, streams, task
from rayflow._runtime import connection

pytestmark = pytest.mark.usefixtures("rf")

numbers = streams.define("pool-numbers", int)
go = streams.input("pool-go", dict)

#: a module global the runs below write to; each run must start from []
SEEN: list[str] = []


@task(id="pool-whoami")
async def whoami(payload: dict) -> dict:
    SEEN.append(rayflow.context().id)
    return {"pid": os.getpid(), "seen": list(SEEN)}


@task(id="pool-whoami-solo", runs_per_actor=1)
async def whoami_solo(payload: dict) -> dict:
    SEEN.append(rayflow.context().id)
    return {"pid": os.getpid(), "seen": list(SEEN)}


class Ticket(BaseModel):
    """A by-value class (this module travels by value) used as a payload
    type: its TypeAdapter is cached in the RunActor across runs."""

    n: int = 0


@task(id="pool-class-attribute")
async def class_attribute(payload: Ticket) -> dict:  # type: ignore[type-arg]
    # an attribute the class body does not define (loading the class again
    # would reset one it defines): set at run time
    holders = [*getattr(Ticket, "holders", []), rayflow.context().id]
    setattr(Ticket, "holders", holders)  # noqa: B010
    return {"pid": os.getpid(), "holders": holders}


@task(id="pool-whoami-half-cpu", num_cpus=0.5)
async def whoami_half_cpu(payload: dict) -> int:
    return os.getpid()


@task(id="pool-leaves-a-task")
async def leaves_a_task(payload: dict) -> int:
    asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    return os.getpid()


@task(id="pool-leaves-a-thread")
async def leaves_a_thread(payload: dict) -> int:
    threading.Thread(target=time.sleep, args=(3600,), name="left-behind").start()
    return os.getpid()


@task(id="pool-crashes-mid-write")
async def crashes_mid_write(payload: dict) -> int:
    async def numbers_then_boom() -> Any:
        for i in range(5):
            yield i
        raise RuntimeError("the source broke mid-stream")

    await numbers.pipe(numbers_then_boom()).wait_until_complete()
    return os.getpid()


@task(id="pool-writes")
async def writes(payload: dict) -> dict:
    await numbers.append(payload["n"])
    listed = await streams.list_streams(rayflow.context().id)
    return {"pid": os.getpid(), "streams": [s["key"] for s in listed]}


@task(id="pool-killed-mid-run")
async def killed_mid_run(payload: dict) -> int:
    for i in range(6):
        await step("mark", _mark, payload["marks"], i)
        await numbers.append(i)
        if i == 2:
            (await go.once(timeout_s=120)).unwrap()
    return os.getpid()


@task(id="pool-sleeper", runs_per_actor=1)
async def sleeper(payload: dict) -> int:
    await asyncio.sleep(payload["s"])
    return os.getpid()


@task(id="pool-shared-sleeper")
async def shared_sleeper(payload: dict) -> int:
    await asyncio.sleep(payload["s"])
    return os.getpid()


def _mark(path: str, i: int) -> int:
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


def run_output(handle: Any) -> Any:
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED", run.error
    return run.output


def run_actors() -> list[Any]:
    """The deployment's RunActors that Ray knows by name now."""
    namespace = connection.current().settings.namespace
    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == namespace and entry["name"].startswith("rayflow-run-"):
            try:
                found.append(ray.get_actor(entry["name"], namespace=namespace))
            except ValueError:
                continue  # stopped meanwhile
    return found


def claim_rounds() -> dict[int, int]:
    """Per live RunActor process (pid): the claim transactions it made."""
    rounds = {}
    for actor in run_actors():
        try:
            rounds[ray.get(actor.pid.remote())] = ray.get(actor.claim_rounds.remote())
        except ray.exceptions.RayActorError:
            continue  # stopped meanwhile
    return rounds


def follow_once(actor: Any, run_id: str, wait_s: float) -> tuple[float, dict[int, str]]:
    """One reader's `follow_many` call at `actor` for `run_id`'s output:
    (seconds until it ended, what each poll was told other than rows)."""
    began = time.monotonic()
    told: dict[int, str] = {}
    for ref in actor.follow_many.remote([(run_id, "out", 0)], 100, wait_s, uuid.uuid4().hex):
        for i, reply in ray.get(ref)[1].items():
            told[i] = "from_store" if reply.from_store else repr(reply)
    return time.monotonic() - began, told


def pool_stats() -> dict[str, int]:
    return dict(ray.get(connection.current().controller.pool_stats.remote()))


def test_runs_one_after_another_reuse_one_process() -> None:
    run_output(whoami_solo.trigger({}).result())  # its shape's first actor starts
    pids = [run_output(whoami_solo.trigger({}).result())["pid"] for _ in range(4)]
    # the pool hands out the actor that came back last
    assert len(set(pids)) == 1, pids
    assert psutil.pid_exists(pids[0])


def test_runs_one_after_another_start_no_process() -> None:
    run_output(whoami.trigger({}).result())  # the pool may still be starting its actors
    started = pool_stats()["started"]
    pids = {run_output(whoami.trigger({}).result())["pid"] for _ in range(4)}
    assert pool_stats()["started"] == started, "runs on shared actors start no process"
    assert len(pids) <= 2, pids  # the pool's warm actors (pool_size=2)


def test_module_globals_of_one_run_are_not_seen_by_the_next() -> None:
    first_handle = whoami_solo.trigger({}).result()
    first = run_output(first_handle)
    second_handle = whoami_solo.trigger({}).result()
    second = run_output(second_handle)
    assert first["pid"] == second["pid"], "both runs should have used one recycled actor"
    assert first["seen"] == [first_handle.id]
    assert second["seen"] == [second_handle.id]


def test_class_attributes_set_by_one_run_are_not_seen_by_the_next() -> None:
    """Classes of by-value code are the run's own, like its module globals
    (cloudpickle used to hand a recycled actor's next run the class object
    of the last one, which the TypeAdapter cache kept alive)."""
    run_output(class_attribute.trigger({"n": 0}).result())  # the pool may still be starting
    handles, outs = [], []
    for i in range(3):  # one after another
        handles.append(class_attribute.trigger({"n": i}).result())
        outs.append(run_output(handles[-1]))
    assert len({o["pid"] for o in outs}) == 1, "the runs should share one recycled actor"
    assert [o["holders"] for o in outs] == [[h.id] for h in handles]


@pytest.mark.parametrize("leaver", [leaves_a_task, leaves_a_thread], ids=["task", "thread"])
def test_a_run_that_leaves_something_running_retires_its_actor(leaver: Any) -> None:
    pid = run_output(leaver.trigger({}).result())
    eventually(lambda: not psutil.pid_exists(pid), what=f"actor process {pid} to be stopped")
    assert run_output(whoami.trigger({}).result())["pid"] != pid


# a process per run: one actor of its shape, so a retired actor shows as a new pid
@task(id="pool-metadata-then-wait", runs_per_actor=1)
async def metadata_then_wait(payload: dict) -> dict:  # type: ignore[type-arg]
    before = await step("pid", os.getpid)
    metadata.set("phase", "waiting")  # not flushed: its write is pending as the run suspends
    await go.wait(timeout="2m")
    metadata.set("phase", "done")  # ... and as the run ends
    return {"before": before, "after": os.getpid()}


def test_runs_that_touch_metadata_just_before_they_suspend_or_end_reuse_one_process() -> None:
    """The coalesced metadata write pending when a run suspends or ends is
    written then, not left running (it used to retire the actor every time)."""
    run_output(whoami.trigger({}).result())  # the pool may still be starting its actors
    pids: list[int] = []
    for _ in range(3):
        handle = metadata_then_wait.trigger({}).result()
        eventually(
            lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",  # noqa: B023
            what="the run to suspend",
        )
        go.send(handle.id, {}).result()
        out = run_output(handle)
        assert rayflow.runs.retrieve(handle.id).result().metadata == {"phase": "done"}
        pids += [out["before"], out["after"]]
    assert len(set(pids)) == 1, pids


def test_a_run_that_crashed_mid_write_leaves_nothing_to_the_next_run() -> None:
    crashed = crashes_mid_write.trigger({}).result()
    run = rayflow.runs.wait(crashed.id).result()
    assert run.status == "FAILED" and "broke mid-stream" in run.error["message"]
    assert list(numbers.read(crashed.id, timeout_s=5)) == [0, 1, 2, 3, 4]
    after = writes.trigger({"n": 42}).result()
    out = run_output(after)
    assert list(numbers.read(after.id, timeout_s=5)) == [42]
    assert out["streams"] == ["pool-numbers"]


def test_a_recycled_actor_killed_mid_run_resumes_the_run_from_its_journal(
    tmp_path: Path,
) -> None:
    served = {run_output(whoami.trigger({}).result())["pid"] for _ in range(3)}
    marks = str(tmp_path / "marks")
    handle = killed_mid_run.trigger({"marks": marks}).result()
    reader = iter(numbers.read(handle.id, timeout_s=60))
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    _, actor = ray.get(connection.current().controller.locate.remote(handle.id))
    pid = ray.get(actor.pid.remote())
    assert pid in served, "the run should be on an actor that already served runs"
    os.kill(pid, signal.SIGKILL)

    def resumed() -> bool:
        _, a = ray.get(connection.current().controller.locate.remote(handle.id))
        try:
            return a is not None and ray.get(a.pid.remote()) != pid
        except ray.exceptions.RayActorError:
            return False  # the Controller has not noticed the kill yet

    eventually(resumed, timeout_s=60, what="the run to resume on another actor")
    go.send(handle.id, {}).result()
    assert run_output(handle) != pid
    assert list(reader) == [3, 4, 5]
    assert list(numbers.read(handle.id, timeout_s=1)) == [0, 1, 2, 3, 4, 5]
    assert Path(marks).read_text().split() == ["0", "1", "2", "3", "4", "5"]


def test_a_resource_shape_gets_its_own_warm_actor() -> None:
    default_pid = run_output(whoami.trigger({}).result())["pid"]
    first = run_output(whoami_half_cpu.trigger({}).result())
    second = run_output(whoami_half_cpu.trigger({}).result())
    assert first == second, "the second run of the shape should reuse its actor"
    assert first != default_pid


@pytest.fixture
def separate_deployment(rf: Any, store_url_for: Any, tmp_path: Path) -> Iterator[Any]:
    """Re-initialise rayflow on a fresh store with the test's own settings."""
    backend = "postgres" if rf.store.startswith("postgres") else "sqlite"
    made: list[str] = []

    def start(**settings: Any) -> None:
        rayflow.shutdown()
        namespace = f"rf-test-pool-{backend}-{len(made)}-{os.getpid()}"
        made.append(namespace)
        rayflow.init(
            store=store_url_for(backend), namespace=namespace, data_dir=tmp_path, **settings
        )

    yield start
    rayflow.shutdown(stop_runs=True)
    rayflow.init(store=rf.store, namespace=rf.namespace, data_dir=rf.data_dir, pool_size=2)


def test_with_recycling_off_every_run_gets_a_fresh_process(separate_deployment: Any) -> None:
    separate_deployment(pool_size=1, pool_recycle=False)
    first = run_output(whoami.trigger({}).result())["pid"]
    eventually(lambda: not psutil.pid_exists(first), what=f"actor process {first} to be stopped")
    assert run_output(whoami.trigger({}).result())["pid"] != first


def test_a_burst_of_async_runs_shares_one_process(separate_deployment: Any) -> None:
    separate_deployment(pool_size=1)
    eventually(lambda: pool_stats()["idle"] == 1, what="the pool's one warm actor")
    began = time.monotonic()
    handles = shared_sleeper.batch_trigger([{"s": 1.0}] * 40).result()
    pids = {run_output(h) for h in handles}
    assert len(pids) == 1, pids
    stats = pool_stats()
    assert stats["started"] == 1, "no process was started for the burst"
    # placed together on the one actor: one execute_many call, not 40 calls
    assert 1 <= stats["execute_calls"] <= 3, stats
    # they slept at once: 40 one after another would take 40 s
    assert time.monotonic() - began < 20
    # each was created on the actor and started there without a claim
    # transaction (nor the reads that come with one)
    (pid,) = pids
    assert claim_rounds() == {pid: 0}
    # a reader's poll at the actor a new run's row names may come before
    # the run does (the row names it from the INSERT on): it waits for the
    # run there; a poll of a run that left answers `from_store` at once
    actor = next(a for a in run_actors() if ray.get(a.pid.remote()) == pid)
    left = follow_once(actor, handles[0].id, 5.0)
    assert left[0] < 1.0 and left[1] == {0: "from_store"}, left
    unknown = follow_once(actor, "run_" + "0" * 20, 0.5)
    assert unknown[0] >= 0.5 and unknown[1] == {}, unknown
    # its actor killed right after they were placed on it, the runs are
    # resumed elsewhere (claimed there: their rows say EXECUTING on the dead one)
    handles = shared_sleeper.batch_trigger([{"s": 0.2}] * 10).result()
    os.kill(pid, signal.SIGKILL)
    assert {run_output(h) for h in handles}.isdisjoint({pid})
    assert {rayflow.runs.retrieve(h.id).result().attempt_count for h in handles} == {1}
    assert sum(claim_rounds().values()) >= 1


def test_the_pool_grows_under_a_burst_and_shrinks_back_to_its_minimum(
    separate_deployment: Any,
) -> None:
    separate_deployment(pool_size=1, pool_idle_s=2)
    eventually(lambda: pool_stats()["idle"] == 1, what="the pool's one warm actor")
    handles = sleeper.batch_trigger([{"s": 1.0}] * 8).result()
    pids = {run_output(h) for h in handles}
    assert len(pids) >= 2, "runs holding their actor for 1 s should have made the pool grow"
    assert pool_stats()["started"] >= 2
    eventually(
        lambda: pool_stats()["idle"] == 1, timeout_s=30, what="idle actors to stop down to 1"
    )
    eventually(
        lambda: sum(psutil.pid_exists(p) for p in pids) <= 1,
        timeout_s=30,
        what="the extra actor processes to exit",
    )
