"""SQLite store: the embedded default. One file, WAL, one writer at a time.

Several processes on one machine (the driver, the Controller, every
RunActor) open the same file; SQLite's lock serialises their writes, and
`BEGIN IMMEDIATE` takes that lock up front so a read-then-write transaction
(`append_chunks`) can never be overtaken between its read and its write.
Transactions that only read use a plain `BEGIN`: in WAL mode they see a
consistent snapshot and neither wait for writers nor hold them up.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from rayflow.store._sql import SqlStore


class SQLiteStore(SqlStore):
    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{self.path}"
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA busy_timeout=30000")

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            # a reader in WAL mode takes no write lock: it never waits for
            # (or holds up) another process's commit
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
