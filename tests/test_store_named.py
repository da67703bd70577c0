"""Named streams (owned by no run) in the Store, on SQLite and PostgreSQL:
creation and its idempotence, appends by position, idempotent producers
across restarts, closing, Stream-Seq, the size limit, group commit, forks,
deletion with tombstones, expiry, and the change hook."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _store_fixtures import *  # noqa: F403  (store, store_url, ... fixtures)

from rayflow._runtime import named_signals
from rayflow._runtime.named_appender import NamedAppender
from rayflow.store import Store, open_store
from rayflow.store.base import now_ms
from rayflow.store.named import (
    NamedOutcome,
    NamedStreamSpec,
    NamedWrite,
    Producer,
)

OK, MiB = NamedOutcome.OK, 1024 * 1024


def _text(store: Store, path: str, start: int = 0) -> bytes:
    read = store.named_read(path, start, 10_000, MiB)
    return b"".join(c.data for c in read.chunks)


def _messages(store: Store, path: str, start: int = 0) -> list[bytes]:
    return [c.data for c in store.named_read(path, start, 10_000, MiB).chunks]


def _write(store: Store, path: str, *data: bytes, **kw: Any) -> Any:
    return store.named_write(NamedWrite(path, list(data), **kw), MiB)


def test_a_byte_stream_appends_by_byte_position_and_reads_from_any_offset_returned(
    store: Store,
) -> None:
    created = store.named_create(NamedStreamSpec("ds/a", "text/plain"), [b"hello"], MiB)
    assert created.outcome is OK and created.stream and created.stream.length == 5
    appended = _write(store, "ds/a", b" wor", b"ld", content_type="text/plain; charset=utf-8")
    assert appended.outcome is OK and appended.start == 5
    assert appended.stream.length == 11 and appended.stream.size_bytes == 11
    assert _text(store, "ds/a") == b"hello world"
    read = store.named_read("ds/a", 5, 10, MiB)
    assert [(c.pos, c.end, c.data) for c in read.chunks] == [(5, 11, b" world")]
    assert store.named_read("ds/a", 11, 10, MiB).chunks == []
    assert _write(store, "ds/a", b"x", content_type="application/json").outcome is (
        NamedOutcome.CONTENT_TYPE
    )
    assert _write(store, "ds/missing", b"x").outcome is NamedOutcome.MISSING
    assert store.named_read("ds/missing", 0, 10, MiB).stream is None


def test_a_json_stream_counts_messages_and_keeps_each_ones_text(store: Store) -> None:
    store.named_create(NamedStreamSpec("ds/j", "application/json"), [b'{"a":1}'], MiB)
    result = _write(store, "ds/j", b'{"b": 2}', b"[3]")
    assert result.start == 1 and result.stream.length == 3
    assert _messages(store, "ds/j") == [b'{"a":1}', b'{"b": 2}', b"[3]"]
    assert _messages(store, "ds/j", 2) == [b"[3]"]


def test_creating_again_is_idempotent_only_for_the_same_configuration(store: Store) -> None:
    spec = NamedStreamSpec("ds/c", "text/plain", ttl_s=60)
    assert store.named_create(spec, [b"x"], MiB).outcome is OK
    assert store.named_create(spec, [], MiB).outcome is NamedOutcome.EXISTS
    for other in (
        NamedStreamSpec("ds/c", "application/json", ttl_s=60),
        NamedStreamSpec("ds/c", "text/plain", ttl_s=61),
        NamedStreamSpec("ds/c", "text/plain"),
        NamedStreamSpec("ds/c", "text/plain", ttl_s=60, closed=True),
    ):
        assert store.named_create(other, [], MiB).outcome is NamedOutcome.CONFLICT
    assert _text(store, "ds/c") == b"x"


def test_producers_are_deduplicated_fenced_and_survive_a_restart(store_url: str) -> None:
    store = open_store(store_url)
    store.named_create(NamedStreamSpec("ds/p", "text/plain"), [], MiB)

    def send(s: Store, epoch: int, seq: int, data: bytes = b"d") -> Any:
        return _write(s, "ds/p", data, producer=Producer("w", epoch, seq))

    assert send(store, 0, 1).outcome is NamedOutcome.SEQ_GAP  # a new producer starts at 0
    assert send(store, 0, 0, b"a").outcome is OK
    r = send(store, 0, 1, b"b")
    assert (r.outcome, r.producer_epoch, r.producer_seq) == (OK, 0, 1)
    store.close()
    store = open_store(store_url)  # a restarted server knows the producer
    try:
        dup = send(store, 0, 0, b"a")
        assert (dup.outcome, dup.producer_seq) == (NamedOutcome.DUPLICATE, 1)
        gap = send(store, 0, 5)
        assert (gap.outcome, gap.expected_seq) == (NamedOutcome.SEQ_GAP, 2)
        assert send(store, 1, 3).outcome is NamedOutcome.EPOCH_SEQ
        assert send(store, 1, 0, b"c").outcome is OK
        stale = send(store, 0, 2)
        assert (stale.outcome, stale.producer_epoch) == (NamedOutcome.STALE_EPOCH, 1)
        assert _text(store, "ds/p") == b"abc"
        # a run's session writer: its seqs may skip (a refused write used
        # its number); a lower one is still a duplicate
        gaps = [
            _write(store, "ds/p", d, producer=Producer("run", 0, n), producer_gaps=True)
            for n, d in ((2, b"x"), (5, b"y"), (3, b"z"))
        ]
        assert [g.outcome for g in gaps] == [OK, OK, NamedOutcome.DUPLICATE]
        assert _text(store, "ds/p") == b"abcxy"
    finally:
        store.close()


def test_closing_is_durable_and_a_closing_producers_retry_is_a_duplicate(store: Store) -> None:
    store.named_create(NamedStreamSpec("ds/x", "text/plain"), [b"a"], MiB)
    closer = Producer("p", 0, 0)
    closed = _write(store, "ds/x", b"end", close=True, producer=closer)
    assert closed.outcome is OK and closed.stream.closed and closed.stream.closed_by == closer
    assert _write(store, "ds/x", b"end", close=True, producer=closer).outcome is (
        NamedOutcome.DUPLICATE
    )
    assert _write(store, "ds/x", b"more").outcome is NamedOutcome.CLOSED
    assert _write(store, "ds/x", close=True).outcome is OK  # closing again
    assert _write(store, "ds/x", close=True, producer=Producer("q", 0, 0)).outcome is (
        NamedOutcome.CLOSED
    )
    assert _text(store, "ds/x") == b"aend"
    assert store.named_info("ds/x").closed  # type: ignore[union-attr]


def test_stream_seq_must_grow_bytewise(store: Store) -> None:
    store.named_create(NamedStreamSpec("ds/s", "text/plain"), [], MiB)
    assert _write(store, "ds/s", b"1", stream_seq="b").outcome is OK
    assert _write(store, "ds/s", b"2", stream_seq="b").outcome is NamedOutcome.STREAM_SEQ
    assert _write(store, "ds/s", b"3", stream_seq="a").outcome is NamedOutcome.STREAM_SEQ
    assert _write(store, "ds/s", b"4", stream_seq="ba").outcome is OK
    assert _text(store, "ds/s") == b"14"


def test_a_write_past_the_size_limit_stores_nothing(store: Store) -> None:
    store.named_create(NamedStreamSpec("ds/big", "text/plain"), [b"12345"], 10)
    result = store.named_write(NamedWrite("ds/big", [b"123456"]), 10)
    assert (result.outcome, result.size) == (NamedOutcome.TOO_LARGE, 11)
    assert store.named_write(NamedWrite("ds/big", [b"12345"]), 10).outcome is OK
    assert store.named_create(NamedStreamSpec("ds/big2"), [b"x" * 11], 10).outcome is (
        NamedOutcome.TOO_LARGE
    )
    assert store.named_info("ds/big2") is None


def test_a_batch_of_writes_to_many_streams_commits_once_each_alone_in_order(
    store: Store,
) -> None:
    for path in ("ds/1", "ds/2"):
        store.named_create(NamedStreamSpec(path, "text/plain"), [], MiB)
    changed: list[list[str]] = []
    store.on_named_change = lambda paths, followed: changed.append(paths)
    results = store.named_write_many(
        [
            NamedWrite("ds/2", [b"a"]),
            NamedWrite("ds/1", [b"b"], producer=Producer("p", 0, 0)),
            NamedWrite("ds/1", [b"c"], producer=Producer("p", 0, 1)),
            NamedWrite("ds/1", [b"x"], producer=Producer("p", 0, 1)),  # a retry in the batch
            NamedWrite("ds/nope", [b"d"]),
            NamedWrite("ds/2", [b"e"], close=True),
            NamedWrite("ds/2", [b"f"]),
        ],
        MiB,
    )
    assert [r.outcome for r in results] == [
        OK,
        OK,
        OK,
        NamedOutcome.DUPLICATE,
        NamedOutcome.MISSING,
        OK,
        NamedOutcome.CLOSED,
    ]
    assert [r.start for r in results[:3]] == [0, 0, 1]
    assert results[0].stream.length == 1 and results[5].stream.length == 2  # as each left it
    assert _text(store, "ds/1") == b"bc" and _text(store, "ds/2") == b"ae"
    assert changed == [["ds/1", "ds/2"]]  # one commit, one call


def test_a_fork_starts_as_a_prefix_of_its_source_and_lives_on_its_own(store: Store) -> None:
    store.named_create(NamedStreamSpec("ds/src", "text/plain", ttl_s=300), [b"first"], MiB)
    _write(store, "ds/src", b"second", producer=Producer("p", 3, 0))
    fork = store.named_create(
        NamedStreamSpec("ds/fork", forked_from="ds/src", fork_offset=5, fork_sub_offset=3),
        [b"XY"],
        MiB,
    )
    assert fork.outcome is OK and fork.stream.content_type == "text/plain"
    assert fork.stream.ttl_s == 300  # inherited
    assert _text(store, "ds/fork") == b"firstsecXY" and fork.stream.size_bytes == 10
    # no producer state crosses: epoch 3 is unknown to the fork
    assert _write(store, "ds/fork", b"!", producer=Producer("p", 0, 0)).outcome is OK
    assert _write(store, "ds/src", b"+").outcome is OK
    assert _text(store, "ds/fork") == b"firstsecXY!"
    same = NamedStreamSpec("ds/fork", forked_from="ds/src", fork_offset=5, fork_sub_offset=3)
    assert store.named_create(same, [], MiB).outcome is NamedOutcome.EXISTS
    other = NamedStreamSpec("ds/fork", forked_from="ds/src", fork_offset=5, fork_sub_offset=2)
    assert store.named_create(other, [], MiB).outcome is NamedOutcome.CONFLICT
    for bad in (
        NamedStreamSpec("ds/f2", forked_from="ds/src", fork_offset=99),
        NamedStreamSpec("ds/f2", forked_from="ds/src", fork_offset=0, fork_sub_offset=6),
        NamedStreamSpec("ds/f2", forked_from="ds/src", fork_sub_offset=1),
    ):
        assert store.named_create(bad, [], MiB).outcome is NamedOutcome.BAD_OFFSET
    assert store.named_create(NamedStreamSpec("ds/f2", forked_from="ds/none"), [], MiB).outcome is (
        NamedOutcome.SOURCE_MISSING
    )
    assert store.named_create(
        NamedStreamSpec("ds/f2", "application/json", forked_from="ds/src"), [], MiB
    ).outcome is (NamedOutcome.CONFLICT)


def test_a_json_fork_takes_whole_messages_of_a_batch(store: Store) -> None:
    store.named_create(NamedStreamSpec("ds/js", "application/json"), [b"1", b"2", b"3"], MiB)
    fork = store.named_create(
        NamedStreamSpec("ds/jf", forked_from="ds/js", fork_offset=0, fork_sub_offset=2), [], MiB
    )
    assert fork.outcome is OK and _messages(store, "ds/jf") == [b"1", b"2"]
    over = NamedStreamSpec("ds/jf2", forked_from="ds/js", fork_offset=0, fork_sub_offset=4)
    assert store.named_create(over, [], MiB).outcome is NamedOutcome.BAD_OFFSET


def test_a_deleted_source_of_forks_is_gone_until_its_last_fork_is_deleted(
    store: Store,
) -> None:
    store.named_create(NamedStreamSpec("ds/a", "text/plain"), [b"abc"], MiB)
    store.named_create(NamedStreamSpec("ds/b", forked_from="ds/a"), [], MiB)
    store.named_create(NamedStreamSpec("ds/c", forked_from="ds/b"), [], MiB)
    assert store.named_delete("ds/a") is OK
    assert store.named_delete("ds/b") is OK
    for path in ("ds/a", "ds/b"):
        assert store.named_info(path).deleted  # type: ignore[union-attr]
        assert store.named_delete(path) is NamedOutcome.GONE
        assert _write(store, path, b"x").outcome is NamedOutcome.GONE
        assert store.named_create(NamedStreamSpec(path, "text/plain"), [], MiB).outcome is (
            NamedOutcome.CONFLICT
        )
    fork_of_gone = NamedStreamSpec("ds/d", forked_from="ds/a")
    assert store.named_create(fork_of_gone, [], MiB).outcome is NamedOutcome.SOURCE_GONE
    assert _text(store, "ds/c") == b"abc"  # a fork keeps its data
    assert store.named_delete("ds/c") is OK  # the last fork: the chain goes
    assert [store.named_info(p) for p in ("ds/a", "ds/b", "ds/c")] == [None, None, None]
    assert store.named_delete("ds/a") is NamedOutcome.MISSING
    assert store.named_create(NamedStreamSpec("ds/a", "text/plain"), [], MiB).outcome is OK


def test_an_expired_stream_is_missing_and_reads_extend_a_sliding_ttl(store: Store) -> None:
    now = now_ms()
    store.named_create(NamedStreamSpec("ds/t", "text/plain", ttl_s=1), [b"x"], MiB)
    store.named_create(NamedStreamSpec("ds/e", "text/plain", expires_at=now - 1), [], MiB)
    store.named_create(NamedStreamSpec("ds/keep", "text/plain"), [], MiB)
    assert store.named_info("ds/e") is None
    assert _write(store, "ds/e", b"x").outcome is NamedOutcome.MISSING
    t = store.named_info("ds/t")
    assert t is not None and t.deadline() == t.touched_at + 1000
    with store._tx() as c:  # type: ignore[attr-defined]  # as if read or written 2 s ago
        c.execute("UPDATE named_streams SET touched_at = ? WHERE path = 'ds/t'", (now - 2000,))
    assert store.named_info("ds/t") is None
    store.named_touch(["ds/t"])
    assert store.named_info("ds/t") is not None  # type: ignore[unreachable]
    with store._tx() as c:  # type: ignore[attr-defined]
        c.execute("UPDATE named_streams SET touched_at = ? WHERE path = 'ds/t'", (now - 2000,))
    assert store.named_delete_expired() == 2
    assert store.named_info("ds/keep") is not None
    assert store.named_create(NamedStreamSpec("ds/e", "application/json"), [], MiB).outcome is OK


def test_concurrent_producers_on_one_stream_each_store_every_batch_once(
    store_url: str,
) -> None:
    """Four writers (own connections), each retrying every batch once: no
    gap, no duplicate, each producer's batches in its order."""
    setup = open_store(store_url)
    setup.named_create(NamedStreamSpec("ds/race", "application/json"), [], MiB)
    setup.close()
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def producer(i: int) -> list[NamedOutcome]:
        barrier.wait(timeout=30)
        outcomes = []
        for seq in range(25):
            w = NamedWrite("ds/race", [f"[{i},{seq}]".encode()], producer=Producer(f"p{i}", 0, seq))
            outcomes.append(stores[i].named_write(w, MiB).outcome)
            outcomes.append(stores[i].named_write(w, MiB).outcome)  # the retry
        return outcomes

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(producer, range(4)))
        messages = _messages(stores[0], "ds/race")
    finally:
        for s in stores:
            s.close()
    for outcomes in results:
        assert outcomes == [OK, NamedOutcome.DUPLICATE] * 25
    assert len(messages) == 100
    for i in range(4):
        assert [m for m in messages if m.startswith(f"[{i},".encode())] == [
            f"[{i},{seq}]".encode() for seq in range(25)
        ]


