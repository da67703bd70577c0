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
in benchmarks/http_sse.py). `busy_timeout` stays as the fallback. A writer
waits in that line at most `write_lock_timeout_s` (SQLite's own busy
timeout), then raises `Unavailable`: a process that stopped while holding
the lock (SIGSTOP, a hung disk) must not hang every other writer for ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rayflow.errors import Unavailable
from rayflow.store._sql import SqlStore


def _release(held: IO[bytes], own: IO[bytes]) -> None:
    if held is own:
        fcntl.flock(own, fcntl.LOCK_UN)
    else:
        held.close()  # a file of its own: closing it releases the lock


log = logging.getLogger("rayflow")

#: WAL pages past which a COMMIT checkpoints itself, as SQLite does by
#: default at 1,000 (`_Checkpointer` keeps the WAL far shorter)
FALLBACK_CHECKPOINT_PAGES = 100_000


class SQLiteStore(SqlStore):
    integrity_errors = (sqlite3.IntegrityError,)

    #: the longest a writer waits for the writers' lock (then `Unavailable`)
    write_lock_timeout_s = 30.0

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{self.path}"
        self._synchronous = synchronous
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._writers = open(f"{self.path}-writers", "a+b")  # noqa: SIM115
        # switching a new file to WAL takes its exclusive lock, and SQLite's busy
        # handler does not cover that: two processes opening one new file at
        # once would see "database is locked". Switch in line with the writers.
        fcntl.flock(self._writers, fcntl.LOCK_EX)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
        finally:
            fcntl.flock(self._writers, fcntl.LOCK_UN)
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        # checkpoints run on a thread of their own, outside the writers' lock
        # (`_Checkpointer`), not inside a writer's COMMIT; SQLite's own stays
        # as a far-off fallback (a WAL that grew this long has no checkpointer)
        self._conn.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_CHECKPOINT_PAGES}")
        self._checkpointer: _Checkpointer | None = None

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            held = self._take_writers_lock() if write else None
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
                if held is not None:
                    _release(held, self._writers)
        if write:
            if self._checkpointer is None:
                self._checkpointer = _Checkpointer(self.path, self._synchronous)
            self._checkpointer.committed()

    def _take_writers_lock(self) -> IO[bytes]:
        """Take the writers' lock, in line behind other processes; returns the
        file that holds it. When it is free, on the store's own file; else a
        thread waits in line on a file of its own (a wait that gives up must
        not release a lock a later write takes on the store's file)."""
        try:
            fcntl.flock(self._writers, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return self._writers
        except BlockingIOError:
            pass
        line = open(self._writers.name, "a+b")  # noqa: SIM115  (closed by _release)
        taken = threading.Event()
        guard = threading.Lock()
        gave_up = False

        def wait_in_line() -> None:
            fcntl.flock(line, fcntl.LOCK_EX)
            with guard:
                if gave_up:
                    line.close()  # releases the lock
                else:
                    taken.set()

        threading.Thread(target=wait_in_line, name="sqlite-writers-line", daemon=True).start()
        if not taken.wait(self.write_lock_timeout_s):
            with guard:
                gave_up = not taken.is_set()
            if gave_up:
                raise Unavailable(
                    f"SQLite store {self.path}: another process has held the write lock for"
                    f" {self.write_lock_timeout_s:.0f} s (is it stopped?); nothing was written,"
                    " and the call is safe to retry"
                )
        return line

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._writers.close()
            if self._checkpointer is not None:
                self._checkpointer.stop()


class _Checkpointer:
    """Copies committed WAL frames into the database file, on a daemon thread
    with a connection of its own, after this process's commits (at most
    every `INTERVAL_S`).

    SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL
    past 1,000 pages — with the writers' lock still held, so every other
    process's commit waits for it: with 1,000 runs streaming on 2 RunActors
    that was 1 COMMIT in 4, 10–20 ms each. A PASSIVE checkpoint here takes no
    write lock: writers go on appending to the WAL while it copies, and the
    next writer restarts the WAL once it has all been copied."""

    #: the least time between two checkpoints of one process (a page written
    #: by many commits meanwhile is copied once)
    INTERVAL_S = 0.2

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path, self._synchronous = path, synchronous
        self._due = threading.Event()
        self._stopped = False
        #: checkpoints made (tests)
        self.checkpoints = 0
        threading.Thread(target=self._work, name="sqlite-checkpoint", daemon=True).start()

    def committed(self) -> None:
        self._due.set()

    def stop(self) -> None:
        self._stopped = True
        self._due.set()

    def _work(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            while True:
                self._due.wait()
                if self._stopped:
                    return
                self._due.clear()
                try:
                    # PASSIVE: copies what no reader still needs, waits for no one
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as e:  # the next commit asks again
                    log.warning("SQLite store %s: WAL checkpoint failed: %s", self._path, e)
                self.checkpoints += 1
                time.sleep(self.INTERVAL_S)
        finally:
            conn.close()
