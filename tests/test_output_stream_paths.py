"""The fast paths of output streams keep their promises: batched pipes, group
commit across a run's streams, cached run locations that follow a run whose
actor moved on (RunActors are recycled), late reads straight from the Store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import eventually, eventually_async
from pydantic import BaseModel

import rayflow
from rayflow import errors, streams, task
from rayflow.store import open_store

pytestmark = pytest.mark.usefixtures("rf")


class Token(BaseModel):
    text: str
    index: int


texts = streams.define("texts", str)
anything = streams.define("anything")
typed = streams.define("typed-tokens", Token)
trail = streams.define("trail", str)
proceed = streams.input("proceed", dict)
resume = streams.input("resume", dict)

#: strings that need JSON escaping, or not, next to plain ones
AWKWARD = ['say "hi"', "back\\slash", "new\nline", "tab\t", "é ü 中 🙂", "", "\x01"]


@task(id="pipe-many")
async def pipe_many(payload: dict) -> dict:
    n = payload["n"]
    a = texts.pipe(f"{AWKWARD[i % len(AWKWARD)]}{i}" for i in range(n))
    b = anything.pipe(iter([1, 2.5, None, True, "s", {"k": [1, "v"]}, [1, 2]] * 3))
    return {"texts": await a.wait_until_complete(), "anything": await b.wait_until_complete()}


@task(id="pipe-one-bad")
async def pipe_one_bad(payload: dict) -> str:
    good = [{"text": f"t{i}", "index": i} for i in range(10)]
    pipe = typed.pipe([*good, {"text": "bad", "index": "not a number"}, *good])
    try:
        await pipe.wait_until_complete()
    except errors.ValidationError as e:
        return f"rejected: {e}"
    return "accepted"


@task(id="many-streams-at-once")
async def many_streams_at_once(payload: dict) -> int:
    keys = [f"s{k}" for k in range(payload["streams"])]

    async def write(key: str) -> None:
        for i in range(payload["n"]):
            await streams.append(key, i)

    await asyncio.gather(*(write(k) for k in keys))
    return len(keys)


@task(id="suspend-between-writes")
async def suspend_between_writes(payload: dict) -> str:
    await trail.append("before")
    await proceed.once(timeout_s=120)
    await resume.wait(timeout="1h")
    await trail.append("after")
    return "done"


closing = streams.define("closing", str)


@task(id="close-then-wait")
async def close_then_wait(payload: dict) -> None:
    await closing.append("only")
    await closing.close()
    await resume.wait(timeout="1h")


@task(id="hold-open")
async def hold_open(payload: dict) -> None:
    await proceed.once(timeout_s=120)


def test_a_pipe_stores_each_value_once_in_order_with_its_exact_value() -> None:
    handle = pipe_many.trigger({"n": 5000}).result()
    assert rayflow.runs.wait(handle.id).result().output == {"texts": 5000, "anything": 21}
    expected = [f"{AWKWARD[i % len(AWKWARD)]}{i}" for i in range(5000)]
    assert list(texts.read(handle.id, timeout_s=10)) == expected
    assert (
        list(anything.read(handle.id, timeout_s=10))
        == [
            1,
            2.5,
            None,
            True,
            "s",
            {"k": [1, "v"]},
            [1, 2],
        ]
        * 3
    )


def test_a_piped_batch_with_one_invalid_value_stores_the_values_before_it() -> None:
    handle = pipe_one_bad.trigger({}).result()
    output = rayflow.runs.wait(handle.id).result().output
    assert output.startswith("rejected:") and "typed-tokens" in output
    got = list(typed.read(handle.id, timeout_s=10))
    assert got == [Token(text=f"t{i}", index=i) for i in range(10)]


@task(id="lockstep-streams")
async def lockstep_streams(payload: dict) -> int:
    """Wait for the go, then write round after round to every stream at once."""
    await proceed.once(timeout_s=120)
    keys = [f"l{k}" for k in range(payload["streams"])]
    for i in range(payload["rounds"]):
        await asyncio.gather(*(streams.append(k, i) for k in keys))
        await asyncio.sleep(0.02)
    return len(keys)


async def test_readers_of_many_streams_of_one_run_share_one_long_poll() -> None:
    """10 live readers in one process of the 10 streams of one run cost one
    long poll on its RunActor per group commit, not one per stream: a run
    writing all its streams at once must not mean 10 Ray calls per round."""
    from rayflow._runtime.connection import current

    n_streams, rounds = 10, 20
    handle = await lockstep_streams.trigger({"streams": n_streams, "rounds": rounds})

    async def live_actor() -> Any:
        _, actor = await current().controller.locate.remote(handle.id)
        return actor

    actor = await eventually_async(live_actor, timeout_s=60, what="the run's RunActor")

    async def read(key: str) -> list[int]:
        return [x async for x in streams.read(handle.id, key, timeout_s=30)]

    readers = [asyncio.create_task(read(f"l{k}")) for k in range(n_streams)]
    # let the readers reach the live tail: what they read is checked either
    # way; the count of polls needs them there
    await asyncio.sleep(0.5)
    before = await actor.poll_count.remote()
    await proceed.send(handle.id, {})
    got = await asyncio.gather(*readers)
    assert got == [list(range(rounds))] * n_streams
    polls = await actor.poll_count.remote() - before
    # one poll per stream would need at least n_streams × rounds = 200
    assert polls < n_streams * rounds / 2, polls


ticks = streams.define("ticks", int)


@task(id="steady-writer")
async def steady_writer(payload: dict) -> int:
    """Append `n` chunks, one every `gap_s`: one group commit each."""
    for i in range(payload["n"]):
        await ticks.append(i)
        await asyncio.sleep(payload["gap_s"])
    return payload["n"]


async def test_a_live_reader_is_sent_many_commits_per_call() -> None:
    """A reader following a live run is sent every commit on one streamed
    call (`RunActor.follow_many`), not one long poll per commit: with a poll
    per reply, every commit under a flood waited for the next poll to reach
    the actor."""
    from rayflow._runtime import actor_polls

    n = 150
    handle = await steady_writer.trigger({"n": n, "gap_s": 0.01})
    got: list[int] = []
    calls_before = actor_polls.calls
    async for x in ticks.read(handle.id, timeout_s=30):
        got.append(x)
    assert got == list(range(n))
    calls = actor_polls.calls - calls_before
    # ~2 s of commits, one reply each: one call per LONG_POLL_S (+ the first,
    # + a restart whenever this reader fell MAX_QUEUED replies behind); one
    # long poll per reply made about one call per commit
    assert 1 <= calls <= n // 10, calls


async def test_a_reader_that_leaves_a_live_run_ends_its_stream_on_the_actor() -> None:
    """A reader that stops reading must not leave the actor streaming its
    rows to nobody until the stream's time is up: leaving ends the stream
    (the process's poll on the actor is then gone)."""
    from rayflow._runtime import actor_polls
    from rayflow._runtime.connection import current

    handle = await steady_writer.trigger({"n": 1000, "gap_s": 0.01})

    async def live_actor() -> Any:
        _, actor = await current().controller.locate.remote(handle.id)
        return actor

    actor = await eventually_async(live_actor, timeout_s=60, what="the run's RunActor")
    loop = asyncio.get_running_loop()

    def following() -> bool:
        return loop in actor_polls._loops and actor._actor_id in actor_polls._loops[loop].polls

    reader = ticks.read(handle.id, timeout_s=30).__aiter__()
    got = []
    while not following():  # the first chunks come from the Store, then it follows the actor
        got.append(await reader.__anext__())
        assert len(got) < 500, "the reader never followed the run's actor"
    assert got == list(range(len(got)))
    await reader.aclose()  # type: ignore[attr-defined]

    # well within the stream's own end (LONG_POLL_S = 5 s) while the run writes on
    await eventually_async(lambda: not following(), timeout_s=2.5, what="the stream to end")
    await rayflow.runs.cancel(handle.id)


async def test_a_reader_cancelled_as_its_next_rows_arrive_ends_cancelled() -> None:
    """A reader's task cancelled in the loop step its next rows arrive in
    must end, cancelled. With `asyncio.wait_for` in its wait (Python 3.11)
    the cancellation was swallowed: the reader went on, and without an idle
    timeout it followed the stream for ever."""
    from rayflow._runtime.stream_rows import ReadReply

    handle = await suspend_between_writes.trigger({})  # "before", then waits live
    reader = trail.read(handle.id, timeout_s=None)
    got: list[str] = []

    async def read() -> None:
        async for x in reader:
            got.append(x)

    task = asyncio.create_task(read())

    def waiting() -> Any:  # caught up: it waits on its actor's poll
        sub = reader._reader._sub
        return sub if got == ["before"] and sub is not None and not sub.queue else None

    sub = await eventually_async(waiting, timeout_s=60, what="the reader to wait on its actor")
    # its rows arrive, and its task is cancelled, in one step of the loop
    sub._deliver(ReadReply(rows=[(1, '"next"', 0, None)]))
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=10)
    assert task in done, f"the cancelled reader went on reading (it got {got})"
    assert task.cancelled()
    await rayflow.runs.cancel(handle.id)


