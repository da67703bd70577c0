"""Sessions through the public API (`rayflow.sessions`), on real Ray, on both
stores: start is idempotent; a session's run suspends on `.input.wait()`
holding no process and a send revives it; a send to a session whose run
ended (returned, cancelled, idled out, failed) continues it with a fresh run
that takes the records not yet taken, and those a failed run took but never
finished with; concurrent starts and sends
converge; channels wake nothing; a closed session refuses records; a run
revived after a wait or after its RunActor was killed stores each record
once and hands its `.on()` handlers what they had again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest
import ray
from conftest import eventually, eventually_async, run_actor_pid

import rayflow
from rayflow import _response, errors, sessions, task
from rayflow._runtime import actor_polls, connection, named_tails
from rayflow._runtime.session_follow_waits import Armed, local_waiter
from rayflow._runtime.session_io import s2_record
from rayflow._runtime.session_reads import RecordFollower
from serve.session_records import feed_waiter

pytestmark = pytest.mark.usefixtures("rf")

BASE = {"base_payload": {}}


@task(id="session-echo")
async def session_echo(payload: dict) -> dict:  # type: ignore[type-arg]
    me = sessions.current()
    session = sessions.open(me.id)
    # appended again by every replay after a suspension: stored once per run
    await session.output.append(
        {"type": "boot", "continuation": me.continuation, "previous": me.previous_run_id}
    )
    # a step's appends are not made again on replay (the step is skipped), and
    # the appends after it must then not be mistaken for replayed ones
    await rayflow.step("greet", greet, me.id)
    taken = 0
    while True:
        got = await session.input.wait()
        if not got.ok:
            return {"ended": type(got.error).__name__, "taken": taken}
        taken += 1
        text = got.output["text"]
        if text == "steal":
            try:
                await sessions.open(got.output["other"]).input.once(timeout_s=0)
                verdict = "stole"
            except errors.InvalidArgument:
                verdict = "refused"
            await session.output.append({"type": "steal", "verdict": verdict})
            continue
        if text == "fail" and me.previous_run_id != got.output["unless_previous"]:
            # ends FAILED holding the record it took: the next run answers it
            raise RuntimeError("failed while handling a record")
        if text == "trim":  # replayed after the next wake: trims (and records) once
            trimmed = await session.output.trim_to(got.output["to"])
            await session.output.append({"type": "trimmed", "seq": trimmed})
            continue
        if text == "handoff":
            run_id, swapped = await sessions.end_and_continue(reason="upgrade")
            return {"ended": "handoff", "next": run_id, "swapped": swapped}
        seq = session.input.last_dispatched_seq()
        await session.output.append({"type": "echo", "text": text, "in_seq": seq, **payload})
        if text == "bye":
            return {"ended": "bye", "taken": taken}


@task(id="session-live")
async def session_live(payload: dict) -> dict:  # type: ignore[type-arg]
    """Holds its process (`.once()`): `n` output records per input record."""
    session = sessions.open(sessions.current().id)
    while True:
        got = await session.input.once(timeout_s=120)
        if not got.ok or got.output.get("bye"):
            return {"bye": True}
        for k in range(got.output["n"]):
            await session.output.append({"i": got.output["i"], "k": k})


async def greet(session_id: str) -> None:
    await sessions.open(session_id).output.append({"type": "greet"})


def outs(session: str, start: int = 0) -> list[dict[str, Any]]:
    page = sessions.open(session).output.read(start=start).result()
    assert [r.seq_num for r in page.records] == list(range(start, start + len(page.records)))
    return [json.loads(r.body)["data"] for r in page.records]


def echoes(session: str) -> list[str]:
    return [o["text"] for o in outs(session) if o["type"] == "echo"]


def run_status(run_id: str) -> str:
    return str(rayflow.runs.retrieve(run_id).result().status)


def suspended(run_id: str) -> bool:
    """WAITING and held by no RunActor (no process)."""
    if run_status(run_id) != "WAITING":
        return False
    record = connection.current().store.get_run(run_id)
    live = ray.get(connection.current().controller.live_runs.remote())
    return record is not None and record.actor_name is None and run_id not in live


def test_a_session_suspends_between_records_and_continues_after_its_run_returns() -> None:
    with pytest.raises(errors.InvalidArgument, match="session_"):
        sessions.start(type="inbox", task_id="session-echo", external_id="session_x").result()
    config = {"base_payload": {"who": "alice"}, "tags": ["user:alice"]}
    first = sessions.start(
        type="inbox", task_id="session-echo", external_id="alice", trigger_config=config
    ).result()
    again = sessions.start(
        type="inbox", task_id="session-echo", external_id="alice", trigger_config=config
    ).result()
    assert (again.id, again.run_id, again.is_cached) == (first.id, first.run_id, True)
    assert first.id.startswith("session_") and not first.is_cached and first.public_access_token
    run1 = first.run_id
    assert run1 is not None
    eventually(lambda: suspended(run1), what="the first run to suspend on .input.wait()")

    inbox = sessions.open("alice")  # by external id
    sent = inbox.input.send({"text": "hello"}).result()
    assert (sent.seq, sent.session_id, sent.run_id, sent.woke, sent.continued) == (
        0,
        first.id,
        run1,
        True,
        False,
    )
    eventually(lambda: echoes(first.id) == ["hello"], what="the reply to hello")
    eventually(lambda: suspended(run1), what="the run to suspend again")
    assert inbox.input.send({"text": "bye"}).result().seq == 1
    assert rayflow.runs.wait(run1).result().output == {"ended": "bye", "taken": 2}

    # the run returned: the next record starts a fresh run that takes it alone
    sent = inbox.input.send({"text": "again"}).result()
    assert sent.continued and not sent.woke and sent.run_id not in (None, run1)
    run2 = sent.run_id
    assert run2 is not None
    eventually(lambda: echoes(first.id) == ["hello", "bye", "again"], what="the new run's reply")
    info = sessions.retrieve(first.id).result()
    assert info.current_run_id == run2 and info.external_id == "alice"
    assert info.trigger_config["base_payload"] == {"who": "alice"}
    assert rayflow.runs.retrieve(run2).result().tags == ["user:alice"]
    boots = [o for o in outs(first.id) if o["type"] == "boot"]
    # one boot record per run, although run 1 replayed its start after each wake
    assert boots == [
        {"type": "boot", "continuation": False, "previous": None},
        {"type": "boot", "continuation": True, "previous": run1},
    ]
    assert [o["type"] for o in outs(first.id)].count("greet") == 2  # one per run
    echo_records = [o for o in outs(first.id) if o["type"] == "echo"]
    assert [(o["in_seq"], o["who"]) for o in echo_records] == [
        (0, "alice"),
        (1, "alice"),
        (2, "alice"),
    ]
    assert [r.value() for r in inbox.input.read().result().records] == [
        {"text": "hello"},
        {"text": "bye"},
        {"text": "again"},
    ]

    # a run that fails while it handles a record it took (crashes, is
    # cancelled…) never answered it: the run that continues the session does
    eventually(lambda: suspended(run2), what="the second run to suspend")
    assert inbox.input.send({"text": "fail", "unless_previous": run2}).result().woke
    eventually(lambda: run_status(run2) == "FAILED", what="the second run to fail")
    sent = inbox.input.send({"text": "later"}).result()
    assert sent.continued and sent.run_id not in (None, run1, run2)
    run3 = sent.run_id
    assert run3 is not None
    eventually(lambda: echoes(first.id)[-1:] == ["later"], what="the third run's replies")
    echo_records = [o for o in outs(first.id) if o["type"] == "echo"]
    assert [(o["text"], o["in_seq"]) for o in echo_records] == [
        ("hello", 0),
        ("bye", 1),
        ("again", 2),
        ("fail", 3),
        ("later", 4),
    ]

    # close: the waiting run wakes and ends; records and starts are refused
    eventually(lambda: suspended(run3), what="the third run to suspend")
    closed = sessions.close("alice", reason="signed out").result()
    assert closed.closed and closed.closed_reason == "signed out"
    assert rayflow.runs.wait(run3).result().output == {"ended": "SessionClosed", "taken": 2}
    with pytest.raises(errors.SessionClosed):
        inbox.input.send({"text": "late"}).result()
    with pytest.raises(errors.SessionClosed):
        sessions.start(type="inbox", task_id="session-echo", external_id="alice").result()
    assert sessions.close(first.id, reason="again").result().closed_reason == "signed out"
    assert len(inbox.input.read().result().records) == 5  # nothing stored by the refused send
    # this file's sessions only: earlier tests' closed sessions share the store
    closed = sessions.list(status="CLOSED", task_id="session-echo").result()
    assert [s.id for s in closed] == [first.id]
    with pytest.raises(errors.SessionNotFound):
        sessions.open("nobody").input.send({"text": "x"}).result()


def test_concurrent_starts_and_sends_converge_and_a_cancelled_run_is_continued_once() -> None:
    async def start_many() -> list[sessions.StartedSession]:
        return await asyncio.gather(
            *[
                sessions.start(
                    type="inbox", task_id="session-echo", external_id="bob", trigger_config=BASE
                )
                for _ in range(5)
            ]
        )

    started = asyncio.run(start_many())
    assert len({s.id for s in started}) == 1 and len({s.run_id for s in started}) == 1
    assert sorted(s.is_cached for s in started) == [False, True, True, True, True]
    sid, run1 = started[0].id, started[0].run_id
    assert run1 is not None
    other = sessions.start(
        type="inbox", task_id="session-echo", external_id="carol", trigger_config=BASE
    ).result()
    bob = sessions.open(sid)

    bob.input.send({"text": "r1"}).result()
    eventually(lambda: echoes(sid) == ["r1"], what="run 1's reply")
    # a session's run takes records of its own session only
    bob.input.send({"text": "steal", "other": other.id}).result()
    eventually(lambda: any(o["type"] == "steal" for o in outs(sid)), what="the steal attempt")
    assert [o["verdict"] for o in outs(sid) if o["type"] == "steal"] == ["refused"]
    eventually(lambda: suspended(run1), what="run 1 to suspend")

    # channels: their own streams; sending to one wakes nothing
    screen = bob.channel("screen")
    assert screen.input.send({"paused": True}).result().seq == 0
    assert screen.output.read().result().records == []
    sessions.open("bob").channel("screen").output.append({"frame": 1}).result()
    assert [r.value() for r in screen.output.read().result().records] == [{"frame": 1}]
    assert suspended(run1) and sessions.retrieve(sid).result().current_run_id == run1
    with pytest.raises(errors.InvalidArgument):
        bob.channel("no/slash")
    with pytest.raises(errors.PayloadTooLarge):
        bob.input.send({"text": "x" * (1 << 20)}).result()
    assert len(bob.input.read().result().records) == 2  # r1, steal: nothing stored

    rayflow.runs.cancel(run1).result()
    eventually(lambda: run_status(run1) == "CANCELED", what="run 1 to be cancelled")
    # the next runs idle out after 1 s (a repeated start writes its config through)
    sessions.start(
        type="inbox",
        task_id="session-echo",
        external_id="bob",
        trigger_config={**BASE, "idle_timeout_s": 1},
    ).result()

    async def send_many() -> list[sessions.SentRecord]:
        return await asyncio.gather(*[bob.input.send({"text": f"m{i}"}) for i in range(5)])

    sent = asyncio.run(send_many())
    assert sorted(s.seq for s in sent) == [2, 3, 4, 5, 6]
    continued = [s for s in sent if s.continued]
    assert len(continued) == 1 and len({s.run_id for s in sent}) == 1
    run2 = continued[0].run_id
    assert run2 is not None and run2 != run1
    in_order = [f"m{i}" for i in sorted(range(5), key=lambda i: sent[i].seq)]
    eventually(lambda: echoes(sid) == ["r1", *in_order], what="run 2 to take the five records")
    # run 2 idles out (its wait times out) and returns; the next send continues again
    assert rayflow.runs.wait(run2).result(timeout_s=60).output == {
        "ended": "WaitTimeout",
        "taken": 5,
    }
    live = iter(bob.output.read(start=len(outs(sid)), timeout_s=30))  # follows new records
    third = bob.input.send({"text": "later"}).result()
    assert [next(live).value()["type"] for _ in range(3)] == ["boot", "greet", "echo"]
    live.close()
    assert third.continued and third.run_id not in (run1, run2)
    eventually(lambda: echoes(sid)[-1:] == ["later"], what="run 3's reply")
    assert echoes(sid) == ["r1", *in_order, "later"]

    # a send retried with its key is stored once
    keyed = [bob.input.send({"text": "once"}, idempotency_key="k1").result() for _ in range(2)]
    assert keyed[0].seq == keyed[1].seq
    eventually(lambda: echoes(sid)[-1:] == ["once"], what="run 3's reply to the keyed send")

    # a run hands the session over to a fresh one, which takes what follows
    # (the run that takes "handoff" may be run 3 or, had it idled out, a fresh one)
    handoff = bob.input.send({"text": "handoff"}).result()
    assert handoff.run_id is not None
    ended = rayflow.runs.wait(handoff.run_id).result().output
    assert ended["swapped"] and ended["next"] not in (run1, run2, handoff.run_id)
    assert sessions.retrieve(sid).result().current_run_id == ended["next"]
    assert bob.input.send({"text": "after"}).result().run_id == ended["next"]
    eventually(lambda: echoes(sid)[-1:] == ["after"], what="the new run's reply")
    assert echoes(sid) == ["r1", *in_order, "later", "once", "after"]
    previous = [o["previous"] for o in outs(sid) if o["type"] == "boot"]
    assert previous[:3] == [None, run1, run2] and previous[-1] == handoff.run_id

    # the run trims .out, suspends, and is revived: its replay trims no more
    keep = len(outs(sid)) - 1
    bob.input.send({"text": "trim", "to": keep}).result()
    eventually(lambda: suspended(ended["next"]), what="the run to suspend after its trim")
    bob.input.send({"text": "trimmed?"}).result()

    def last_echo() -> str | None:
        records = bob.output.read(start=keep).result().records
        bodies = [json.loads(r.body)["data"] for r in records if r.body]
        return next((b["text"] for b in reversed(bodies) if b["type"] == "echo"), None)

    eventually(lambda: last_echo() == "trimmed?", what="the reply after the trim")
    records = bob.output.read().result().records
    assert records[0].seq_num == keep  # what the trim left
    trims = [r.seq_num for r in records if r.headers and r.headers[0] == ["", "trim"]]
    trimmed = [json.loads(r.body)["data"] for r in records if r.body]
    assert trims == [keep + 1]
    assert [t["seq"] for t in trimmed if t["type"] == "trimmed"] == [keep + 1]


@task(id="session-durable")
async def session_durable(payload: dict) -> dict:  # type: ignore[type-arg]
    me = sessions.current()
    session = sessions.open(me.id)
    ctl = session.channel("ctl")
    seen: list[int] = []

    async def note(value: dict) -> None:  # type: ignore[type-arg]
        seen.append(value["n"])
        await ctl.output.append({"noted": value["n"]})

    ctl.input.on(note)
    turns = 0
    while True:
        got = await session.input.wait()
        if not got.ok:
            return {"turns": turns, "seen": seen, "ended": type(got.error).__name__}
        text, turns = got.output["text"], turns + 1
        await session.output.append({"turn": text, "part": 0})
        await rayflow.step("think", think, me.id, text)  # appends part 1
        await session.output.append({"turn": text, "part": 2, "seen": list(seen)})
        if text == "hold":  # holds its process until "go": killed here
            (await session.channel("go").input.once(timeout_s=120)).unwrap()
        await session.output.append({"turn": text, "part": 3})
        if text == "bye":
            return {"turns": turns, "seen": seen}


async def think(session_id: str, text: str) -> None:
    await sessions.open(session_id).output.append({"turn": text, "part": 1})


def parts(session: str) -> list[tuple[str, int]]:
    return [(o["turn"], o["part"]) for o in outs(session)]


def test_a_run_revived_after_a_wait_or_a_kill_stores_records_once_and_replays_handlers() -> None:
    started = sessions.start(
        type="durable", task_id="session-durable", trigger_config=BASE
    ).result()
    sid, run_id = started.id, started.run_id
    assert run_id is not None
    session, ctl = sessions.open(sid), sessions.open(sid).channel("ctl")

    def noted() -> list[Any]:
        return [r.value() for r in ctl.output.read().result().records]

    def part(turn: str, n: int) -> dict[str, Any]:
        found = [o for o in outs(sid) if (o["turn"], o["part"]) == (turn, n)]
        assert len(found) == 1, (turn, n, outs(sid))
        return found[0]

    eventually(lambda: suspended(run_id), what="the run to suspend on .input.wait()")
    ctl.input.send({"n": 1}).result()  # a channel wakes nothing: handed over once revived
    session.input.send({"text": "one"}).result()
    eventually(lambda: noted() == [{"noted": 1}], what="the handler to take ctl record 0")
    eventually(lambda: ("one", 3) in parts(sid) and suspended(run_id), what="turn one")

    # revived again: the replay hands the handler its record again (its list
    # is rebuilt), and neither it nor the turn stores anything twice
    session.input.send({"text": "two"}).result()
    eventually(lambda: ("two", 3) in parts(sid) and suspended(run_id), what="turn two")
    assert part("two", 2)["seen"] == [1]
    assert noted() == [{"noted": 1}]

    # killed mid-turn (holding its process in .once(), after appends past its
    # last wait): revived from its journal, it appends nothing twice either
    ctl.input.send({"n": 2}).result()
    session.input.send({"text": "hold"}).result()
    eventually(
        lambda: ("hold", 2) in parts(sid) and noted() == [{"noted": 1}, {"noted": 2}],
        what="turn hold to hold its process, the handler to take ctl record 1",
    )
    pid = eventually(lambda: run_actor_pid(run_id), what="the run's RunActor")
    os.kill(pid, signal.SIGKILL)
    session.channel("go").input.send({"go": True}).result()
    eventually(lambda: ("hold", 3) in parts(sid), timeout_s=60, what="the revived run's part 3")
    eventually(lambda: suspended(run_id), what="the revived run to suspend")
    session.input.send({"text": "bye"}).result()
    result = rayflow.runs.wait(run_id).result(timeout_s=60)
    assert result.status == "COMPLETED" and result.output == {"turns": 4, "seen": [1, 2]}
    # revived, not continued: every record once, no .in record taken twice or lost
    assert sessions.retrieve(sid).result().current_run_id == run_id
    assert parts(sid) == [(t, n) for t in ("one", "two", "hold", "bye") for n in range(4)]
    assert part("bye", 2)["seen"] == [1, 2]
    assert noted() == [{"noted": 1}, {"noted": 2}]
    assert session.input.peek().result() is None and ctl.input.peek().result() is None


async def never(path: str) -> Armed:
    """A waiter that never wakes: a reader using it gets only pushed rows."""

    async def wait(timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)

    return wait


async def test_a_live_runs_output_is_pushed_to_its_readers_and_followed_across_runs() -> None:
    started = await sessions.start(type="live", task_id="session-live", trigger_config=BASE)
    sid, run1 = started.id, started.run_id
    assert run1 is not None
    session = sessions.open(sid)
    await eventually_async(lambda: run_status(run1) == "EXECUTING", what="run 1 to execute")

    async def pushed(follower: RecordFollower, start: int, n: int, send: dict[str, Any]) -> list:
        """Send once the follower waits on the live run's RunActor: no feed
        and no Store re-read can wake it, only the rows the run pushes."""
        follower.close()  # an earlier subscription (another position, an ended run)
        page = asyncio.ensure_future(follower.next(start, 100, 30))
        await eventually_async(lambda: follower.following, what="the reader to follow the run")
        await session.input.send(send)
        got = (await page).records
        while len(got) < n:  # the run's appends may come in more than one push
            got += (await follower.next(got[-1].seq_num + 1, 100, 30)).records
        return [(r.seq_num, r.value()) for r in got]

    async def stored(start: int) -> list[sessions.S2Record]:
        return (await session.output.read(start=start)).records

    path = f"sessions/{sid}/out"
    # this loop takes pushed rows, like a Serve replica's (and the I/O loop)
    follower = RecordFollower(sid, "out", waiter=never, reread_s=None, take_pushes=True)
    try:
        assert await pushed(follower, 0, 3, {"i": 0, "n": 3}) == [
            (0, {"i": 0, "k": 0}),
            (1, {"i": 0, "k": 1}),
            (2, {"i": 0, "k": 2}),
        ]
        assert await pushed(follower, 3, 1, {"i": 1, "n": 1}) == [(3, {"i": 1, "k": 0})]

        # a waiter armed before a read wakes for a commit made after it, in
        # another process (the run's), before the wait began
        for arm in (local_waiter, feed_waiter):
            tail = len((await session.output.read()).records)
            wait = await arm(f"sessions/{sid}/out")
            await session.input.send({"i": 2, "n": 1})
            await eventually_async(lambda t=tail: stored(t), what="the run's reply in the Store")
            woke = time.monotonic()
            await wait(30)
            assert time.monotonic() - woke < 10, f"{arm.__name__} missed a commit"

        # between two reads (no `follow_many` call of this loop in flight) the
        # run's commit thread pushes its replies here: exactly the Store's rows
        follower.close()
        listener = actor_polls.listen(path, 6)
        assert listener is not None
        key = named_tails.named_key(path)
        assert not [k for k in actor_polls._here().streams if k[1] == key], "still subscribed"
        try:
            await session.input.send({"i": 9, "n": 2})
            await eventually_async(lambda: len(listener.rows) >= 2, what="the pushed replies")
            store_rows = (await session.output.read(start=6)).records
            assert [s2_record(*r[:3]) for r in listener.rows] == store_rows[:2]
            assert [r.value() for r in store_rows] == [{"i": 9, "k": 0}, {"i": 9, "k": 1}]
        finally:
            listener.close()

        # the public reader page after page (`read(start=, wait_s=)`, each call
        # its own, on the rayflow I/O loop): one follow of the run for them all
        def following() -> bool:  # the I/O loop's reader waits on the run
            io_polls = actor_polls._loops.get(_response._portal_loop)  # type: ignore[arg-type]
            streams = dict(io_polls.streams) if io_polls is not None else {}
            return bool(streams.get((run1, named_tails.named_key(path))))

        calls = actor_polls.calls
        for i in range(8, 13):
            reading = asyncio.ensure_future(
                asyncio.to_thread(lambda at=i: session.output.read(start=at, wait_s=30).result())
            )
            await eventually_async(following, what="the public reader to follow the run")
            await session.input.send({"i": i, "n": 1})
            assert [(r.seq_num, r.value()) for r in (await reading).records] == [
                (i, {"i": i, "k": 0})
            ]
        assert actor_polls.calls - calls <= 2, "a follow_many call per read"

        # the run ends; a live reader (the public iterator) reads on across
        # the continuation: every record once, in order
        await session.input.send({"bye": True})
        assert (await rayflow.runs.wait(run1)).output == {"bye": True}
        tail = len((await session.output.read()).records)
        assert tail == 13
        live = session.output.read(start=tail - 1, timeout_s=30).__aiter__()
        assert (await anext(live)).seq_num == tail - 1
        sent = await session.input.send({"i": 3, "n": 2})
        assert sent.continued and sent.run_id not in (None, run1)
        assert [(r.seq_num, r.value()) for r in [await anext(live), await anext(live)]] == [
            (13, {"i": 3, "k": 0}),
            (14, {"i": 3, "k": 1}),
        ]
        await live.aclose()
        # the next run's actor pushes to the same follower
        run2 = sent.run_id
        await eventually_async(lambda: run_status(run2) == "EXECUTING", what="run 2 to execute")
        assert await pushed(follower, 15, 1, {"i": 4, "n": 1}) == [(15, {"i": 4, "k": 0})]
    finally:
        follower.close()
    store_says = [(r.seq_num, r.value()) for r in (await session.output.read()).records]
    assert [seq for seq, _ in store_says] == list(range(16))
    await session.input.send({"bye": True})
    await sessions.close(sid)
