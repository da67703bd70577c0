"""Reading a stream from index N is an index seek in both stores, not a scan."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayflow.store.base import ChunkWrite, JournalEntry
from rayflow.store.sqlite import SQLiteStore

MiB = 1024 * 1024


def test_store_reads_chunks_by_index_seek(store: Any, store_backend: str) -> None:
    query = (
        "SELECT seq, data, created_at, record_id FROM chunks"
        " WHERE run_id = 'r' AND key = 'k' AND seq >= 999000 ORDER BY seq LIMIT 100"
    )
    if store_backend == "sqlite":
        import sqlite3

        db = sqlite3.connect(store.url.removeprefix("sqlite:///"))
        plan = json.dumps(db.execute("EXPLAIN QUERY PLAN " + query).fetchall())
        db.close()
        assert "SEARCH" in plan and "run_id=? AND key=? AND seq>?" in plan, plan
    else:
        with store._transaction() as cur:
            cur.execute("SET LOCAL enable_seqscan = off")
            cur.execute("EXPLAIN " + query)
            plan = json.dumps(cur.fetchall())
        assert "Index" in plan and "seq >=" in plan, plan


def test_sqlite_commit_rounds_and_start_reads_seek_their_rows(tmp_path: Path) -> None:
    # SQLite planned `WHERE (run_id, key) IN (VALUES ...)` as a scan of the
    # whole table: every group-commit round (stream rows, writer watermarks)
    # and every start read (stream infos, journals) cost each row ever stored.
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.migrate()
        others = [(f"old_{i:05d}", "k") for i in range(20_000)]
        with store._transaction() as c:
            c.executemany(
                "INSERT INTO streams (run_id, key, length, size_bytes, closed, created_at,"
                " updated_at) VALUES (?, ?, 1, 1, 0, 0, 0)",
                others,
            )
            c.executemany(
                "INSERT INTO stream_writers (run_id, key, writer_id, last_seq)"
                " VALUES (?, ?, 'w', 0)",
                others,
            )
            c.executemany(
                "INSERT INTO journal (run_id, attempt, seq, kind, name, value)"
                " VALUES (?, 0, 0, 'step', 's', '1')",
                [(run_id,) for run_id, _ in others],
            )
        store.journal_append("new_1", 0, [JournalEntry(0, "step", "s", "1")])
        mine = [("new_1", "k"), ("new_2", "k")]
        for run_id, key in mine:  # the streams exist: the round only looks them up
            store.append_chunks(
                run_id, key, [ChunkWrite(data="0", writer_id="w", writer_seq=0)], MiB
            )
        steps = [0]

        def step() -> int:
            steps[0] += 1
            return 0

        def vm_steps(call: Callable[[], object]) -> int:
            steps[0] = 0
            store._conn.set_progress_handler(step, 100)
            try:
                call()
            finally:
                store._conn.set_progress_handler(None, 0)
            return steps[0]

        writes = [ChunkWrite(data="1", writer_id="w", writer_seq=1)]
        counted = {
            "round": vm_steps(
                lambda: store.append_chunks_own([(r, k, writes) for r, k in mine], MiB)
            ),
            "stream_infos": vm_steps(lambda: store.stream_infos(mine)),
            "journal_load_many": vm_steps(lambda: store.journal_load_many([("new_1", 0)])),
        }
        # a scan of 20,000 rows is ~2,000 steps of 100 instructions each
        assert all(n < 100 for n in counted.values()), counted
        assert [i.length if i else None for i in store.stream_infos(mine)] == [2, 2]
        assert [len(j) for j in store.journal_load_many([("new_1", 0), ("old_00007", 0)])] == [1, 1]
    finally:
        store.close()
