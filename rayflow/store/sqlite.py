"""SQLite store: the embedded default. One file, WAL, one writer at a time.

Several processes on one machine (the driver, the Controller, every
RunActor) open the same file; SQLite's lock serialises their writes, and
`BEGIN IMMEDIATE` takes that lock up front so a read-then-write transaction
(`append_chunks`) can never be overtaken between its read and its write.
Transactions that only read use a plain `BEGIN`: in WAL mode they see a
consistent snapshot and neither wait for writers nor hold them up.

Writers queue on an advisory file lock (`flock` on `<file>-writers`) before
`BEGIN IMMEDIATE`: the kernel hands the lock to the next waiter as soon as
it is free. Without it a writer that finds the database locked sleeps in
SQLite's busy handler, whose waits grow 1, 2, 5, 10, … 100 ms; ten RunActors
committing at once then waited up to ~100 ms (the p99 of the 100-stream part
in benchmarks/http_sse.py). `busy_timeout` stays as the fallback.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from rayflow.store._sql import SqlStore


class SQLiteStore(SqlStore):
    integrity_errors = (sqlite3.IntegrityError,)

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
        self._writers = open(f"{self.path}-writers", "a+b")  # noqa: SIM115

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            if write:
                fcntl.flock(self._writers, fcntl.LOCK_EX)  # in line behind other processes
            cur = self._conn.cursor()
            try:
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
                if write:
                    fcntl.flock(self._writers, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._writers.close()
