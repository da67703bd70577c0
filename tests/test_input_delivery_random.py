"""Every acknowledged message is seen exactly once, in order, by the code that
asked for it — under random interleavings of `.on()` / `.once()` / `.wait()`,
sends, suspensions, revivals and RunActor kills (issue 14, item 0).

The randomized test runs a dozen runs of one scripted task. Each run's script
(from a seeded generator) is a sequence of operations: take a message with
`.once()` or `.wait()` from input stream `a` or `b`, or subscribe a handler
with `.on()` to stream `h`. The driver sends each run exactly the messages its
script takes, in order per stream, interleaved at random across runs and
streams; before some sends it waits until the run has reached the operation
that takes that message (so the message meets a live waiter, a suspending run
or a suspended one), and at random moments it SIGKILLs the worker process
executing a run. The task returns what it took (stream, message) in order and
what its handler saw; the test compares both with what was acknowledged.

The seeds are fixed (RAYFLOW_DELIVERY_SEED=<n> runs just one) and printed, so
a failure reproduces. Below it, focused regression tests for known defects.
Not covered here: a send whose message is stored but whose revival fails
must still be acknowledged (issue 14 item 0). Real components give no way to
make `Controller.revive` fail after the waitpoint is resolved (killing the
Controller makes the sender retry, and the retry is acknowledged; a restarted
Controller revives the run), so that one needs a test at the Inbox's level.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
from conftest import eventually

import rayflow
from rayflow import streams, task
from rayflow._runtime import connection

pytestmark = pytest.mark.usefixtures("rf")

in_a = streams.input("rdt-a", str)
in_b = streams.input("rdt-b", str)
in_h = streams.input("rdt-h", str)
progress = streams.define("rdt-progress", int)
TAKE_STREAMS = {"a": in_a, "b": in_b}
SENDERS = {"a": in_a, "b": in_b, "h": in_h}

#: a lost message shows up as a timeout of the operation that wanted it
ONCE_TIMEOUT_S = 30.0
WAIT_TIMEOUT = "60s"
HANDLER_TIMEOUT_S = 30.0
END = -1  # progress value appended when the script is done

SEEDS = [1401, 2718]
RUNS_PER_SEED = 12


@task(id="rdt-script")
async def script(payload: dict) -> dict:
    """Runs payload["ops"]; returns what it took and what its handler saw."""
    taken: list[list[str]] = []
    seen: list[str] = []
    for i, (kind, stream) in enumerate(payload["ops"]):
        await progress.append(i)  # "reached op i": the driver may sync on it
        if kind == "on":
            in_h.on(seen.append)
        elif kind == "once":
            got = await TAKE_STREAMS[stream].once(timeout_s=ONCE_TIMEOUT_S)
            taken.append([stream, got.output if got.ok else "<once timed out>"])
        else:
            got = await TAKE_STREAMS[stream].wait(timeout=WAIT_TIMEOUT)
            taken.append([stream, got.output if got.ok else "<wait timed out>"])
    await progress.append(END)
    # no durable operation follows, so polling the clock here is safe
    deadline = time.monotonic() + HANDLER_TIMEOUT_S
    while len(seen) < payload["handled"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return {"taken": taken, "seen": list(seen)}


# -- the schedule -------------------------------------------------------------------


@dataclass
class Plan:
    """One run: its script, the messages it must take, the driver's events."""

    ops: list[tuple[str, str]]
    handled: int
    events: list[tuple[str, Any]] = field(default_factory=list)
    run_id: str = ""

    def expected(self) -> dict[str, Any]:
        counters = {"a": 0, "b": 0}
        taken = []
        for kind, stream in self.ops:
            if kind != "on":
                taken.append([stream, f"{self.run_id}/{stream}{counters[stream]}"])
                counters[stream] += 1
        seen = [f"{self.run_id}/h{j}" for j in range(self.handled)]
        return {"taken": taken, "seen": seen}