async def test_a_subscription_left_out_for_a_full_queue_that_leaves_ends_the_poll() -> None:
    """A subscription whose reader stopped taking replies is left out of its
    actor's stream once MAX_QUEUED wait; when it then leaves, the process's
    poll on that actor must end (it waited for a wake-up that never came)."""
    from rayflow._runtime import actor_polls
    from rayflow._runtime.connection import current

    handle = await steady_writer.trigger({"n": 1000, "gap_s": 0.01})

    async def live_actor() -> Any:
        _, actor = await current().controller.locate.remote(handle.id)
        return actor

    actor = await eventually_async(live_actor, timeout_s=60, what="the run's RunActor")

    async def writing() -> bool:  # the actor executes the run and has its stream
        stats = await actor.stream_stats.remote(handle.id)
        return "ticks" in stats and stats["ticks"]["length"] > 0

    await eventually_async(writing, timeout_s=60, what="the run's first chunk")
    sub = actor_polls.subscribe(actor, handle.id, "ticks", 0)
    await eventually_async(
        lambda: len(sub.queue) >= actor_polls.MAX_QUEUED, what="the queue to fill"
    )
    polls = actor_polls._loops[asyncio.get_running_loop()].polls
    assert actor._actor_id in polls
    sub.close()
    await eventually_async(
        lambda: actor._actor_id not in polls, timeout_s=10, what="the poll to end"
    )
    await rayflow.runs.cancel(handle.id)


