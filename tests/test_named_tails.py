"""The rows a RunActor keeps of what its runs appended to named streams
(rayflow/_runtime/named_tails.py), which it pushes to session readers: only
committed rows at the Store's positions, contiguous from the reader's
position or nothing, bounded per path and per process. No Ray needed."""

from __future__ import annotations

import json

from rayflow._runtime import named_tails
from rayflow._runtime.named_tails import NamedTails
from rayflow.store.named import NamedOutcome, NamedStreamInfo, NamedWriteResult


def result(start: int | None, outcome: NamedOutcome = NamedOutcome.OK, incarnation: str = "s1"):
    info = NamedStreamInfo(
        path="sessions/x/out",
        stream_id=incarnation,
        content_type="application/json",
        length=0,
        size_bytes=0,
        closed=False,
        closed_by=None,
        ttl_s=None,
        expires_at=None,
        touched_at=0,
        last_stream_seq=None,
        forked_from=None,
        fork_offset=None,
        fork_sub_offset=0,
        deleted=False,
        created_at=0,
        updated_at=1234,
    )
    return NamedWriteResult(outcome, info, start)


def msg(i: int, size: int = 0) -> bytes:
    return json.dumps({"data": i, "pad": "x" * size}).encode()


def seqs(reply) -> list[int] | None:  # type: ignore[no-untyped-def]
    return None if reply is None else [r[0] for r in reply.rows]


def test_a_tail_serves_committed_rows_from_the_readers_position_only(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tails = NamedTails()
    path = "sessions/x/out"
    assert tails.peek(path, 0, 10) is None  # nothing known: the reader waits
    tails.learned(path, result(0), [msg(0), msg(1)])
    tails.learned(path, result(None, NamedOutcome.DUPLICATE), [msg(9)])  # stored nothing
    reply = tails.peek(path, 0, 10)
    assert seqs(reply) == [0, 1] and reply.length == 2
    assert reply.rows[0][1] == msg(0).decode() and reply.rows[0][2] == 1234  # the commit's time
    assert seqs(tails.peek(path, 1, 1)) == [1]
    assert tails.peek(path, 2, 10) is None
    # row 2 written by another process: a reader at 2 waits (the feed wakes it)
    tails.learned(path, result(3), [msg(3)])
    assert tails.peek(path, 2, 10) is None and seqs(tails.peek(path, 0, 10)) == [0, 1]
    # a new incarnation of the path (an expired channel made again) starts over
    tails.learned(path, result(0, incarnation="s2"), [msg(100)])
    assert seqs(tails.peek(path, 0, 10)) == [0] and tails.peek(path, 1, 10) is None

    # bounded per path: the newest MAX_ROWS rows, and bytes (always the newest row)
    tails.learned(path, result(1, incarnation="s2"), [msg(i) for i in range(1, 200)])
    kept = seqs(tails.peek(path, 200 - named_tails.MAX_ROWS, 1000))
    assert kept == list(range(200 - named_tails.MAX_ROWS, 200))
    assert tails.peek(path, 0, 10) is None
    big = named_tails.MAX_BYTES
    tails.learned(path, result(200, incarnation="s2"), [msg(200, big)])
    assert seqs(tails.peek(path, 200, 10)) == [200] and tails.peek(path, 199, 10) is None

    # bounded per process: least recently written paths go first, a watched
    # one stays (empty) so that its readers' registration holds
    monkeypatch.setattr(named_tails, "MAX_PATHS", 3)
    small = NamedTails()
    watched = small.tail("p0")
    watched.watchers.add(lambda: None)
    for i in range(5):
        small.learned(f"p{i}", result(0), [msg(i)])
    assert small.peek("p0", 0, 1) is not None  # watched, written first
    assert small.peek("p1", 0, 1) is None and small.peek("p2", 0, 1) is None
    assert seqs(small.peek("p4", 0, 1)) == [0]
    monkeypatch.setattr(named_tails, "MAX_TOTAL_BYTES", 1000)
    small.learned("p5", result(0), [msg(5, 2000)])
    assert seqs(small.peek("p5", 0, 1)) == [0]  # the newest row of the path written now
    assert small.tail("p0") is watched and small.peek("p0", 0, 1) is None  # emptied


async def test_push_targets_outlive_a_follow_and_a_listener_holds_contiguous_rows(
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """Where a commit's rows are pushed: the reader processes that followed
    the path lately (`push_outbox.KEEP_S`), not only while a `follow_many`
    call of theirs is in flight; what a reader's `Listener` keeps of them."""
    from rayflow._runtime import push_listener, push_outbox

    tails = NamedTails()
    path = "sessions/x/out"
    assert tails.targets(path) == []
    inbox = ("node", 1, "token")
    tails.tail(path).followed(inbox, "run_a")
    tails.tail(path).followed(inbox, "run_a")  # seen again: one target
    assert tails.targets(path) == [(inbox, "run_a")]
    tails.tail(path).followed(("node", 2, "t2"), "run_b")
    tails.tail(path).readers[(inbox, "run_a")] -= push_outbox.KEEP_S  # left long ago
    assert tails.targets(path) == [(("node", 2, "t2"), "run_b")]
    for i in range(named_tails.MAX_READERS + 5):
        tails.tail(path).followed(("node", i, "t"), "run_c")
    assert len(tails.targets(path)) == named_tails.MAX_READERS  # the most recent

    held: dict[str, list[push_listener.Listener]] = {}
    listener = push_listener.Listener(held, path, 3)

    def rows(*seq: int) -> list:  # type: ignore[type-arg]
        return [(s, f"r{s}", 1234, None) for s in seq]

    assert listener.offer(rows(4, 5)) == 0  # a gap before it: nothing
    assert listener.offer(rows(1, 2, 3, 4)) == 2  # from its position on
    assert listener.offer(rows(4)) == 0  # held already
    await listener.wait(5)  # rows held: at once
    assert [r[0] for r in listener.rows] == [3, 4]
    listener.at(4)  # the reader got 3 another way
    assert [r[0] for r in listener.take()] == [4] and listener.position == 5
    listener.at(9)
    monkeypatch.setattr(push_listener, "MAX_HELD", 3)
    assert listener.offer(rows(9, 10, 11, 12)) == 0 and listener.full  # too far behind
    assert listener.offer(rows(9)) == 0 and listener.rows == []
    listener.at(9)  # its reader read the Store and listens again
    assert listener.offer(rows(9)) == 1
    listener.close()
    assert held == {}
