"""The Store contract, tested directly against SQLite and PostgreSQL.

Every test taking `store` (or `store_url`) runs once per backend. The
concurrency tests use separate store objects (separate connections) or
separate processes, as the Controller, inbox actors and RunActors do.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _store_fixtures import *  # noqa: F403  (store, store_url, ... fixtures)
from conftest import eventually

from rayflow import errors
from rayflow.store import Store, open_store
from rayflow.store._schema import SCHEMA_VERSION
from rayflow.store._sql_base import _Cursor
from rayflow.store.base import (
    AppendResult,
    ChunkWrite,
    JournalEntry,
    Refused,
    RunRecord,
    Waitpoint,
    now_ms,
)
from rayflow.store.sqlite import SQLiteStore

MiB = 1024 * 1024
_spawn = multiprocessing.get_context("spawn")


def _run(run_id: str, **fields: Any) -> RunRecord:
    return RunRecord(id=run_id, task_id=fields.pop("task_id", "task-a"), **fields)


def _chunks(*values: object) -> list[ChunkWrite]:
    return [ChunkWrite(data=json.dumps(v)) for v in values]


def _schema_versions(store: Store) -> list[int]:
    with store._tx() as c:  # type: ignore[attr-defined]
        return [int(r[0]) for r in c.execute("SELECT version FROM schema_version ORDER BY 1")]


def _in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, range(n)))


# -- schema --------------------------------------------------------------------


def test_migrate_twice_is_a_no_op(store: Store) -> None:
    store.create_run(_run("run_1"))
    store.migrate()
    store.migrate()
    assert _schema_versions(store) == list(range(1, SCHEMA_VERSION + 1))
    got = store.get_run("run_1")
    assert got is not None and got.task_id == "task-a"


def _connect_unmigrated(url: str) -> Any:
    if url.startswith("postgresql://"):
        from rayflow.store.postgres import PostgresStore

        return PostgresStore(url)
    return SQLiteStore(url.removeprefix("sqlite:///"))


def _open_and_migrate(url: str, barrier: Any) -> None:
    s = _connect_unmigrated(url)
    barrier.wait(timeout=60)  # connected: now all migrate at the same moment
    s.migrate()
    s.close()


def test_processes_opening_a_new_store_at_once_migrate_it_once(store_url: str) -> None:
    barrier = _spawn.Barrier(3)
    procs = [_spawn.Process(target=_open_and_migrate, args=(store_url, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    opened = open_store(store_url)
    try:
        assert _schema_versions(opened) == list(range(1, SCHEMA_VERSION + 1))
    finally:
        opened.close()


# -- tasks ---------------------------------------------------------------------


def test_task_blobs_round_trip_as_bytes(store: Store) -> None:
    blob = bytes(range(256)) * 3
    store.put_task("task-b", blob)
    store.put_task("task-a", b"old")
    store.put_task("task-a", b"new")
    assert store.get_task("task-b") == blob
    assert store.get_task("task-a") == b"new"
    assert store.get_task("missing") is None
    assert store.list_task_ids() == ["task-a", "task-b"]


# -- runs ----------------------------------------------------------------------


def test_create_and_get_run_round_trips_every_field(store: Store) -> None:
    run = RunRecord(
        id="run_1",
        task_id="task-a",
        status="EXECUTING",
        payload='{"x": 1}',
        parent_id="run_0",
        root_id="run_0",
        options='{"retry": 3}',
        tags='["a"]',
        idempotency_key="key-1",
        attempt=2,
        started_at=123,
        actor_name="rayflow-run-run_1",
    )
    created, is_new = store.create_run(run)
    assert is_new and created == run
    assert store.get_run("run_1") == run
    assert store.get_run("nope") is None


def test_an_idempotency_key_returns_the_existing_run(store: Store) -> None:
    first, created = store.create_run(_run("run_1", idempotency_key="k"))
    assert created
    again, created = store.create_run(_run("run_2", idempotency_key="k"))
    assert not created and again.id == "run_1"
    assert store.get_run("run_2") is None
    # the key is per task, and runs without a key never collide
    other, created = store.create_run(_run("run_3", task_id="task-b", idempotency_key="k"))
    assert created and other.id == "run_3"
    assert store.create_run(_run("run_4"))[1]
    assert store.create_run(_run("run_5"))[1]


def test_concurrent_triggers_with_one_idempotency_key_create_one_run(
    store_url: str,
) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def trigger(i: int) -> tuple[str, bool]:
        barrier.wait(timeout=30)
        run, created = stores[i].create_run(_run(f"run_{i}", idempotency_key="once"))
        return run.id, created

    try:
        results = _in_threads(4, trigger)
    finally:
        for s in stores:
            s.close()
    assert sum(created for _, created in results) == 1
    winner = next(run_id for run_id, created in results if created)
    assert {run_id for run_id, _ in results} == {winner}


def test_update_run_sets_fields_and_updated_at(store: Store) -> None:
    store.create_run(_run("run_1", updated_at=1))
    store.update_run("run_1", status="EXECUTING", attempt=1, actor_name="a1", started_at=5)
    got = store.get_run("run_1")
    assert got is not None
    assert (got.status, got.attempt, got.actor_name, got.started_at) == ("EXECUTING", 1, "a1", 5)
    assert got.updated_at > 1
    with pytest.raises(ValueError, match="unknown run fields"):
        store.update_run("run_1", colour="blue")


def test_finish_run_closes_its_streams_and_only_happens_once(store: Store) -> None:
    store.create_run(_run("run_1", status="WAITING", actor_name="a1"))
    store.append_chunks("run_1", "default", _chunks("a"), MiB)
    store.append_chunks("run_1", "logs", _chunks("b"), MiB)
    store.put_waitpoint(Waitpoint("run_1", "approval", None, None, "PENDING", None))
    assert store.finish_run("run_1", "COMPLETED", '{"ok": true}', None)
    got = store.get_run("run_1")
    assert got is not None and got.finished
    assert (got.status, got.output, got.error, got.actor_name) == (
        "COMPLETED",
        '{"ok": true}',
        None,
        None,
    )
    assert got.finished_at is not None
    assert [(s.key, s.closed) for s in store.list_streams("run_1")] == [
        ("default", True),
        ("logs", True),
    ]
    assert store.get_waitpoint("run_1") is None
    # a second finish (a late cancel, a duplicate completion) changes nothing
    assert not store.finish_run("run_1", "CANCELED", None, '{"name": "x"}')
    again = store.get_run("run_1")
    assert again is not None and (again.status, again.output) == ("COMPLETED", '{"ok": true}')


def test_list_runs_filters_and_orders_newest_first(store: Store) -> None:
    store.create_run(_run("r1", created_at=1000, status="COMPLETED"))
    store.create_run(_run("r2", created_at=2000, task_id="task-b", parent_id="r1"))
    store.create_run(_run("r3", created_at=3000, status="EXECUTING", parent_id="r1"))
    store.create_run(_run("r4", created_at=4000, status="WAITING"))

    def ids(**kw: Any) -> list[str]:
        return [r.id for r in store.list_runs(**kw)]

    assert ids() == ["r4", "r3", "r2", "r1"]
    assert ids(statuses=["EXECUTING", "WAITING"]) == ["r4", "r3"]
    assert ids(task_id="task-b") == ["r2"]
    assert ids(parent_id="r1") == ["r3", "r2"]
    assert ids(limit=2) == ["r4", "r3"]
    assert ids(before_created_at=3000) == ["r2", "r1"]
    assert ids(task_id="task-a", statuses=["QUEUED", "COMPLETED"]) == ["r1"]


def test_a_tag_filter_matches_case_before_the_limit(store: Store) -> None:
    """One run tagged `vip` behind 600 newer runs tagged `VIP` (issue 20,
    item 13): the exact-case match is part of the query, not a filter
    applied to the newest `limit` rows."""
    store.create_run(_run("vip", created_at=1, tags='["vip"]'))
    store.create_runs([_run(f"VIP{i:04d}", created_at=10 + i, tags='["VIP"]') for i in range(600)])
    assert [r.id for r in store.list_runs(tags=["vip"], limit=500)] == ["vip"]
    assert len(store.list_runs(tags=["VIP"], limit=500)) == 500
    # a tag with LIKE's wildcards in it is matched literally
    store.create_run(_run("pct", created_at=2, tags='["50%_off"]'))
    assert [r.id for r in store.list_runs(tags=["50%_off"])] == ["pct"]
    assert store.list_runs(tags=["50%"]) == []


def test_recoverable_runs_come_in_pages_by_id(store: Store) -> None:
    """What a starting Controller launches, read a page at a time (issue 11
    item 8): active runs and waiting runs whose waitpoint is no longer
    pending, never finished runs or runs still waiting for a message."""
    queued = [_run(f"q{i:04d}") for i in range(1100)]
    store.create_runs(queued)
    store.create_run(_run("e1", status="EXECUTING"))
    store.create_run(_run("done", status="COMPLETED"))
    store.create_run(_run("w-pending", status="WAITING"))
    store.put_waitpoint(Waitpoint("w-pending", "approval", None, None, "PENDING", None))
    store.create_run(_run("w-resolved", status="WAITING"))
    store.put_waitpoint(Waitpoint("w-resolved", "approval", None, None, "RESOLVED", 0))
    store.create_run(_run("w-none", status="WAITING"))

    pages: list[list[str]] = []
    after = None
    while True:
        page = [r.id for r in store.recoverable_runs(after, 500)]
        pages.append(page)
        if len(page) < 500:
            break
        after = page[-1]
    assert [len(p) for p in pages] == [500, 500, 103]
    found = [run_id for page in pages for run_id in page]
    assert found == sorted(found)  # by id: the cursor never skips or repeats
    expected = {r.id for r in queued} | {"e1", "w-resolved", "w-none"}
    assert set(found) == expected and len(found) == len(expected)


# -- output streams ------------------------------------------------------------


def test_append_assigns_consecutive_indexes_and_reads_from_the_middle(store: Store) -> None:
    first = store.append_chunks("run_1", "default", _chunks(*range(60)), MiB)
    assert first.seqs == list(range(60)) and first.length == 60
    second = store.append_chunks("run_1", "default", _chunks(*range(60, 100)), MiB)
    assert second.seqs == list(range(60, 100)) and second.length == 100
    middle = store.read_chunks("run_1", "default", 37, 5)
    assert [c.seq for c in middle] == [37, 38, 39, 40, 41]
    assert [json.loads(c.data) for c in middle] == [37, 38, 39, 40, 41]
    assert [c.seq for c in store.read_chunks("run_1", "default", 98, 10)] == [98, 99]
    assert store.read_chunks("run_1", "default", 100, 10) == []
    # streams of one run are independent
    assert store.append_chunks("run_1", "other", _chunks("x"), MiB).seqs == [0]
    info = store.stream_info("run_1", "default")
    assert info is not None
    assert (info.length, info.closed) == (100, False)
    assert info.size_bytes == sum(len(json.dumps(i)) for i in range(100))
    assert store.stream_info("run_1", "missing") is None
    # many in one read, in the order asked (the first writes of runs starting together)
    keys = [("run_1", "missing"), ("run_1", "other"), ("run_2", "default"), ("run_1", "default")]
    assert store.stream_infos(keys) == [store.stream_info(r, k) for r, k in keys]
    assert [i.length if i else None for i in store.stream_infos(keys)] == [None, 1, None, 100]
    assert store.stream_infos([]) == []
    # every stream of many runs in one read (what the runs claimed together start with)
    assert store.list_streams_many(["run_2", "run_1", "run_2"]) == [
        [],
        store.list_streams("run_1"),
        [],
    ]
    assert [i.key for i in store.list_streams_many(["run_1"])[0]] == ["default", "other"]
    assert store.list_streams_many([]) == []


def test_chunks_keep_their_json_text_and_record_id(store: Store) -> None:
    data = json.dumps({"text": "héllo ✓", "n": [1, 2.5, None]})
    store.append_chunks("run_1", "k", [ChunkWrite(data=data, record_id="rec-1")], MiB)
    [chunk] = store.read_chunks("run_1", "k", 0, 10)
    assert (chunk.seq, chunk.data, chunk.record_id) == (0, data, "rec-1")
    assert abs(chunk.created_at - now_ms()) < 60_000


def test_replayed_writes_are_dropped_without_leaving_a_gap(store: Store) -> None:
    def w(seq: int, value: object) -> ChunkWrite:
        return ChunkWrite(data=json.dumps(value), writer_id="w1", writer_seq=seq)

    first = store.append_chunks("run_1", "k", [w(0, "a"), w(1, "b"), w(1, "b"), w(0, "a")], MiB)
    assert first.seqs == [0, 1, None, None] and first.length == 2
    # a revived run replays its writes, then continues
    replay = store.append_chunks(
        "run_1", "k", [w(0, "a"), w(1, "b"), ChunkWrite(data='"anon"'), w(2, "c")], MiB
    )
    assert replay.seqs == [None, None, 2, 3] and replay.length == 4
    assert [json.loads(c.data) for c in store.read_chunks("run_1", "k", 0, 10)] == [
        "a",
        "b",
        "anon",
        "c",
    ]
    store.append_chunks("run_1", "other", [ChunkWrite(data="1", writer_id="w1", writer_seq=7)], MiB)
    assert store.writer_positions("run_1") == {("k", "w1"): 2, ("other", "w1"): 7}
    assert store.writer_positions("run_2") == {}


def test_a_batch_past_the_size_limit_stores_none_of_its_chunks(store: Store) -> None:
    store.append_chunks("run_1", "k", [ChunkWrite(data='"abc"', writer_id="w", writer_seq=0)], 10)
    batch = [
        ChunkWrite(data='"d"', writer_id="w", writer_seq=1),
        ChunkWrite(data='"efgh"', writer_id="w", writer_seq=2),
    ]
    with pytest.raises(errors.StreamTooLarge, match="nothing of this write was stored") as err:
        store.append_chunks("run_1", "k", batch, 10)
    assert (err.value.run_id, err.value.stream, err.value.size, err.value.limit) == (
        "run_1",
        "k",
        14,
        10,
    )
    info = store.stream_info("run_1", "k")
    assert info is not None and (info.length, info.size_bytes) == (1, 5)
    assert [c.data for c in store.read_chunks("run_1", "k", 0, 10)] == ['"abc"']
    assert store.writer_positions("run_1") == {("k", "w"): 0}
    # the limit is in bytes of UTF-8, and a stream may fill it exactly
    assert store.append_chunks("run_1", "k", _chunks("d", "e"), 11).seqs == [1, 2]
    with pytest.raises(errors.StreamTooLarge):
        store.append_chunks("run_1", "k2", [ChunkWrite(data='"éé"')], 5)
    assert store.stream_info("run_1", "k2") is None


def test_appends_to_several_streams_commit_together_or_not_at_all(store: Store) -> None:
    results = store.append_chunks_many(
        [
            ("run_b", "k", _chunks("b0", "b1")),
            ("run_a", "k", _chunks("a0")),
            ("run_a", "other", [ChunkWrite(data='"o0"', writer_id="w", writer_seq=0)]),
        ],
        1000,
    )
    # results come back in the order asked, whatever order the streams were locked in
    assert [(r.seqs, r.length) for r in results] == [([0, 1], 2), ([0], 1), ([0], 1)]
    with pytest.raises(errors.StreamTooLarge) as err:
        store.append_chunks_many(
            [
                ("run_a", "k", _chunks("a1")),
                ("run_b", "k", [ChunkWrite(data='"' + "x" * 2000 + '"')]),
            ],
            1000,
        )
    assert (err.value.run_id, err.value.stream) == ("run_b", "k")
    # the stream that fitted was rolled back with the one that did not
    assert [c.data for c in store.read_chunks("run_a", "k", 0, 10)] == ['"a0"']
    assert [c.data for c in store.read_chunks("run_b", "k", 0, 10)] == ['"b0"', '"b1"']
    assert store.writer_positions("run_a") == {("other", "w"): 0}


def test_a_guarded_append_refuses_item_by_item_what_an_outside_writer_may_not_write(
    store: Store,
) -> None:
    """Unknown run, finished run, closed stream: each refused alone, nothing
    of it stored; a retried write already stored still answers None."""
    store.create_run(_run("run_a", status="EXECUTING"))
    store.create_run(_run("run_f", status="EXECUTING"))
    store.append_chunks("run_f", "old", _chunks("f0"), MiB)
    store.finish_run("run_f", "COMPLETED", None, None)
    stored = ChunkWrite(data='"s0"', writer_id="w", writer_seq=0)
    store.append_chunks("run_a", "shut", [stored], MiB)
    store.close_stream("run_a", "shut")
    results = store.append_chunks_guarded(
        [
            ("run_a", "k", _chunks("a0", "a1")),
            ("run_x", "k", _chunks("x0")),
            ("run_f", "new", _chunks("f1")),
            ("run_f", "old", _chunks("f1")),
            ("run_a", "shut", [ChunkWrite(data='"s1"', writer_id="w", writer_seq=1)]),
            ("run_a", "shut", [stored]),
        ],
        MiB,
    )
    assert results == [
        AppendResult(seqs=[0, 1], length=2),
        Refused("missing"),
        Refused("finished", "COMPLETED"),
        Refused("finished", "COMPLETED", duplicates=[False]),
        Refused("closed", duplicates=[False]),
        AppendResult(seqs=[None], length=1),
    ]
    assert [c.data for c in store.read_chunks("run_a", "k", 0, 10)] == ['"a0"', '"a1"']
    assert [s.key for s in store.list_streams("run_f")] == ["old"]  # "new" never made
    assert [c.data for c in store.read_chunks("run_f", "old", 0, 10)] == ['"f0"']
    assert [c.data for c in store.read_chunks("run_a", "shut", 0, 10)] == ['"s0"']
    assert store.list_streams("run_x") == []


def test_a_guarded_append_racing_finish_run_never_leaves_an_open_stream(store_url: str) -> None:
    """Writes to new keys of a run while it finishes: each one is stored
    before the finish (and its stream closed by it) or refused after it."""
    stores = [open_store(store_url) for _ in range(2)]
    stores[0].create_run(_run("run_1", status="EXECUTING"))
    some_in = threading.Event()
    outcomes: list[Any] = []

    def work(i: int) -> None:
        if i == 1:
            assert some_in.wait(timeout=60)  # let some appends in first
            stores[1].finish_run("run_1", "COMPLETED", None, None)
            return
        for n in range(2000):
            (got,) = stores[0].append_chunks_guarded([("run_1", f"k{n}", _chunks(n))], MiB)
            outcomes.append(got)
            if n == 20:
                some_in.set()
            if isinstance(got, Refused):
                return

    try:
        _in_threads(2, work)
        opened = stores[0]
        acked = [n for n, o in enumerate(outcomes) if isinstance(o, AppendResult)]
        assert acked == list(range(len(acked))) and 20 <= len(acked) < 2000
        assert outcomes[len(acked)] == Refused("finished", "COMPLETED")
        streams_ = opened.list_streams("run_1")
        assert sorted(s.key for s in streams_) == sorted(f"k{n}" for n in acked)
        assert all(s.closed for s in streams_)
    finally:
        for s in stores:
            s.close()


def test_concurrent_appends_from_threads_give_a_gapless_sequence(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(2)]
    barrier = threading.Barrier(2)

    def writer(i: int) -> list[int | None]:
        barrier.wait(timeout=30)
        seqs: list[int | None] = []
        for n in range(0, 100, 5):
            writes = [
                ChunkWrite(data=json.dumps([i, k]), writer_id=f"t{i}", writer_seq=k)
                for k in range(n, n + 5)
            ]
            seqs += stores[i].append_chunks("run_1", "race", writes, MiB).seqs
        return seqs

    try:
        results = _in_threads(2, writer)
    finally:
        for s in stores:
            s.close()
    opened = open_store(store_url)
    try:
        _assert_gapless_race(opened, results, writers=2, per_writer=100)
    finally:
        opened.close()


def _append_from_process(url: str, i: int, barrier: Any, out: Any) -> None:
    s = open_store(url)
    barrier.wait(timeout=60)
    seqs: list[int | None] = []
    for n in range(0, 200, 10):
        writes = [
            ChunkWrite(data=json.dumps([i, k]), writer_id=f"p{i}", writer_seq=k)
            for k in range(n, n + 10)
        ]
        seqs += s.append_chunks("run_1", "race", writes, MiB).seqs
    s.close()
    out.put((i, seqs))


def test_concurrent_appends_from_two_processes_into_a_new_stream_are_gapless(
    store_url: str,
) -> None:
    barrier, out = _spawn.Barrier(2), _spawn.Queue()
    procs = [
        _spawn.Process(target=_append_from_process, args=(store_url, i, barrier, out))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    opened = open_store(store_url)
    try:
        _assert_gapless_race(opened, [got[0], got[1]], writers=2, per_writer=200)
    finally:
        opened.close()


def _open_new_files(paths: list[str], barrier: Any, out: Any) -> None:
    failures = []
    for path in paths:
        barrier.wait(timeout=60)
        try:
            SQLiteStore(path).close()
        except Exception as e:  # noqa: BLE001  (reported to the test)
            failures.append(repr(e))
    out.put(failures)


def test_processes_opening_one_new_sqlite_file_at_once_all_open_it(tmp_path: Path) -> None:
    # switching a new file to WAL is not covered by SQLite's busy handler: four
    # processes racing to open it saw "database is locked" in ~1 open of 12
    paths = [str(tmp_path / f"new{i}.db") for i in range(10)]
    barrier, out = _spawn.Barrier(4), _spawn.Queue()
    procs = [_spawn.Process(target=_open_new_files, args=(paths, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    failures = [f for _ in procs for f in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert failures == []
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]


def _assert_gapless_race(
    store: Store, results: list[list[int | None]], *, writers: int, per_writer: int
) -> None:
    total = writers * per_writer
    returned = [s for seqs in results for s in seqs]
    assert None not in returned
    assert sorted(returned) == list(range(total))  # type: ignore[type-var]
    chunks = store.read_chunks("run_1", "race", 0, total + 10)
    assert [c.seq for c in chunks] == list(range(total))
    values = [tuple(json.loads(c.data)) for c in chunks]
    assert sorted(values) == [(i, k) for i in range(writers) for k in range(per_writer)]
    for i in range(writers):
        # each writer's own chunks keep its order, and got the seqs it was told
        mine = [(c.seq, v[1]) for c, v in zip(chunks, values, strict=True) if v[0] == i]
        assert [k for _, k in mine] == list(range(per_writer))
        assert [seq for seq, _ in mine] == results[i]
    info = store.stream_info("run_1", "race")
    assert info is not None and info.length == total


def test_sqlite_commits_are_checkpointed_on_a_thread_not_in_the_commit(tmp_path: Path) -> None:
    # SQLite's own checkpoint ran inside the COMMIT that took the WAL past
    # 1,000 pages, the writers' lock held: every other process's commit
    # waited for it. Now a thread copies the WAL into the database file after
    # commits, however few pages they wrote, and COMMIT never does.
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.migrate()
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 1_000
        store.append_chunks("run_1", "k", _chunks(*range(50)), MiB)

        def checkpointed() -> int:
            # the database file alone (no WAL beside it) holds the chunks
            copy = tmp_path / f"copy-{uuid.uuid4().hex}.db"
            copy.write_bytes((tmp_path / "s.db").read_bytes())
            alone = sqlite3.connect(copy)
            try:
                n = alone.execute("SELECT count(*) FROM chunks WHERE run_id = 'run_1'").fetchone()
                return int(n[0])
            except sqlite3.DatabaseError:
                return 0  # copied while the checkpoint wrote it: look again
            finally:
                alone.close()

        eventually(lambda: checkpointed() == 50, what="the chunks in the database file")
    finally:
        store.close()


def test_close_stream_marks_it_closed_even_before_its_first_chunk(store: Store) -> None:
    store.append_chunks("run_1", "a", _chunks(1, 2), MiB)
    store.close_stream("run_1", "a")
    store.close_stream("run_1", "b")
    streams = {s.key: s for s in store.list_streams("run_1")}
    assert set(streams) == {"a", "b"}
    assert (streams["a"].closed, streams["a"].length) == (True, 2)
    assert (streams["b"].closed, streams["b"].length) == (True, 0)


def test_delete_expired_never_touches_active_runs(store: Store) -> None:
    old, recent = now_ms() - 40 * 86_400_000, now_ms()
    store.create_run(_run("active", status="WAITING", created_at=old))
    store.create_run(_run("expired", created_at=old))
    store.create_run(_run("recent", created_at=old))
    for run_id in ("active", "expired", "recent"):
        store.append_chunks(run_id, "k", [ChunkWrite(data="1", writer_id="w", writer_seq=0)], MiB)
        store.journal_append(run_id, 0, [JournalEntry(0, "step", "s", "1")])
        store.inbox_append(run_id, "approval", "true")
    store.finish_run("expired", "COMPLETED", "1", None)
    store.finish_run("recent", "COMPLETED", "1", None)
    store.update_run("expired", finished_at=old)
    store.update_run("recent", finished_at=recent)

    assert store.delete_expired(now_ms() - 28 * 86_400_000) == 1

    assert store.get_run("expired") is None
    assert store.stream_info("expired", "k") is None
    assert store.read_chunks("expired", "k", 0, 10) == []
    assert store.writer_positions("expired") == {}
    assert store.journal_load("expired", 0) == []
    assert store.inbox_read("expired", "approval", 0, 10) == []
    for run_id in ("active", "recent"):
        assert store.get_run(run_id) is not None
        assert len(store.read_chunks(run_id, "k", 0, 10)) == 1
        assert store.writer_positions(run_id) == {("k", "w"): 0}
        assert len(store.journal_load(run_id, 0)) == 1
        assert len(store.inbox_read(run_id, "approval", 0, 10)) == 1
    # even a cut-off in the future leaves the active run alone
    assert store.delete_expired(now_ms() + 86_400_000) == 1
    assert store.get_run("active") is not None
    assert len(store.read_chunks("active", "k", 0, 10)) == 1


# -- journal -------------------------------------------------------------------


def test_journal_appends_load_in_order_per_attempt(store: Store) -> None:
    store.journal_append("run_1", 0, [JournalEntry(1, "once", "approval", '{"ok": 1}')])
    store.journal_append("run_1", 0, [JournalEntry(0, "step", "prepare", '"draft"')])
    store.journal_append(
        "run_1", 0, [JournalEntry(2, "now", "", "123"), JournalEntry(3, "random", "", "0.5")]
    )
    store.journal_append("run_1", 1, [JournalEntry(0, "step", "other", "null")])
    store.journal_append("run_1", 0, [])
    # a replayed entry with a seq already stored keeps the first outcome
    store.journal_append("run_1", 0, [JournalEntry(0, "step", "prepare", '"changed"')])
    assert store.journal_load("run_1", 0) == [
        JournalEntry(0, "step", "prepare", '"draft"'),
        JournalEntry(1, "once", "approval", '{"ok": 1}'),
        JournalEntry(2, "now", "", "123"),
        JournalEntry(3, "random", "", "0.5"),
    ]
    assert store.journal_load("run_1", 1) == [JournalEntry(0, "step", "other", "null")]
    assert store.journal_load("run_2", 0) == []
    # many journals in one read (the runs an actor starts together), in the
    # order asked, each attempt its own, a key asked twice answered twice
    keys = [("run_2", 0), ("run_1", 1), ("run_1", 0), ("run_1", 1)]
    many = store.journal_load_many(keys)
    assert many == [store.journal_load(r, a) for r, a in keys]
    assert many[1] is not many[3]
    many_runs = [(f"run_m{i}", 0) for i in range(700)]  # past one page of keys
    store.journal_append("run_m650", 0, [JournalEntry(0, "step", "late", "1")])
    loaded = store.journal_load_many(many_runs)
    assert loaded[650] == [JournalEntry(0, "step", "late", "1")]
    assert sum(len(entries) for entries in loaded) == 1


# -- input streams -------------------------------------------------------------


def test_inbox_messages_are_numbered_per_stream_and_read_in_order(store: Store) -> None:
    store.create_run(_run("run_1", status="EXECUTING"))
    sent = [store.inbox_append("run_1", "approval", json.dumps(i)) for i in range(5)]
    assert [m.seq for m in sent] == [0, 1, 2, 3, 4]
    assert store.inbox_append("run_1", "cancel", "{}").seq == 0
    got = store.inbox_read("run_1", "approval", 2, 2)
    assert [(m.seq, m.data) for m in got] == [(2, "2"), (3, "3")]
    assert [m.seq for m in store.inbox_read("run_1", "approval", 0, 100)] == list(range(5))
    assert store.inbox_read("run_1", "approval", 5, 10) == []
    assert store.inbox_streams("run_1") == ["approval", "cancel"]
    assert store.inbox_streams("run_2") == []
    # many runs in one read (the runs an actor starts together), in the order asked
    many = store.inbox_streams_many(["run_2", "run_1", "run_2"])
    assert many == [[], ["approval", "cancel"], []]
    assert many[0] is not many[2]


def test_concurrent_senders_to_one_run_get_gapless_ordered_seqs(store_url: str) -> None:
    setup = open_store(store_url)
    setup.create_run(_run("run_1", status="EXECUTING"))
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def sender(i: int) -> list[int]:
        barrier.wait(timeout=30)
        return [stores[i].inbox_append("run_1", "chat", json.dumps([i, k])).seq for k in range(25)]

    try:
        results = _in_threads(4, sender)
        messages = setup.inbox_read("run_1", "chat", 0, 1000)
    finally:
        for s in [setup, *stores]:
            s.close()
    assert sorted(s for seqs in results for s in seqs) == list(range(100))
    assert [m.seq for m in messages] == list(range(100))
    by_sender: dict[int, list[int]] = {}
    for m in messages:
        i, k = json.loads(m.data)
        by_sender.setdefault(i, []).append(k)
        assert m.seq == results[i][k]  # the seq each sender was acknowledged with
    assert by_sender == {i: list(range(25)) for i in range(4)}


def test_waitpoints_resolve_only_once_and_come_due_by_deadline(store: Store) -> None:
    now = now_ms()
    store.put_waitpoint(Waitpoint("late", "approval", now - 10, "idem", "PENDING", None))
    store.put_waitpoint(Waitpoint("later", "approval", now - 5, None, "PENDING", None))
    store.put_waitpoint(Waitpoint("future", "approval", now + 60_000, None, "PENDING", None))
    store.put_waitpoint(Waitpoint("forever", "approval", None, None, "PENDING", None))

    assert [w.run_id for w in store.due_waitpoints(now)] == ["late", "later"]
    assert {w.run_id for w in store.pending_waitpoints()} == {"late", "later", "future", "forever"}
    wp = store.get_waitpoint("late")
    assert wp is not None
    assert (wp.stream_id, wp.deadline, wp.idempotency_key, wp.status) == (
        "approval",
        now - 10,
        "idem",
        "PENDING",
    )

    assert store.resolve_waitpoint("late", "RESOLVED", 3)
    assert not store.resolve_waitpoint("late", "TIMED_OUT", None)
    resolved = store.get_waitpoint("late")
    assert resolved is not None and (resolved.status, resolved.inbox_seq) == ("RESOLVED", 3)
    assert [w.run_id for w in store.due_waitpoints(now)] == ["later"]
    assert not store.resolve_waitpoint("nobody", "RESOLVED", 0)

    # the run waits again: the waitpoint is replaced and pending once more
    store.put_waitpoint(Waitpoint("late", "cancel", now + 60_000, None, "PENDING", None))
    again = store.get_waitpoint("late")
    assert again is not None and (again.stream_id, again.status, again.inbox_seq) == (
        "cancel",
        "PENDING",
        None,
    )


def test_a_send_and_a_timeout_racing_for_one_waitpoint_have_one_winner(store_url: str) -> None:
    setup = open_store(store_url)
    setup.put_waitpoint(Waitpoint("run_1", "approval", now_ms(), None, "PENDING", None))
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def resolve(i: int) -> bool:
        barrier.wait(timeout=30)
        return stores[i].resolve_waitpoint("run_1", "RESOLVED" if i % 2 else "TIMED_OUT", i)

    try:
        wins = _in_threads(4, resolve)
        wp = setup.get_waitpoint("run_1")
    finally:
        for s in [setup, *stores]:
            s.close()
    assert wins.count(True) == 1
    winner = wins.index(True)
    assert wp is not None and wp.inbox_seq == winner


# -- PostgreSQL specifics --------------------------------------------------------


@pytest.mark.postgres
def test_a_postgres_store_pickles_to_a_fresh_connection(
    store_url_for: Callable[[str], str],
) -> None:
    url = store_url_for("postgres")
    original = open_store(url)
    original.create_run(_run("run_1"))
    copy = pickle.loads(pickle.dumps(original))
    try:
        assert copy.url == url
        got = copy.get_run("run_1")
        assert got is not None and got.id == "run_1"
    finally:
        copy.close()
        original.close()


def test_an_unreachable_postgres_fails_clearly_without_showing_the_password() -> None:
    import socket

    from rayflow.store.postgres import PostgresStore

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://rayflow:s3cret@127.0.0.1:{port}/rayflow?connect_timeout=1"
    with pytest.raises(errors.Unavailable) as err:
        PostgresStore(url, connect_timeout_s=1.5)
    assert "rayflow:***@127.0.0.1" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_without_a_postgres_url_ci_fails_instead_of_skipping() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAYFLOW_TEST_POSTGRES_URL"}
    env["CI"] = "1"
    test_id = f"{__file__}::test_migrate_twice_is_a_no_op[postgres]"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", test_id],
        env=env,
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # a fixture failure is reported as an error: the run fails, nothing is skipped
    summary = proc.stdout.strip().splitlines()[-1]
    assert "1 error" in summary and "skipped" not in summary, proc.stdout
    assert "RAYFLOW_TEST_POSTGRES_URL is not set" in proc.stdout


@pytest.mark.postgres
def test_a_postgres_store_replaces_connections_the_server_closed(
    store_url_for: Callable[[str], str], postgres_server_url: str
) -> None:
    import psycopg

    from rayflow.store.postgres import PostgresStore

    url = store_url_for("postgres") + "&application_name=rf_terminated"
    s = PostgresStore(url, min_size=2, check_idle_s=0.0)
    try:
        s.migrate()
        s.create_run(_run("run_1"))
        # a server restart or failover ends every connection in the pool
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'rf_terminated'"
            ).fetchone()
        assert row is not None and row[0] >= 1
        got = s.get_run("run_1")
        assert got is not None and got.id == "run_1"
        s.append_chunks("run_1", "k", _chunks("after"), MiB)
        assert [c.data for c in s.read_chunks("run_1", "k", 0, 10)] == ['"after"']
    finally:
        s.close()


def test_a_call_on_a_closed_store_fails_at_once(store_url: str) -> None:
    """A closed Store is gone for good: a call that meets it (a thread still
    at work when its owner closed the Store) fails at once. PostgreSQL's took
    its closed pool for a server that went away and retried for RECONNECT_S
    (30 s), then raised Unavailable."""
    import sqlite3

    from psycopg_pool import PoolClosed

    closed = open_store(store_url)
    closed.close()
    with pytest.raises((sqlite3.ProgrammingError, PoolClosed)):
        closed.get_run("run_1")


# -- the run lifecycle in one transaction each (claim, suspend, wake) ------------


def test_create_runs_makes_many_in_one_call_and_honours_idempotency_keys(store: Store) -> None:
    made = store.create_runs(
        [_run("run_1"), _run("run_2", idempotency_key="k"), _run("run_3", idempotency_key="k")]
    )
    assert [(r.id, created) for r, created in made] == [
        ("run_1", True),
        ("run_2", True),
        ("run_2", False),
    ]
    assert [r.id if r else None for r in store.get_runs(["run_2", "nope", "run_1"])] == [
        "run_2",
        None,
        "run_1",
    ]


def test_only_one_claimant_executes_a_queued_run(store_url: str) -> None:
    setup = open_store(store_url)
    setup.create_run(_run("run_1"))
    stores = [open_store(store_url) for _ in range(4)]
    claims = _in_threads(4, lambda i: stores[i].claim_run("run_1", f"actor-{i}"))
    winners = [c for c in claims if c.claimed]
    assert len(winners) == 1
    run = setup.get_run("run_1")
    assert run is not None and run.status == "EXECUTING" and run.attempt == 1
    assert run.actor_name == winners[0].run.actor_name  # type: ignore[union-attr]
    assert all(c.run is not None and c.run.status == "EXECUTING" for c in claims)


def test_claims_and_ends_of_many_runs_share_one_transaction_each_answering_per_run(
    store: Store,
) -> None:
    for run_id in ("run_b", "run_a", "run_c"):
        store.create_run(_run(run_id))
    store.append_chunks("run_a", "out", _chunks("x"), MiB)
    assert store.finish_run("run_c", "CANCELED", None, None)
    claims = store.claim_runs([("run_b", "actor-1"), ("nope", "actor-1"), ("run_a", "actor-2")])
    assert [(c.claimed, c.run.id if c.run else None) for c in claims] == [
        (True, "run_b"),
        (False, None),
        (True, "run_a"),
    ]
    assert [c.run.actor_name for c in claims if c.run] == ["actor-1", "actor-2"]
    assert not store.claim_runs([("run_c", "actor-1")])[0].claimed
    ended = store.finish_runs(
        [
            ("run_a", "COMPLETED", "1", None),
            ("run_c", "COMPLETED", "2", None),
            ("run_b", "FAILED", None, '{"name": "E"}'),
        ]
    )
    assert ended == [True, False, True]
    runs = {r.id: r for r in store.get_runs(["run_a", "run_b", "run_c"]) if r}
    assert (runs["run_a"].status, runs["run_a"].output) == ("COMPLETED", "1")
    assert (runs["run_b"].status, runs["run_c"].status) == ("FAILED", "CANCELED")
    info = store.stream_info("run_a", "out")
    assert info is not None and info.closed


def test_claiming_the_runs_placed_on_an_actor_together_costs_statements_per_page(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600 runs placed on one actor at once (past one page of 500): a few
    statements per page, not three per run (one network round trip each on
    PostgreSQL); a run named twice is taken by its first claim only, and a
    revived run's resolved waitpoint comes with its claim (and is gone)."""
    ids = [f"run_{i:04d}" for i in range(600)]
    store.create_runs([_run(run_id) for run_id in ids])
    assert store.claim_run("run_0007", "actor").claimed
    assert store.suspend_run(Waitpoint("run_0007", "go", None, None, "PENDING", None))
    message, woke = store.inbox_send("run_0007", "go", "1", "m1")
    assert woke
    statements = 0
    execute = _Cursor.execute

    def counted(self: Any, sql: str, args: Any = ()) -> Any:
        nonlocal statements
        statements += 1
        return execute(self, sql, args)

    monkeypatch.setattr(_Cursor, "execute", counted)
    claims = store.claim_runs([(r, "actor-9") for r in reversed(ids)] + [("run_0003", "other")])
    monkeypatch.setattr(_Cursor, "execute", execute)
    assert statements <= 12, f"{statements} statements to claim 600 runs"
    assert all(c.claimed and c.run is not None for c in claims[:-1])
    assert [c.run.id for c in claims[:-1] if c.run] == list(reversed(ids))
    assert {c.run.actor_name for c in claims if c.run} == {"actor-9"}
    twice = claims[-1]
    assert not twice.claimed and twice.run is not None and twice.run.actor_name == "actor-9"
    revived = claims[ids[::-1].index("run_0007")]
    assert revived.waitpoint is not None and revived.waitpoint.inbox_seq == message.seq
    assert [c for c in claims if c.waitpoint is not None] == [revived]
    assert store.get_waitpoint("run_0007") is None
    assert {r.status for r in store.get_runs(ids) if r} == {"EXECUTING"}