async def test_a_live_runs_location_asked_ahead_is_cached_for_its_reader() -> None:
    """An SSE reader that arrives before its stream exists has the replica
    ask where the run executes while it waits (`serving.prefetch_location`),
    so the hub's reader finds it cached when the stream appears instead of
    asking the Controller then; a run that is not live leaves nothing."""
    from rayflow._runtime import locations, serving
    from rayflow._runtime.connection import current

    handle = await steady_writer.trigger({"n": 300, "gap_s": 0.01})

    async def live_actor() -> Any:
        _, actor = await current().controller.locate.remote(handle.id)
        return actor

    actor = await eventually_async(live_actor, timeout_s=60, what="the run's RunActor")
    locations.forget(handle.id)
    serving.prefetch_location(handle.id)
    serving.prefetch_location(handle.id)  # asked once
    cached = await eventually_async(
        lambda: locations.cached(handle.id), what="the run's location in the cache"
    )
    assert cached._actor_id == actor._actor_id
    await rayflow.runs.cancel(handle.id)
    done = await pipe_many.trigger({"n": 3})
    await rayflow.runs.wait(done.id)
    serving.prefetch_location(done.id)
    await eventually_async(lambda: done.id not in serving._locating, what="the ask to end")
    assert locations.cached(done.id) is None


def test_writes_to_many_streams_of_one_run_at_once_all_arrive_in_order() -> None:
    handle = many_streams_at_once.trigger({"streams": 8, "n": 60}).result()
    assert rayflow.runs.wait(handle.id).result().output == 8
    for k in range(8):
        assert list(streams.read(handle.id, f"s{k}", timeout_s=10)) == list(range(60))


def status(run_id: str) -> str:
    return rayflow.runs.retrieve(run_id).result().status