def make_plan(rng: random.Random) -> Plan:
    ops: list[tuple[str, str]] = [
        (rng.choice(["once", "wait"]), rng.choice(["a", "b"])) for _ in range(rng.randint(2, 5))
    ]
    handled = 0
    if rng.random() < 0.6:
        ops.insert(rng.randint(0, len(ops)), ("on", "h"))
        handled = rng.randint(1, 3)
    plan = Plan(ops, handled)
    # the sends the script takes, in the order it takes them (op index, stream)
    needed = [(i, s) for i, (k, s) in enumerate(ops) if k != "on"]
    # shuffle locally: neighbours on different streams may swap (each stream's
    # own order is kept: a stream's messages are sent in order)
    for _ in range(len(needed)):
        j = rng.randrange(max(1, len(needed) - 1))
        if j + 1 < len(needed) and needed[j][1] != needed[j + 1][1]:
            needed[j], needed[j + 1] = needed[j + 1], needed[j]
    events: list[tuple[str, Any]] = []
    for pos, (op_index, stream) in enumerate(needed):
        # sync only when every message an earlier op needs is already sent
        earlier_sent = all(i < op_index for i, _ in needed[:pos]) and all(
            i > op_index for i, _ in needed[pos + 1 :]
        )
        if earlier_sent and rng.random() < 0.5:
            events.append(("sync", op_index))
        events.append(("send", stream))
        if rng.random() < 0.12:
            events.append(("kill", None))
    for _ in range(handled):
        events.insert(rng.randint(0, len(events)), ("send", "h"))
    plan.events = events
    return plan


def run_actor_pid(run_id: str) -> int | None:
    _, actor = ray.get(connection.current().controller.locate.remote(run_id))
    if actor is None:
        return None
    try:
        return int(ray.get(actor.pid.remote(), timeout=10))
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None  # gone, or the Controller has not noticed its death yet


def reached(run_id: str, op_index: int) -> bool:
    return op_index in list(progress.read(run_id, start_index=0, timeout_s=0.1))