def test_named_list_pages_through_live_streams_under_a_prefix(store: Store) -> None:
    for path in ("sessions/1/out", "sessions/1/in", "sessions/2/out", "ds/x"):
        store.named_create(NamedStreamSpec(path, "application/json"), [], MiB)
    page = store.named_list("sessions/", limit=2)
    assert [s.path for s in page] == ["sessions/1/in", "sessions/1/out"]
    rest = store.named_list("sessions/", after=page[-1].path)
    assert [s.path for s in rest] == ["sessions/2/out"]


def test_the_appender_commits_writes_made_meanwhile_together(store: Store) -> None:
    """Writes to several streams made while a commit is in flight share the
    next commit; each gets its own answer; readers' events are set."""
    for path in ("ds/g1", "ds/g2"):
        store.named_create(NamedStreamSpec(path, "text/plain"), [], MiB)
    commits: list[list[str]] = []

    def changed(paths: list[str], followed: list[str]) -> None:
        commits.append(paths)
        named_signals.signals().notify(paths)

    store.on_named_change = changed

    async def main() -> list[Any]:
        appender = NamedAppender(store, MiB)
        woken = named_signals.signals().event("ds/g2")
        first = appender.submit(NamedWrite("ds/g1", [b"a"]))
        await asyncio.sleep(0)  # the first commit leaves alone
        rest = [appender.submit(NamedWrite(f"ds/g{1 + i % 2}", [b"%d" % i])) for i in range(10)]
        results = await asyncio.gather(first, *rest)
        await asyncio.wait_for(woken.wait(), 5)
        return results

    results = asyncio.run(main())
    assert [r.outcome for r in results] == [OK] * 11
    assert commits == [["ds/g1"], ["ds/g1", "ds/g2"]]
    assert _text(store, "ds/g1") == b"a02468" and _text(store, "ds/g2") == b"13579"