def test_a_claim_of_a_canceled_or_unknown_run_fails(store: Store) -> None:
    store.create_run(_run("run_1"))
    assert store.finish_run("run_1", "CANCELED", None, None)
    claim = store.claim_run("run_1", "actor")
    assert not claim.claimed and claim.run is not None and claim.run.status == "CANCELED"
    missing = store.claim_run("nope", "actor")
    assert not missing.claimed and missing.run is None


def test_suspend_then_a_send_on_its_stream_wakes_and_queues_the_run(store: Store) -> None:
    store.create_run(_run("run_1"))
    assert store.claim_run("run_1", "actor").claimed
    assert store.suspend_run(Waitpoint("run_1", "approval", None, None, "PENDING", None))
    run = store.get_run("run_1")
    assert run is not None and run.status == "WAITING" and run.actor_name is None
    # a message on another stream is stored but wakes nothing
    other, woke = store.inbox_send("run_1", "cancel", "{}", "m1")
    assert other.seq == 0 and not woke
    message, woke = store.inbox_send("run_1", "approval", "true", "m2")
    assert woke
    run = store.get_run("run_1")
    assert run is not None and run.status == "QUEUED"
    # a retried send is the same message and wakes nothing twice
    again, woke_again = store.inbox_send("run_1", "approval", "true", "m2")
    assert again.seq == message.seq and not woke_again
    # the next claim takes the resolved waitpoint with it
    claim = store.claim_run("run_1", "actor-2")
    assert claim.claimed and claim.waitpoint is not None
    assert (claim.waitpoint.status, claim.waitpoint.inbox_seq) == ("RESOLVED", message.seq)
    assert store.get_waitpoint("run_1") is None