def test_an_outside_writer_follows_a_run_whose_actor_moved_on() -> None:
    """A writer outside the run caches where the run executes; after the run
    suspends its actor serves other runs, and the next write must still land
    in this run's stream (through the Store) — never in another run's."""
    handle = suspend_between_writes.trigger({}).result()
    eventually(lambda: status(handle.id) == "EXECUTING", what="run executing")
    # the run's own first chunk is stored first (an outside write commits on
    # its own and could otherwise come before it)
    eventually(
        lambda: list(trail.read(handle.id, timeout_s=0.2)) == ["before"], what="the run's write"
    )
    trail.append("outside-1", target=handle.id).result()  # caches the run's actor
    proceed.send(handle.id, {}).result()
    eventually(lambda: status(handle.id) == "WAITING", what="run suspended")
    others = [hold_open.trigger({}).result() for _ in range(3)]  # take the pool's actors
    for other in others:
        eventually(lambda o=other: status(o.id) == "EXECUTING", what="other run executing")
    trail.append("outside-2", target=handle.id).result()
    # a reader of the suspended run reads the Store: it sees what is stored
    assert list(trail.read(handle.id, timeout_s=0.5)) == ["before", "outside-1", "outside-2"]
    resume.send(handle.id, {}).result()
    assert rayflow.runs.wait(handle.id).result().output == "done"
    assert list(trail.read(handle.id, timeout_s=10)) == [
        "before",
        "outside-1",
        "outside-2",
        "after",
    ]
    for other in others:
        assert list(trail.read(other.id, timeout_s=0.3)) == []
        proceed.send(other.id, {}).result()
        rayflow.runs.wait(other.id).result()


def test_an_outside_write_to_a_closed_stream_of_a_waiting_run_is_refused() -> None:
    """A run without an actor is written through the Store: a stream the run
    closed before it suspended must refuse the write there too, as the live
    run's buffer does (it was stored after the close before)."""
    handle = close_then_wait.trigger({}).result()
    eventually(lambda: status(handle.id) == "WAITING", what="run suspended")
    with pytest.raises(errors.StreamClosed):
        closing.append("late", target=handle.id).result()
    assert list(closing.read(handle.id, timeout_s=0.5)) == ["only"]
    # revived, the run replays its append and close: the replayed chunk is a
    # duplicate, not a write to a closed stream (that failed the run before)
    resume.send(handle.id, {}).result()
    assert rayflow.runs.wait(handle.id).result().status == "COMPLETED"
    assert list(closing.read(handle.id, timeout_s=0.5)) == ["only"]


def test_a_late_read_of_a_finished_run_needs_no_controller(rf: Any) -> None:
    """Reading a finished run is a Store read: it works while the Controller
    is unreachable (here: a call to it would hang, so the read must not make one)."""
    from rayflow._runtime import connection

    handle = pipe_many.trigger({"n": 50}).result()
    rayflow.runs.wait(handle.id).result()
    conn = connection.current()
    controller, conn._controller = conn._controller, _NoController()
    try:
        assert len(list(texts.read(handle.id, timeout_s=5))) == 50
        with pytest.raises(errors.RunNotFound):
            list(texts.read("run_missing", timeout_s=1))
    finally:
        conn._controller = controller
    # and the Store holds exactly what the reader saw
    store = open_store(rf.store_url())
    assert len(store.read_chunks(handle.id, "texts", 0, 1000)) == 50


class _NoController:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the reader called the Controller ({name})")


async def test_a_chunk_written_past_the_actor_is_served_even_when_the_actors_commit_was_a_duplicate(
    tmp_path: Any,
) -> None:
    """A writer that finds the run not live writes straight to the Store; if
    the RunActor's next commit for that stream stores nothing new (a replayed
    duplicate), its buffer must still serve that chunk — not report a length
    past the rows it holds (readers then spun without ever getting it)."""
    from rayflow._config import Settings
    from rayflow._runtime.stream_buffers import StreamBuffers
    from rayflow.store.base import ChunkWrite

    store = open_store(f"sqlite:///{tmp_path / 'gap.db'}")
    buffers = StreamBuffers("run_gap", store, Settings())
    buf = buffers.get("k")
    assert await buf.submit(ChunkWrite('"mine"', writer_id="w", writer_seq=0)) == 0
    outside = store.append_chunks("run_gap", "k", [ChunkWrite('"outside"')], 1 << 20)
    assert outside.seqs == [1]
    # the replayed write is a duplicate: nothing new from the actor itself
    assert await buf.submit(ChunkWrite('"mine"', writer_id="w", writer_seq=0)) is None
    reply = await buf.peek(1, 10)
    assert reply is not None and [row[1] for row in reply.rows] == ['"outside"']
    assert buf.length == 2
    await buffers.drain()
    store.close()