def test_leased_writes_tell_other_processes_only_while_a_reader_follows(store: Store) -> None:
    """A Durable Streams append (`leased`) is told to other processes only
    while a reader holds a follow lease on its stream; the lease is seen
    under the commit's row lock, survives until it runs out, and is renewed
    only when short; every other write is always told."""
    for path in ("ds/f", "ds/g"):
        store.named_create(NamedStreamSpec(path, "text/plain"), [], MiB)
    told: list[tuple[list[str], list[str]]] = []
    store.on_named_change = lambda paths, followed: told.append((paths, followed))
    both = [NamedWrite("ds/f", [b"a"], leased=True), NamedWrite("ds/g", [b"b"], leased=True)]
    store.named_write_many(both, MiB)
    assert told.pop() == (["ds/f", "ds/g"], [])  # local readers woken, no one else told
    store.named_write_many([NamedWrite("ds/f", [b"c"])], MiB)  # not leased: always told
    assert told.pop() == (["ds/f"], ["ds/f"])
    store.named_write_many([both[0], NamedWrite("ds/f", [b"d"]), both[1]], MiB)  # mixed
    assert told.pop() == (["ds/f", "ds/g"], ["ds/f"])

    now = now_ms()
    assert store.named_follow("ds/f", now + 600_000, now + 300_000) is True
    assert store.named_follow("ds/f", now + 600_000, now + 300_000) is False  # long enough
    assert store.named_follow("ds/nope", now + 600_000, now + 300_000) is False
    info = store.named_info("ds/f")
    assert info is not None and info.followed_until == now + 600_000
    store.named_write_many(both, MiB)
    assert told.pop() == (["ds/f", "ds/g"], ["ds/f"])
    later = now + 400_000  # renewed when less than the margin is left
    assert store.named_follow("ds/f", later + 600_000, later + 300_000) is True
    assert store.named_info("ds/f").followed_until == later + 600_000  # type: ignore[union-attr]

    # a lease that ran out tells no one any more
    store.named_follow("ds/g", now - 1, now - 1)  # written: the lease ended already
    store.named_write_many(both[1:], MiB)
    assert told.pop() == (["ds/g"], [])