def test_a_deadline_resolves_the_waitpoint_and_queues_the_run(store: Store) -> None:
    store.create_run(_run("run_1"))
    store.claim_run("run_1", "actor")
    assert store.suspend_run(Waitpoint("run_1", "approval", now_ms() - 1, None, "PENDING", None))
    assert [wp.run_id for wp in store.due_waitpoints(now_ms())] == ["run_1"]
    assert store.resolve_waitpoint("run_1", "TIMED_OUT", None)
    run = store.get_run("run_1")
    assert run is not None and run.status == "QUEUED"


def test_a_finished_run_cannot_suspend(store: Store) -> None:
    store.create_run(_run("run_1"))
    store.claim_run("run_1", "actor")
    store.finish_run("run_1", "CANCELED", None, None)
    assert not store.suspend_run(Waitpoint("run_1", "approval", None, None, "PENDING", None))
    assert store.get_waitpoint("run_1") is None


def test_sends_in_one_batch_fail_alone(store: Store) -> None:
    store.create_run(_run("run_1", status="EXECUTING"))
    store.create_run(_run("run_2"))
    store.finish_run("run_2", "COMPLETED", None, None)
    results = store.inbox_send_many(
        [
            ("run_1", "s", '"a"', None),
            ("nope", "s", '"b"', None),
            ("run_2", "s", '"c"', None),
            ("run_1", "s", '"d"', None),
        ]
    )
    assert isinstance(results[1], errors.RunNotFound) and results[1].run_id == "nope"
    assert isinstance(results[2], errors.RunFinished) and results[2].status == "COMPLETED"
    assert (results[2].run_id, results[2].stream) == ("run_2", "s")
    assert [m.data for m in store.inbox_read("run_1", "s", 0, 10)] == ['"a"', '"d"']
    assert store.inbox_read("run_2", "s", 0, 10) == []