def poll(check: Any, timeout_s: float) -> bool:
    """Like `eventually`, but a miss is a finding to report, not the end of the test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def drive(seed: int) -> list[str]:
    """Run one seeded schedule; returns what went wrong (empty: nothing)."""
    rng = random.Random(seed)
    plans = [make_plan(rng) for _ in range(RUNS_PER_SEED)]
    for plan in plans:
        plan.run_id = script.trigger({"ops": plan.ops, "handled": plan.handled}).result().id
    problems: list[str] = []
    sent = {plan.run_id: {"a": 0, "b": 0, "h": 0} for plan in plans}
    cursor = {plan.run_id: 0 for plan in plans}
    stuck: set[str] = set()
    kills = 0
    while any(cursor[p.run_id] < len(p.events) for p in plans):
        plan = rng.choice([p for p in plans if cursor[p.run_id] < len(p.events)])
        kind, arg = plan.events[cursor[plan.run_id]]
        cursor[plan.run_id] += 1
        time.sleep(rng.uniform(0, 0.03))  # jitter of the schedule, not a wait for a condition
        if kind == "sync" and plan.run_id not in stuck:
            if not poll(lambda p=plan, k=arg: reached(p.run_id, k), timeout_s=60):
                stuck.add(plan.run_id)
                problems.append(f"run {plan.run_id} never reached op {arg} {plan.ops[arg]}")
        elif kind == "send":
            n = sent[plan.run_id][arg]
            value = f"{plan.run_id}/{arg}{n}"
            try:
                SENDERS[arg].send(plan.run_id, value).result(timeout_s=60)
                sent[plan.run_id][arg] = n + 1
            except Exception as e:  # a send must be acknowledged or refused, never fail
                problems.append(f"run {plan.run_id}: send of {value!r} raised {e!r}")
        elif kind == "kill":
            pid = run_actor_pid(plan.run_id)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
    for plan in plans:
        try:
            run = rayflow.runs.wait(plan.run_id).result(timeout_s=180)
        except TimeoutError:
            problems.append(f"run {plan.run_id} ({plan.ops}) did not finish")
            rayflow.runs.cancel(plan.run_id).result()
            continue
        if run.status != "COMPLETED":
            problems.append(f"run {plan.run_id} ({plan.ops}) ended {run.status}: {run.error}")
            continue
        want = plan.expected()
        if run.output != want:
            problems.append(
                f"run {plan.run_id} ops={plan.ops} events={plan.events}:"
                f" got {run.output}, want {want}"
            )
        marks = list(progress.read(plan.run_id, start_index=0, timeout_s=1))
        if marks != [*range(len(plan.ops)), END]:
            problems.append(f"run {plan.run_id}: progress stream {marks} (repeats or gaps)")
    print(f"seed {seed}: {len(plans)} runs, {kills} RunActors killed, {len(problems)} problems")
    return problems


def seeds() -> list[int]:
    chosen = os.environ.get("RAYFLOW_DELIVERY_SEED")
    return [int(chosen)] if chosen else SEEDS


@pytest.mark.parametrize("seed", seeds())
def test_every_acknowledged_message_is_seen_exactly_once_in_order(seed: int) -> None:
    print(f"delivery schedule seed {seed} (rerun with RAYFLOW_DELIVERY_SEED={seed})")
    problems = drive(seed)
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)


# -- focused regressions -------------------------------------------------------------

step_log = streams.define("rdt-log", str)


@task(id="rdt-once-wait-once")
async def once_wait_once(payload: dict) -> list[str]:
    await step_log.append("ready for a0")
    first = (await in_a.once(timeout_s=30)).unwrap()
    decision = (await in_b.wait(timeout="1m")).unwrap()
    await step_log.append("revived, ready for a1")
    second = await in_a.once(timeout_s=ONCE_TIMEOUT_S)
    return [first, decision, second.output if second.ok else "<once timed out>"]


def log_has(run_id: str, line: str) -> bool:
    return line in list(step_log.read(run_id, start_index=0, timeout_s=0.2))


def test_once_after_a_revival_receives_the_next_message() -> None:
    """A run took a message with `.once()` (its actor handle got cached on the
    way), then suspended in `.wait()` and was revived on another actor: the
    next message on the first stream must still reach `.once()`."""
    handle = once_wait_once.trigger({}).result()
    eventually(lambda: log_has(handle.id, "ready for a0"), what="the run to ask for a0")
    in_a.send(handle.id, "a0").result()  # handed to the live actor
    eventually(
        lambda: rayflow.runs.retrieve(handle.id).result().status == "WAITING",
        what="the run to suspend in .wait()",
    )
    in_b.send(handle.id, "go").result()  # revives it
    eventually(lambda: log_has(handle.id, "revived, ready for a1"), what="the revival")
    in_a.send(handle.id, "a1").result()
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert run.output == ["a0", "go", "a1"], run


def mark(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


@task(id="rdt-retry-backoff", retry=rayflow.RetryPolicy(max_attempts=3, min_delay_s=4.0))
async def fails_then_backs_off(payload: dict) -> str:
    attempt = rayflow.context().attempt
    mark(payload["marks"], f"attempt {attempt}")
    if attempt == 1:
        raise RuntimeError("attempt 1 fails, so the run backs off before attempt 2")
    return f"attempt {attempt} ran"


def count_lines(path: str) -> int:
    p = Path(path)
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_a_run_canceled_during_retry_backoff_starts_no_other_attempt(tmp_path: Path) -> None:
    marks = str(tmp_path / "marks")
    handle = fails_then_backs_off.trigger({"marks": marks}).result()
    eventually(lambda: count_lines(marks) == 1, what="attempt 1 to fail")
    # attempt 1 has failed and the run sleeps 4 s before attempt 2: cancel now
    assert rayflow.runs.cancel(handle.id).result() is True
    controller = connection.current().controller
    eventually(
        lambda: handle.id not in ray.get(controller.live_runs.remote()),
        what="the canceled run to give up its actor",
    )
    run = rayflow.runs.retrieve(handle.id).result()
    assert run.status == "CANCELED"
    assert Path(marks).read_text().splitlines() == ["attempt 1"], "another attempt ran"