def test_idle_producers_of_durable_streams_are_forgotten(store: Store) -> None:
    """The protocol's producer state cleanup: a producer that has not written
    to a stream since `before` is forgotten there (its retry is no longer a
    duplicate: a new producer starts at seq 0), others and other prefixes
    are kept, and the sweep goes `limit` rows at a time."""
    store.named_create(NamedStreamSpec("ds/p", "text/plain"), [], MiB)
    store.named_create(NamedStreamSpec("sessions/s/out", "text/plain"), [], MiB)
    for i in range(3):
        assert _write(store, "ds/p", b"x", producer=Producer(f"old{i}", 0, 0)).outcome is OK
    assert _write(store, "sessions/s/out", b"x", producer=Producer("old", 0, 0)).outcome is OK
    cutoff = now_ms() + 1
    while now_ms() < cutoff:  # the next writes are after the cutoff
        pass
    assert _write(store, "ds/p", b"y", producer=Producer("fresh", 0, 0)).outcome is OK

    assert store.named_expire_producers("ds/", cutoff, limit=2) == 2
    assert store.named_expire_producers("ds/", cutoff, limit=2) == 1
    assert store.named_expire_producers("ds/", cutoff) == 0
    retry = _write(store, "ds/p", b"x", producer=Producer("old0", 0, 0))
    assert retry.outcome is OK  # forgotten: seq 0 is a new producer's first write
    gap = _write(store, "ds/p", b"x", producer=Producer("old1", 0, 1))
    assert gap.outcome is NamedOutcome.SEQ_GAP and gap.expected_seq == 0
    # kept: the producer that wrote after the cutoff, and other prefixes' producers
    dup = _write(store, "ds/p", b"y", producer=Producer("fresh", 0, 0))
    assert dup.outcome is NamedOutcome.DUPLICATE
    again = _write(store, "sessions/s/out", b"x", producer=Producer("old", 0, 0))
    assert again.outcome is NamedOutcome.DUPLICATE