def test_delete_expired_works_through_a_backlog_in_batches(store: Store) -> None:
    old = now_ms() - 40 * 86_400_000
    for i in range(7):
        store.create_run(_run(f"old{i}", created_at=old))
        store.append_chunks(f"old{i}", "k", [ChunkWrite(data="1")], MiB)
        store.finish_run(f"old{i}", "COMPLETED", "1", None)
        store.update_run(f"old{i}", finished_at=old)
    store.expire_batch = 3  # type: ignore[attr-defined]  # 3 transactions: 3 + 3 + 1
    assert store.delete_expired(now_ms() - 28 * 86_400_000) == 7
    assert all(store.get_run(f"old{i}") is None for i in range(7))
    assert store.read_chunks("old6", "k", 0, 10) == []


@pytest.mark.postgres
def test_a_run_actors_postgres_pool_is_small_and_lazy(store_url_for: Any) -> None:
    """Each RunActor process has its own pool: ~100 of them with 8 connections
    each passed PostgreSQL's default max_connections (100) and crashed runs."""
    import psycopg

    name = "rf_pool_" + uuid.uuid4().hex[:8]
    url = store_url_for("postgres")
    url += ("&" if "?" in url else "?") + f"application_name={name}"
    server = url.split("?")[0]

    def held() -> int:
        with psycopg.connect(server, autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    store = open_store(url, pool_min_size=0, pool_max_size=2)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: store.list_runs(limit=5), range(64)))
        assert 1 <= held() <= 2
    finally:
        store.close()
    assert held() == 0