async def test_a_buffer_told_of_outside_commits_in_any_order_holds_each_chunk_once(
    tmp_path: Any,
) -> None:
    """Outside writers commit to the Store and tell the RunActor afterwards
    (`StreamBuffer.learn`); the run's own commits interleave. Told late (its
    rows already taken from the Store to fill a gap) or out of order, the
    tail holds every chunk once, in index order."""
    from rayflow._config import Settings
    from rayflow._runtime.stream_buffers import StreamBuffers
    from rayflow.store.base import ChunkWrite

    store = open_store(f"sqlite:///{tmp_path / 'merge.db'}")
    buffers = StreamBuffers("run_m", store, Settings())
    buf = buffers.get("k")

    def outside(value: str) -> tuple[int, str, int, None]:
        (seq,) = store.append_chunks("run_m", "k", [ChunkWrite(value)], 1 << 20).seqs
        assert seq is not None
        return (seq, value, 0, None)

    assert await buf.submit(ChunkWrite('"in0"')) == 0
    late = outside('"out1"')
    assert await buf.submit(ChunkWrite('"in2"')) == 2  # fills 1 from the Store
    await buf.learn([late])  # told after that: already held
    await buf.learn([outside('"out3"')])
    four, five = outside('"out4"'), outside('"out5"')
    await buf.learn([five])  # told out of order: 4 comes from the Store
    await buf.learn([four])
    reply = await buf.peek(0, 100)
    assert reply is not None
    assert [(r[0], r[1]) for r in reply.rows] == [
        (0, '"in0"'),
        (1, '"out1"'),
        (2, '"in2"'),
        (3, '"out3"'),
        (4, '"out4"'),
        (5, '"out5"'),
    ]
    assert buf.length == 6
    await buffers.drain()
    store.close()


async def test_a_long_poll_that_fails_reaches_every_reader_in_it() -> None:
    """A RunActor's long poll that fails with an error (the Store gone, say)
    must hand that error to every reader in it at once: none may wait on a
    poll that has ended (a hub's reader has no idle timeout)."""
    import ray

    from rayflow._runtime import actor_polls

    @ray.remote
    class StoreGone:
        async def follow_many(
            self, polls: Any, limit: int, wait_s: float, poll_id: str, inbox: Any = None
        ) -> Any:  # RunActor.follow_many's signature (a process with a push inbox names it)
            raise errors.Unavailable("the Store did not answer")
            yield {}  # a streaming generator, as RunActor.follow_many

        def kick(self, poll_id: str) -> None:
            pass

    actor = StoreGone.remote()  # type: ignore[attr-defined]
    subs = [actor_polls.subscribe(actor, "run_gone", f"k{i}", 0) for i in range(3)]
    for sub in subs:
        with pytest.raises(errors.Unavailable, match="did not answer"):
            await sub.get(30)
    ray.kill(actor)


async def test_a_claimed_run_opens_its_streams_without_a_read_and_rereads_those_written_meanwhile(
    tmp_path: Any,
) -> None:
    """A claim reads the run's streams with it (`run_batches.Start`): a
    stream opened then takes its length and closed flag from that read (no
    read of its own before the run's first commit), a key not among them has
    no rows — but a stream written from outside while the run was being
    claimed (`StreamBuffers.forget`) is read from the Store again."""
    from rayflow._config import Settings
    from rayflow._runtime import run_batches
    from rayflow._runtime.stream_buffers import StreamBuffers
    from rayflow.errors import StreamClosed
    from rayflow.store.base import ChunkWrite, RunRecord

    store = open_store(f"sqlite:///{tmp_path / 'start.db'}")
    store.put_task("t", b"blob", "{}")
    store.create_run(RunRecord(id="run_s", task_id="t"))
    store.append_chunks("run_s", "k", [ChunkWrite(f'"{i}"') for i in range(3)], 1 << 20)
    store.close_stream("run_s", "shut")
    (start,) = run_batches.start_many(store, [("run_s", "actor-1")])
    assert start.claim.claimed and start.blob == b"blob" and start.journal == []
    assert sorted(start.streams) == ["k", "shut"]
    store.append_chunks("run_s", "late", [ChunkWrite('"outside"')], 1 << 20)

    buffers = StreamBuffers("run_s", store, Settings(), known=start.streams)
    buffers.forget({"late"})
    k = buffers.get("k")
    assert k.loaded and k.length == 3
    assert await k.submit(ChunkWrite('"mine"')) == 3
    with pytest.raises(StreamClosed):
        await buffers.get("shut").submit(ChunkWrite('"no"'))
    assert await buffers.find("nobody") is None
    late = await buffers.find("late")
    assert late is not None
    await late.ready()
    assert late.length == 1
    await buffers.drain()
    store.close()
