"""Reading a stream from index N is an index seek in both stores, not a scan."""

from __future__ import annotations

import json
from typing import Any


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