def test_a_refused_append_says_which_of_its_writes_were_stored_before(store: Store) -> None:
    """A retried write batched with a new one, to a closed stream: the new
    one is refused, and the refusal says the retried one was stored (its
    caller is acknowledged as the first time)."""
    store.create_run(_run("run_a", status="EXECUTING"))
    stored = ChunkWrite(data='"s0"', writer_id="w1", writer_seq=0)
    store.append_chunks("run_a", "shut", [stored], MiB)
    store.close_stream("run_a", "shut")
    new = ChunkWrite(data='"n0"', writer_id="w2", writer_seq=0)
    for append in (store.append_chunks_guarded, store.append_chunks_own):
        assert append([("run_a", "shut", [stored, new])], MiB) == [
            Refused("closed", duplicates=[True, False])
        ]
    assert [c.data for c in store.read_chunks("run_a", "shut", 0, 10)] == ['"s0"']


def test_a_runs_own_append_stores_nothing_after_the_run_has_finished(store: Store) -> None:
    """`finish_run` closes the run's streams: the run's own commits that
    come after it are refused (its streams, and a stream it would create)."""
    store.create_run(_run("run_f", status="EXECUTING"))
    assert store.append_chunks_own([("run_f", "old", _chunks("f0"))], MiB) == [
        AppendResult(seqs=[0], length=1)
    ]
    store.finish_run("run_f", "CANCELED", None, None)
    assert store.append_chunks_own(
        [("run_f", "old", _chunks("f1")), ("run_f", "new", _chunks("n0"))], MiB
    ) == [
        Refused("finished", "CANCELED", duplicates=[False]),
        Refused("finished", "CANCELED"),
    ]
    assert [c.data for c in store.read_chunks("run_f", "old", 0, 10)] == ['"f0"']
    assert [s.key for s in store.list_streams("run_f")] == ["old"]
