"""Input streams, suspension and replay through the public API, on real Ray."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from conftest import eventually, run_actor_pid
from pydantic import BaseModel
from ray.util import state as ray_state

import rayflow
from rayflow import errors, step, streams, task
from rayflow._runtime import connection
from rayflow._runtime.inbox import actor_name as inbox_actor_name

pytestmark = pytest.mark.usefixtures("rf")


class Approval(BaseModel):
    approved: bool
    reviewer: str


approval = streams.input("approval", Approval)
messages = streams.input("messages", str)
go = streams.input("go", dict)
log = streams.define("log", str)


def count_lines(path: str) -> int:
    p = Path(path)
    return len(p.read_text().splitlines()) if p.exists() else 0


def mark(path: str, text: str) -> str:
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


@task(id="collector")
async def collector(payload: dict) -> list[str]:
    # wait for the test's go, so messages pile up in the buffer first
    (await go.once(timeout_s=60)).unwrap()
    got: list[str] = []
    sub = messages.on(got.append)
    await log.append(f"peek={messages.peek()}")
    while "stop" not in got:
        await asyncio.sleep(0.02)
    sub.off()
    return got


def test_buffered_messages_reach_a_late_handler_first_and_in_order() -> None:
    handle = collector.trigger({}).result()
    for text in ("one", "two", "three"):
        messages.send(handle.id, text).result()
    go.send(handle.id, {}).result()
    eventually(lambda: list(log.read(handle.id, timeout_s=0.5)), what="the peek line")
    messages.send(handle.id, "four").result()
    messages.send(handle.id, "stop").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == ["one", "two", "three", "four", "stop"]
    assert list(log.read(handle.id, timeout_s=1)) == ["peek=three"]


def test_send_rejects_bad_input_and_stores_nothing() -> None:
    handle = collector.trigger({}).result()
    with pytest.raises(errors.ValidationError, match="approval"):
        approval.send(handle.id, {"approved": "maybe"}).result()
    with pytest.raises(errors.PayloadTooLarge, match="limit"):
        messages.send(handle.id, "x" * (1024 * 1024 + 1)).result()
    with pytest.raises(errors.RunNotFound, match="run_missing"):
        messages.send("run_missing", "hello").result()
    assert approval.messages(handle.id).result() == []
    assert messages.messages(handle.id).result() == []
    rayflow.runs.cancel(handle.id).result()
    with pytest.raises(errors.RunFinished, match="CANCELED; input can only be sent"):
        messages.send(handle.id, "late").result()
    assert messages.messages(handle.id).result() == []


@task(id="once-peek")
async def once_peek(payload: dict) -> dict:
    first = await messages.once(timeout_s=0.3)
    await log.append("first once returned")
    try:
        first.unwrap()
        timed_out = False
    except errors.WaitTimeout:
        timed_out = True
    (await go.once(timeout_s=60)).unwrap()
    second = await messages.once(timeout_s=60)
    return {
        "timed_out": timed_out and not first.ok,
        "second": second.unwrap(),
        "peek": messages.peek(),
    }


def test_once_times_out_then_takes_the_oldest_and_peek_sees_the_latest() -> None:
    handle = once_peek.trigger({}).result()
    eventually(
        lambda: list(log.read(handle.id, timeout_s=0.2)), what="the first once() to time out"
    )
    messages.send(handle.id, "a").result()
    messages.send(handle.id, "b").result()
    go.send(handle.id, {}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == {"timed_out": True, "second": "a", "peek": "b"}


# -- wait: suspension, revival, replay ------------------------------------------


whoami = streams.define("whoami", dict)


@task(id="publish-post")
async def publish_post(payload: dict) -> dict:
    # which Ray actor and process execute this segment of the run
    await whoami.append({"actor": ray.get_runtime_context().get_actor_name(), "pid": os.getpid()})
    draft = await step("prepare", mark, payload["marks"], "prepared")
    await log.append("draft ready")
    result = await approval.wait(timeout=payload.get("timeout", "7d"))
    await log.append("decided")
    if not result.ok:
        return {"draft": draft, "timed_out": True}
    return {"draft": draft, "approved": result.unwrap().approved, "by": result.output.reviewer}


def test_wait_holds_no_actor_while_suspended_and_resumes_after_send(tmp_path: Path) -> None:
    marks = str(tmp_path / "marks")
    handle = publish_post.trigger({"marks": marks}).result()
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
        what="the run to suspend",
    )
    # no Ray actor and no worker process holds the run
    assert run_actor_pid(handle.id) is None
    record = connection.current().store.get_run(handle.id)
    assert record is not None and record.actor_name is None
    assert handle.id not in ray.get(connection.current().controller.live_runs.remote())
    first = list(whoami.read(handle.id, timeout_s=1))
    assert len(first) == 1
    address = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
    actors = ray_state.list_actors(
        address=address, filters=[("name", "=", first[0]["actor"])], detail=True
    )
    # its actor went back to the pool: alive, but executing no run
    assert [a.state for a in actors] == ["ALIVE"], actors
    pooled = ray.get_actor(first[0]["actor"], namespace=connection.current().settings.namespace)
    assert handle.id not in ray.get(pooled.run_ids.remote())
    assert list(log.read(handle.id, timeout_s=1)) == ["draft ready"]

    approval.send(handle.id, {"approved": True, "reviewer": "alice"}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == {"draft": "prepared", "approved": True, "by": "alice"}
    # replay did not run the step again nor duplicate the chunk written before
    assert count_lines(marks) == 1
    assert list(log.read(handle.id, timeout_s=1)) == ["draft ready", "decided"]
    # the revival replayed the whoami append too, and it was dropped as a duplicate
    assert list(whoami.read(handle.id, timeout_s=1)) == first


def test_a_message_sent_before_the_wait_is_returned_at_once(tmp_path: Path) -> None:
    handle = publish_post.trigger({"marks": str(tmp_path / "m")}).result()
    approval.send(handle.id, {"approved": False, "reviewer": "bob"}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output["approved"] is False and run.output["by"] == "bob"


def test_wait_timeout_revives_the_run_with_ok_false(tmp_path: Path) -> None:
    marks = str(tmp_path / "marks")
    handle = publish_post.trigger({"marks": marks, "timeout": "1s"}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == {"draft": "prepared", "timed_out": True}
    assert count_lines(marks) == 1


def test_a_waits_deadline_survives_a_controller_restart(tmp_path: Path) -> None:
    handle = publish_post.trigger({"marks": str(tmp_path / "m"), "timeout": "3s"}).result()
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
        what="the run to suspend",
    )
    controller = connection.current().controller
    ray.kill(controller, no_restart=False)
    eventually(lambda: _answers(controller), timeout_s=60, what="the Controller to return")
    run = rayflow.runs.wait(handle.id).result()
    assert run.output["timed_out"] is True


def test_a_restarted_controller_resumes_a_waiting_run_whose_waitpoint_was_resolved(
    tmp_path: Path,
) -> None:
    """Recovery (read from the Store a page at a time) launches a WAITING run
    whose waitpoint an older version resolved without queueing the run."""
    handle = publish_post.trigger({"marks": str(tmp_path / "m"), "timeout": "10m"}).result()
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
        what="the run to suspend",
    )
    store = connection.current().store
    with store._tx() as c:  # type: ignore[attr-defined]  # what an older version left
        c.execute("UPDATE waitpoints SET status = 'TIMED_OUT' WHERE run_id = ?", (handle.id,))
    controller = connection.current().controller
    ray.kill(controller, no_restart=False)
    eventually(lambda: _answers(controller), timeout_s=60, what="the Controller to return")
    run = rayflow.runs.wait(handle.id).result()
    assert run.output["timed_out"] is True


def _answers(controller: Any) -> bool:
    try:
        return bool(ray.get(controller.start.remote(), timeout=5))
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


@task(id="keyed-wait", retry=rayflow.RetryPolicy(max_attempts=2, min_delay_s=0.05))
async def keyed_wait(payload: dict) -> dict:
    result = await approval.wait(timeout="1m", idempotency_key="review-1")
    attempt = rayflow.context().attempt
    if attempt == 1:
        raise RuntimeError("fail after the approval, to retry")
    return {"attempt": attempt, "by": result.unwrap().reviewer}


def test_idempotency_key_gives_a_retried_attempt_the_same_result() -> None:
    handle = keyed_wait.trigger({}).result()
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
        what="the run to suspend",
    )
    approval.send(handle.id, {"approved": True, "reviewer": "carol"}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == {"attempt": 2, "by": "carol"}
    assert len(approval.messages(handle.id).result()) == 1


# -- crash: SIGKILL the worker mid-run ---------------------------------------------

progress = streams.define("progress", int)


@task(id="crash-me")
async def crash_me(payload: dict) -> int:
    total = 0
    for i in range(payload["steps"]):
        total += await step(f"work-{i}", mark, payload["marks"], f"step {i}") and 1
        await progress.append(i)
        if i == payload["pause_at"]:
            (await go.once(timeout_s=120)).unwrap()
    now = await rayflow.now()
    await progress.append(-1 if now <= 0 else 1000)
    return total


def test_a_killed_worker_resumes_from_its_journal_without_repeats(tmp_path: Path) -> None:
    marks = str(tmp_path / "marks")
    handle = crash_me.trigger({"steps": 8, "pause_at": 4, "marks": marks}).result()
    reader = iter(progress.read(handle.id, timeout_s=60))
    assert [next(reader) for _ in range(5)] == [0, 1, 2, 3, 4]
    pid = eventually(lambda: run_actor_pid(handle.id), what="the run's worker pid")
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: (run_actor_pid(handle.id) or pid) != pid, timeout_s=60, what="a new actor")
    go.send(handle.id, {}).result()
    rest = list(reader)
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == 8
    assert rest == [5, 6, 7, 1000]
    assert list(progress.read(handle.id, timeout_s=1)) == [0, 1, 2, 3, 4, 5, 6, 7, 1000]
    assert count_lines(marks) == 8  # no finished step ran twice


# -- the inbox: durability and senders inside tasks ------------------------------


def test_an_inbox_that_dies_loses_no_acknowledged_message() -> None:
    handle = collector.trigger({}).result()
    for i in range(10):
        messages.send(handle.id, f"m{i}").result()
    inbox = ray.get_actor(
        inbox_actor_name("messages", handle.id),
        namespace=connection.current().settings.namespace,
    )
    ray.kill(inbox, no_restart=False)
    for i in range(10, 20):
        messages.send(handle.id, f"m{i}").result()
    go.send(handle.id, {}).result()
    messages.send(handle.id, "stop").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == [f"m{i}" for i in range(20)] + ["stop"]


@task(id="sender")
async def sender(payload: dict) -> str:
    await messages.send(payload["to"], "from a task")
    await messages.send(payload["to"], "stop")
    return "sent"


def test_a_task_sends_to_another_run() -> None:
    target = collector.trigger({}).result()
    go.send(target.id, {}).result()
    assert (
        rayflow.runs.wait(sender.trigger({"to": target.id}).result().id).result().output == "sent"
    )
    assert rayflow.runs.wait(target.id).result().output == ["from a task", "stop"]


@task(id="handler-after-revival")
async def handler_after_revival(payload: dict) -> list[str]:
    seen: list[str] = []
    messages.on(seen.append)
    await approval.wait(timeout="1m")
    # the handler's earlier deliveries are replayed before the wait returns
    while "stop" not in seen:
        await asyncio.sleep(0.02)
    return seen


def test_on_deliveries_replay_at_the_point_they_were_observed() -> None:
    handle = handler_after_revival.trigger({}).result()
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
        what="the run to suspend",
    )
    messages.send(handle.id, "while-suspended").result()
    approval.send(handle.id, {"approved": True, "reviewer": "d"}).result()
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "EXECUTING",
        what="the revival",
    )
    messages.send(handle.id, "stop").result()
    assert rayflow.runs.wait(handle.id).result().output == ["while-suspended", "stop"]


@task(id="peeker")
async def peeker(payload: dict) -> dict:
    before = messages.peek()
    await log.append("ready")
    taken = (await messages.once(timeout_s=60)).unwrap()
    return {"before": before, "taken": taken, "after": messages.peek()}


def test_peek_before_and_after_a_send() -> None:
    handle = peeker.trigger({}).result()
    eventually(lambda: list(log.read(handle.id, timeout_s=0.2)), what="the task to peek")
    messages.send(handle.id, "x").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == {"before": None, "taken": "x", "after": "x"}


@task(id="waits-in-a-row")
async def waits_in_a_row(payload: dict) -> list[str]:
    got = []
    for _ in range(payload["n"]):
        got.append((await messages.wait(timeout="1m")).unwrap())
    return got


def test_two_waits_in_a_row_on_one_stream_each_suspend() -> None:
    handle = waits_in_a_row.trigger({"n": 2}).result()
    for text in ("first", "second"):
        eventually(
            lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
            what=f"the run to suspend before {text!r}",
        )
        messages.send(handle.id, text).result()
    assert rayflow.runs.wait(handle.id).result().output == ["first", "second"]


def test_sends_racing_suspensions_lose_nothing_and_repeat_nothing() -> None:
    import random

    rng = random.Random(7)
    runs = [waits_in_a_row.trigger({"n": 4}).result() for _ in range(3)]
    for i in range(4):
        for handle in runs:
            # at random moments: before the wait, while suspending, while suspended
            time.sleep(rng.uniform(0, 0.08))
            messages.send(handle.id, f"{handle.id}-{i}").result()
    for handle in runs:
        run = rayflow.runs.wait(handle.id).result()
        assert run.output == [f"{handle.id}-{i}" for i in range(4)], run


def test_a_run_woken_by_a_sender_that_died_before_asking_for_its_revival_resumes(
    tmp_path: Path,
) -> None:
    """An Inbox stores the message and resolves the waitpoint in one
    transaction, then asks the Controller to revive the run; if it dies in
    between, the acknowledged message must still reach the run. Here the
    Store is written exactly as that Inbox would have, and nobody asks."""
    handle = publish_post.trigger({"marks": str(tmp_path / "m")}).result()
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
        what="the run to suspend",
    )
    store = connection.current().store
    data = Approval(approved=True, reviewer="nobody-asked").model_dump_json()
    message, woke = store.inbox_send(handle.id, "approval", data, "sender-died")
    assert woke, "the send should have resolved the waitpoint and queued the run"
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert run.status == "COMPLETED"
    assert run.output == {"draft": "prepared", "approved": True, "by": "nobody-asked"}


notes = streams.input("notes", str)
story = streams.define("story", str)
resume_story = streams.input("resume-story", dict)


@task(id="handler-writes-mid-task-write")
async def handler_writes_mid_task_write(payload: dict) -> str:
    pipes: list[Any] = []

    def note(value: str) -> None:
        # a writer made at once, in the handler: its id is taken when the
        # message is handed over
        pipes.append(story.pipe([f"note {value}"]))

    notes.on(note)
    (await go.once(timeout_s=60)).unwrap()
    async with story.writer() as w:
        w.write("task 1")
        await w.wait()
        # the note arrives while this writer is open: live, the handler's
        # writer is created after the task's; a replay hands the note over
        # right after once(), before it
        deadline = time.monotonic() + 30
        while notes.peek() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        w.write("task 2")
    for pipe in pipes:
        await pipe.wait_until_complete()
    (await resume_story.wait(timeout="60s")).unwrap()
    for pipe in pipes:
        await pipe.wait_until_complete()
    await story.append("end")
    return "done"


def test_writes_of_on_handlers_are_not_duplicated_by_a_replay() -> None:
    handle = handler_writes_mid_task_write.trigger({}).result()
    go.send(handle.id, {}).result()
    reader = iter(story.read(handle.id, timeout_s=60))
    assert next(reader) == "task 1"
    notes.send(handle.id, "n0").result()
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
        what="the run to suspend",
    )
    resume_story.send(handle.id, {}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED", run.error
    chunks = list(story.read(handle.id, timeout_s=5))
    assert sorted(chunks) == sorted(["task 1", "note n0", "task 2", "end"]), chunks
    assert chunks[-1] == "end"


def test_a_reader_of_a_suspended_run_slows_its_polling_and_resumes_with_the_run(
    tmp_path: Path,
) -> None:
    """A run waiting days for an approval must not cost its readers: a Python
    reader of its stream looked at the Store ~20 times a second (3 reads
    each) and asked the Controller 4 times a second for as long as it
    waited. After a few idle seconds it now looks about once a second, and
    still reads the chunks the run writes once it is revived."""
    store = connection.current().store
    calls: list[float] = []
    real = store.read_chunks

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return real(*args, **kwargs)

    handle = publish_post.trigger({"marks": str(tmp_path / "marks")}).result()
    store.read_chunks = counted
    try:
        reader = iter(log.read(handle.id, timeout_s=60))
        assert next(reader) == "draft ready"
        eventually(
            lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
            what="the run to suspend",
        )
        start = time.monotonic()
        time.sleep(9)  # the reader idles: nothing is written while the run waits
        idle_reads = [t for t in calls if start + 6 <= t <= start + 9]
        assert len(idle_reads) <= 15, f"{len(idle_reads)} Store reads in 3 s of waiting"
        approval.send(handle.id, {"approved": True, "reviewer": "ann"}).result()
        assert next(reader) == "decided"
    finally:
        store.read_chunks = real
    assert rayflow.runs.wait(handle.id).result().output["approved"] is True
