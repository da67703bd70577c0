"""The Store written once in the SQL that SQLite and PostgreSQL share.

Subclasses supply a connection (`_transaction`), the placeholder style and
the row-locking clause; every query lives here, so both stores behave alike.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from rayflow._status import RunStatus, WaitpointStatus
from rayflow.errors import RunFinished, RunNotFound, StreamTooLarge
from rayflow.store._schema import MIGRATIONS
from rayflow.store.base import (
    FINISHED_STATUSES,
    AppendResult,
    Chunk,
    ChunkWrite,
    Claim,
    InboxMessage,
    JournalEntry,
    RunChangeHook,
    RunRecord,
    StreamInfo,
    Waitpoint,
    now_ms,
)

# statuses as bound parameters (values as stored)
QUEUED, EXECUTING = RunStatus.QUEUED.value, RunStatus.EXECUTING.value
WAITING, PENDING = RunStatus.WAITING.value, WaitpointStatus.PENDING.value

_RUN_COLUMNS = [f.name for f in fields(RunRecord)]
_RUN_SELECT = "SELECT " + ", ".join(_RUN_COLUMNS) + " FROM runs"
_STREAM_SELECT = (
    "SELECT run_id, key, length, size_bytes, closed, created_at, updated_at FROM streams"
)
_WP_SELECT = (
    "SELECT run_id, stream_id, deadline, idempotency_key, status, inbox_seq, created_at"
    " FROM waitpoints"
)


def _run(row: Any) -> RunRecord:
    return RunRecord(**dict(zip(_RUN_COLUMNS, row, strict=True)))


def _stream(row: Any) -> StreamInfo:
    return StreamInfo(
        run_id=row[0],
        key=row[1],
        length=int(row[2]),
        size_bytes=int(row[3]),
        closed=bool(row[4]),
        created_at=int(row[5]),
        updated_at=int(row[6]),
    )


def _waitpoint(row: Any) -> Waitpoint:
    return Waitpoint(
        run_id=row[0],
        stream_id=row[1],
        deadline=row[2],
        idempotency_key=row[3],
        status=row[4],
        inbox_seq=row[5],
        created_at=row[6],
    )


class SqlStore:
    url: str
    on_run_change: RunChangeHook | None = None
    blob_type = "BLOB"
    #: appended to a SELECT that must lock the row for the transaction
    lock_clause = ""
    #: run first in `migrate` to serialise processes migrating at once; SQLite
    #: needs none (BEGIN IMMEDIATE already holds the database's write lock)
    migration_lock_sql: str | None = None

    # -- supplied by subclasses ---------------------------------------------
    def _transaction(self, write: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A cursor inside one transaction, committed on exit. `write=False`
        for a transaction that only reads: it must not block writers."""
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def close(self) -> None:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------
    def _changed(self, *run_ids: str) -> None:
        """Tell run subscribers (after the commit) that these runs changed."""
        if self.on_run_change is not None and run_ids:
            self.on_run_change(list(run_ids))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._transaction() as cur:
            yield _Cursor(cur, self._sql)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._transaction(write=False) as cur:
            yield _Cursor(cur, self._sql)

    def migrate(self) -> None:
        with self._tx() as c:
            if self.migration_lock_sql:
                c.execute(self.migration_lock_sql)
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] if row and row[0] is not None else 0
            for version, statements in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in statements:
                    c.execute(statement.format(blob=self.blob_type))
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    # -- tasks -----------------------------------------------------------------
    def put_task(self, task_id: str, blob: bytes, defaults: str = "{}") -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO tasks (task_id, blob, defaults, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (task_id) DO UPDATE SET blob = excluded.blob,"
                " defaults = excluded.defaults, updated_at = excluded.updated_at",
                (task_id, blob, defaults, now_ms()),
            )

    def get_task_defaults(self, task_id: str) -> str | None:
        with self._read() as c:
            row = c.execute("SELECT defaults FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return str(row[0]) if row else None

    def get_task(self, task_id: str) -> bytes | None:
        with self._read() as c:
            row = c.execute("SELECT blob FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return bytes(row[0]) if row else None

    def list_task_ids(self) -> list[str]:
        with self._read() as c:
            return [r[0] for r in c.execute("SELECT task_id FROM tasks ORDER BY task_id")]

    # -- runs ------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        return self.create_runs([run])[0]

    def create_runs(self, runs: list[RunRecord]) -> list[tuple[RunRecord, bool]]:
        with self._tx() as c:
            results = [self._insert_run(c, run) for run in runs]
        self._changed(*[run.id for run, created in results if created])
        return results

    def _insert_run(self, c: Any, run: RunRecord) -> tuple[RunRecord, bool]:
        # Insert first and look the key up only on conflict: a SELECT first
        # lets two concurrent triggers with one key both miss and both
        # insert (PostgreSQL then fails the second with a unique violation
        # instead of returning the first run). A NULL key never conflicts.
        cur = c.execute(
            f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)})"
            f" VALUES ({', '.join('?' for _ in _RUN_COLUMNS)})"
            " ON CONFLICT (task_id, idempotency_key) DO NOTHING",
            [getattr(run, name) for name in _RUN_COLUMNS],
        )
        if cur.rowcount == 1:
            return run, True
        row = c.execute(
            _RUN_SELECT + " WHERE task_id = ? AND idempotency_key = ?",
            (run.task_id, run.idempotency_key),
        ).fetchone()
        return _run(row), False

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._read() as c:
            row = c.execute(_RUN_SELECT + " WHERE id = ?", (run_id,)).fetchone()
        return _run(row) if row else None

    def get_runs(self, run_ids: list[str]) -> list[RunRecord | None]:
        found: dict[str, RunRecord] = {}
        with self._read() as c:
            for start in range(0, len(run_ids), 500):
                page = run_ids[start : start + 500]
                marks = ", ".join("?" for _ in page)
                for row in c.execute(_RUN_SELECT + f" WHERE id IN ({marks})", page):
                    run = _run(row)
                    found[run.id] = run
        return [found.get(run_id) for run_id in run_ids]

    def update_run(self, run_id: str, **values: object) -> None:
        unknown = set(values) - set(_RUN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown run fields {sorted(unknown)}")
        values["updated_at"] = now_ms()
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._tx() as c:
            c.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*values.values(), run_id])
        self._changed(run_id)

    def set_active_status(self, run_id: str, status: str, **values: object) -> bool:
        """Move a run between active statuses (and set fields) unless it has
        finished meanwhile — a cancel must never be undone."""
        with self._tx() as c:
            changed = self._set_active(c, run_id, status, **values)
        if changed:
            self._changed(run_id)
        return changed

    def _set_active(self, c: Any, run_id: str, status: str, **values: object) -> bool:
        values["status"] = status
        values["updated_at"] = now_ms()
        assignments = ", ".join(f"{name} = ?" for name in values)
        finished = ", ".join("?" for _ in FINISHED_STATUSES)
        cur = c.execute(
            f"UPDATE runs SET {assignments} WHERE id = ? AND status NOT IN ({finished})",
            [*values.values(), run_id, *FINISHED_STATUSES],
        )
        return bool(cur.rowcount)

    def claim_run(self, run_id: str, actor_name: str) -> Claim:
        now = now_ms()
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET status = ?, actor_name = ?,"
                " attempt = CASE WHEN attempt < 1 THEN 1 ELSE attempt END,"
                " started_at = COALESCE(started_at, ?), updated_at = ?"
                " WHERE id = ? AND status = ?",
                (EXECUTING, actor_name, now, now, run_id, QUEUED),
            )
            claimed = bool(cur.rowcount)
            row = c.execute(_RUN_SELECT + " WHERE id = ?", (run_id,)).fetchone()
            waitpoint = None
            if claimed:
                found = c.execute(
                    _WP_SELECT + " WHERE run_id = ? AND status <> ?", (run_id, PENDING)
                ).fetchone()
                if found:
                    waitpoint = _waitpoint(found)
                    c.execute("DELETE FROM waitpoints WHERE run_id = ?", (run_id,))
        if claimed:
            self._changed(run_id)  # QUEUED -> EXECUTING
        return Claim(run=_run(row) if row else None, claimed=claimed, waitpoint=waitpoint)

    def suspend_run(self, wp: Waitpoint) -> bool:
        with self._tx() as c:
            if not self._set_active(c, wp.run_id, WAITING, actor_name=None):
                return False
            self._upsert_waitpoint(c, wp)
        self._changed(wp.run_id)  # -> WAITING
        return True

    def finish_run(self, run_id: str, status: str, output: str | None, error: str | None) -> bool:
        now = now_ms()
        finished = ", ".join("?" for _ in FINISHED_STATUSES)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET status = ?, output = ?, error = ?, finished_at = ?,"
                f" updated_at = ?, actor_name = NULL WHERE id = ? AND status NOT IN ({finished})",
                (status, output, error, now, now, run_id, *FINISHED_STATUSES),
            )
            if cur.rowcount == 0:
                return False
            c.execute(
                "UPDATE streams SET closed = 1, updated_at = ? WHERE run_id = ?", (now, run_id)
            )
            c.execute("DELETE FROM waitpoints WHERE run_id = ?", (run_id,))
        self._changed(run_id)
        return True

    def list_runs(
        self,
        *,
        statuses: list[str] | None = None,
        task_id: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        before_created_at: int | None = None,
        tags: list[str] | None = None,
        batch_id: str | None = None,
        created_after: int | None = None,
        before_id: str | None = None,
    ) -> list[RunRecord]:
        where: list[str] = []
        args: list[object] = []
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args.extend(statuses)
        if task_id is not None:
            where.append("task_id = ?")
            args.append(task_id)
        if parent_id is not None:
            where.append("parent_id = ?")
            args.append(parent_id)
        if before_created_at is not None and before_id is not None:
            # a page ends inside a millisecond: the rest of it comes next
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args.extend((before_created_at, before_created_at, before_id))
        elif before_created_at is not None:
            where.append("created_at < ?")
            args.append(before_created_at)
        if created_after is not None:
            where.append("created_at > ?")
            args.append(created_after)
        if batch_id is not None:
            where.append("batch_id = ?")
            args.append(batch_id)
        for tag in tags or []:
            # tags are stored as a JSON array (json.dumps); an element is its
            # JSON string, quotes included, so this matches whole tags only
            where.append("tags LIKE ? ESCAPE '!'")
            args.append("%" + _like_escape(json.dumps(tag)) + "%")
        sql = _RUN_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        with self._read() as c:
            runs = [_run(r) for r in c.execute(sql, [*args, limit])]
        if tags:  # SQLite's LIKE ignores case: keep exact matches only
            wanted = set(tags)
            runs = [r for r in runs if wanted <= set(json.loads(r.tags))]
        return runs

    # -- output streams ------------------------------------------------------
    def append_chunks(
        self, run_id: str, key: str, writes: list[ChunkWrite], max_bytes: int
    ) -> AppendResult:
        return self.append_chunks_many([(run_id, key, writes)], max_bytes)[0]

    def append_chunks_many(
        self, items: list[tuple[str, str, list[ChunkWrite]]], max_bytes: int
    ) -> list[AppendResult]:
        now = now_ms()
        results: list[AppendResult | None] = [None] * len(items)
        new_streams: set[str] = set()
        with self._tx() as c:
            # stream rows are locked in one order by every transaction: no deadlock
            for i in sorted(range(len(items)), key=lambda i: items[i][:2]):
                run_id, key, writes = items[i]
                results[i] = self._append_in(c, run_id, key, writes, max_bytes, now, new_streams)
        if new_streams:
            self._changed(*sorted(new_streams))  # the runs' lists of streams grew
        return [r for r in results if r is not None]

    def _append_in(
        self,
        c: Any,
        run_id: str,
        key: str,
        writes: list[ChunkWrite],
        max_bytes: int,
        now: int,
        new_streams: set[str],
    ) -> AppendResult:
        row = c.execute(
            "SELECT length, size_bytes FROM streams WHERE run_id = ? AND key = ?"
            + self.lock_clause,
            (run_id, key),
        ).fetchone()
        if row is None:
            new_streams.add(run_id)
            c.execute(
                "INSERT INTO streams (run_id, key, length, size_bytes, closed, created_at,"
                " updated_at) VALUES (?, ?, 0, 0, 0, ?, ?) ON CONFLICT DO NOTHING",
                (run_id, key, now, now),
            )
            row = c.execute(
                "SELECT length, size_bytes FROM streams WHERE run_id = ? AND key = ?"
                + self.lock_clause,
                (run_id, key),
            ).fetchone()
        length, size = int(row[0]), int(row[1])
        last_by_writer: dict[str, int] = {}
        for writer_id in {w.writer_id for w in writes if w.writer_id is not None}:
            r = c.execute(
                "SELECT last_seq FROM stream_writers"
                " WHERE run_id = ? AND key = ? AND writer_id = ?",
                (run_id, key, writer_id),
            ).fetchone()
            last_by_writer[writer_id] = int(r[0]) if r else -1
        seqs: list[int | None] = []
        rows: list[tuple[object, ...]] = []
        touched: dict[str, int] = {}
        for w in writes:
            if w.writer_id is not None and w.writer_seq is not None:
                if w.writer_seq <= last_by_writer[w.writer_id]:
                    seqs.append(None)
                    continue
                last_by_writer[w.writer_id] = w.writer_seq
                touched[w.writer_id] = w.writer_seq
            size += len(w.data.encode())
            if size > max_bytes:
                raise StreamTooLarge(
                    f"stream {key!r} of run {run_id} would grow to {size} bytes, over its"
                    f" limit of {max_bytes}; nothing of this write was stored. Write large"
                    " results elsewhere and stream references to them.",
                    run_id=run_id,
                    stream=key,
                    size=size,
                    limit=max_bytes,
                )
            seqs.append(length)
            rows.append((run_id, key, length, w.data, w.record_id, now))
            length += 1
        if rows:
            c.executemany(
                "INSERT INTO chunks (run_id, key, seq, data, record_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            c.execute(
                "UPDATE streams SET length = ?, size_bytes = ?, updated_at = ?"
                " WHERE run_id = ? AND key = ?",
                (length, size, now, run_id, key),
            )
        for writer_id, last in touched.items():
            c.execute(
                "INSERT INTO stream_writers (run_id, key, writer_id, last_seq)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (run_id, key, writer_id)"
                " DO UPDATE SET last_seq = excluded.last_seq",
                (run_id, key, writer_id, last),
            )
        return AppendResult(seqs=seqs, length=length)

    def read_chunks(self, run_id: str, key: str, start: int, limit: int) -> list[Chunk]:
        with self._read() as c:
            rows = c.execute(
                "SELECT seq, data, created_at, record_id FROM chunks"
                " WHERE run_id = ? AND key = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (run_id, key, start, limit),
            ).fetchall()
        return [Chunk(seq=int(r[0]), data=r[1], created_at=int(r[2]), record_id=r[3]) for r in rows]

    def stream_info(self, run_id: str, key: str) -> StreamInfo | None:
        with self._read() as c:
            row = c.execute(_STREAM_SELECT + " WHERE run_id = ? AND key = ?", (run_id, key))
            found = row.fetchone()
        return _stream(found) if found else None

    def list_streams(self, run_id: str) -> list[StreamInfo]:
        with self._read() as c:
            rows = c.execute(_STREAM_SELECT + " WHERE run_id = ? ORDER BY key", (run_id,))
            return [_stream(r) for r in rows.fetchall()]

    def close_stream(self, run_id: str, key: str) -> None:
        now = now_ms()
        with self._tx() as c:
            c.execute(
                "INSERT INTO streams (run_id, key, length, size_bytes, closed, created_at,"
                " updated_at) VALUES (?, ?, 0, 0, 1, ?, ?) ON CONFLICT (run_id, key)"
                " DO UPDATE SET closed = 1, updated_at = excluded.updated_at",
                (run_id, key, now, now),
            )

    def writer_positions(self, run_id: str) -> dict[tuple[str, str], int]:
        with self._read() as c:
            rows = c.execute(
                "SELECT key, writer_id, last_seq FROM stream_writers WHERE run_id = ?", (run_id,)
            ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    #: runs deleted per transaction by `delete_expired`: a long retention
    #: backlog must not hold SQLite's write lock (or PostgreSQL row locks) for
    #: the whole of it
    expire_batch = 500

    def delete_expired(self, finished_before: int) -> int:
        finished = ", ".join("?" for _ in FINISHED_STATUSES)
        deleted = 0
        while True:
            with self._tx() as c:
                ids = [
                    r[0]
                    for r in c.execute(
                        f"SELECT id FROM runs WHERE status IN ({finished})"
                        " AND finished_at IS NOT NULL AND finished_at < ? ORDER BY id LIMIT ?",
                        (*FINISHED_STATUSES, finished_before, self.expire_batch),
                    ).fetchall()
                ]
                marks = ", ".join("?" for _ in ids)
                for table in ("chunks", "streams", "stream_writers", "journal", "inbox"):
                    if ids:
                        c.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", ids)
                if ids:
                    c.execute(f"DELETE FROM runs WHERE id IN ({marks})", ids)
            deleted += len(ids)
            if len(ids) < self.expire_batch:
                return deleted

    # -- journal ---------------------------------------------------------------
    def journal_append(self, run_id: str, attempt: int, entries: list[JournalEntry]) -> None:
        if not entries:
            return
        with self._tx() as c:
            c.executemany(
                "INSERT INTO journal (run_id, attempt, seq, kind, name, value)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(run_id, attempt, e.seq, e.kind, e.name, e.value) for e in entries],
            )

    def journal_load(self, run_id: str, attempt: int) -> list[JournalEntry]:
        with self._read() as c:
            rows = c.execute(
                "SELECT seq, kind, name, value FROM journal"
                " WHERE run_id = ? AND attempt = ? ORDER BY seq",
                (run_id, attempt),
            ).fetchall()
        return [JournalEntry(seq=int(r[0]), kind=r[1], name=r[2], value=r[3]) for r in rows]

    # -- input streams ---------------------------------------------------------
    def inbox_append(
        self, run_id: str, stream_id: str, data: str, message_id: str | None = None
    ) -> InboxMessage:
        with self._tx() as c:
            return self._inbox_insert(c, run_id, stream_id, data, message_id)[0]

    def inbox_send(
        self, run_id: str, stream_id: str, data: str, message_id: str | None = None
    ) -> tuple[InboxMessage, bool]:
        result = self.inbox_send_many([(run_id, stream_id, data, message_id)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def inbox_send_many(
        self, sends: list[tuple[str, str, str, str | None]]
    ) -> list[tuple[InboxMessage, bool] | RunNotFound | RunFinished]:
        results: list[tuple[InboxMessage, bool] | RunNotFound | RunFinished]
        results = [RunNotFound("")] * len(sends)
        with self._tx() as c:
            # run rows are locked in one order, so two batches cannot deadlock
            for i in sorted(range(len(sends)), key=lambda i: sends[i][0]):
                run_id, stream_id, data, message_id = sends[i]
                try:
                    message, new = self._inbox_insert(c, run_id, stream_id, data, message_id)
                except (RunNotFound, RunFinished) as e:
                    results[i] = e  # raised before this send wrote anything
                    continue
                results[i] = (message, new and self._wake(c, run_id, stream_id, message.seq))
        for result, (run_id, *_) in zip(results, sends, strict=True):
            if isinstance(result, tuple) and result[1]:
                self._changed(run_id)  # WAITING -> QUEUED
        return results

    def _wake(self, c: Any, run_id: str, stream_id: str, seq: int) -> bool:
        found = c.execute(
            "SELECT stream_id FROM waitpoints WHERE run_id = ? AND status = ?",
            (run_id, PENDING),
        ).fetchone()
        if found is None or found[0] != stream_id:
            return False
        return self._resolve(c, run_id, WaitpointStatus.RESOLVED, seq)

    def _inbox_insert(
        self, c: Any, run_id: str, stream_id: str, data: str, message_id: str | None
    ) -> tuple[InboxMessage, bool]:
        now = now_ms()
        # the run row serialises concurrent senders to one run
        run = c.execute(
            "SELECT status FROM runs WHERE id = ?" + self.lock_clause, (run_id,)
        ).fetchone()
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist", run_id=run_id, stream=stream_id)
        if run[0] in FINISHED_STATUSES:
            raise RunFinished(
                f"run {run_id} is {run[0]}; input can only be sent to a run that is still running",
                run_id=run_id,
                stream=stream_id,
                status=run[0],
            )
        if message_id is not None:
            seen = c.execute(
                "SELECT seq, data, created_at FROM inbox WHERE run_id = ? AND stream_id = ?"
                " AND message_id = ?",
                (run_id, stream_id, message_id),
            ).fetchone()
            if seen:
                return InboxMessage(seq=int(seen[0]), data=seen[1], created_at=int(seen[2])), False
        row = c.execute(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM inbox WHERE run_id = ? AND stream_id = ?",
            (run_id, stream_id),
        ).fetchone()
        seq = int(row[0])
        c.execute(
            "INSERT INTO inbox (run_id, stream_id, seq, data, message_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, stream_id, seq, data, message_id, now),
        )
        return InboxMessage(seq=seq, data=data, created_at=now), True

    def inbox_read(self, run_id: str, stream_id: str, start: int, limit: int) -> list[InboxMessage]:
        with self._read() as c:
            rows = c.execute(
                "SELECT seq, data, created_at FROM inbox WHERE run_id = ? AND stream_id = ?"
                " AND seq >= ? ORDER BY seq LIMIT ?",
                (run_id, stream_id, start, limit),
            ).fetchall()
        return [InboxMessage(seq=int(r[0]), data=r[1], created_at=int(r[2])) for r in rows]

    def inbox_usage(self, run_id: str) -> dict[str, tuple[int, int]]:
        with self._read() as c:
            rows = c.execute(
                "SELECT stream_id, COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM inbox"
                " WHERE run_id = ? GROUP BY stream_id",
                (run_id,),
            ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def inbox_streams(self, run_id: str) -> list[str]:
        with self._read() as c:
            rows = c.execute(
                "SELECT DISTINCT stream_id FROM inbox WHERE run_id = ? ORDER BY stream_id",
                (run_id,),
            ).fetchall()
        return [r[0] for r in rows]

    def put_waitpoint(self, wp: Waitpoint) -> None:
        with self._tx() as c:
            self._upsert_waitpoint(c, wp)

    def _upsert_waitpoint(self, c: Any, wp: Waitpoint) -> None:
        c.execute(
            "INSERT INTO waitpoints (run_id, stream_id, deadline, idempotency_key, status,"
            " inbox_seq, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id) DO UPDATE SET stream_id = excluded.stream_id,"
            " deadline = excluded.deadline, idempotency_key = excluded.idempotency_key,"
            " status = excluded.status, inbox_seq = excluded.inbox_seq,"
            " created_at = excluded.created_at",
            (
                wp.run_id,
                wp.stream_id,
                wp.deadline,
                wp.idempotency_key,
                wp.status,
                wp.inbox_seq,
                wp.created_at,
            ),
        )

    def get_waitpoint(self, run_id: str) -> Waitpoint | None:
        with self._read() as c:
            row = c.execute(_WP_SELECT + " WHERE run_id = ?", (run_id,)).fetchone()
        return _waitpoint(row) if row else None

    def resolve_waitpoint(self, run_id: str, status: str, inbox_seq: int | None) -> bool:
        with self._tx() as c:
            resolved = self._resolve(c, run_id, status, inbox_seq)
        if resolved:
            self._changed(run_id)  # WAITING -> QUEUED
        return resolved

    def _resolve(self, c: Any, run_id: str, status: str, inbox_seq: int | None) -> bool:
        cur = c.execute(
            "UPDATE waitpoints SET status = ?, inbox_seq = ? WHERE run_id = ? AND status = ?",
            (str(status), inbox_seq, run_id, PENDING),
        )
        if not cur.rowcount:
            return False
        # the run is ready to continue: queued for a RunActor, in the same
        # transaction, so no crash can leave it resolved but still WAITING
        c.execute(
            "UPDATE runs SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
            (QUEUED, now_ms(), run_id, WAITING),
        )
        return True

    def delete_waitpoint(self, run_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM waitpoints WHERE run_id = ?", (run_id,))

    def due_waitpoints(self, now: int) -> list[Waitpoint]:
        with self._read() as c:
            rows = c.execute(
                _WP_SELECT + " WHERE status = ? AND deadline IS NOT NULL"
                " AND deadline <= ? ORDER BY deadline",
                (PENDING, now),
            ).fetchall()
        return [_waitpoint(r) for r in rows]

    def pending_waitpoints(self) -> list[Waitpoint]:
        with self._read() as c:
            rows = c.execute(_WP_SELECT + " WHERE status = ?", (PENDING,)).fetchall()
        return [_waitpoint(r) for r in rows]


def _like_escape(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


class _Cursor:
    """Rewrites `?` placeholders for the driver at hand."""

    def __init__(self, cur: Any, sql: Any) -> None:
        self._cur, self._convert = cur, sql

    def execute(self, sql: str, args: Any = ()) -> Any:
        self._cur.execute(self._convert(sql), args)
        return self._cur

    def executemany(self, sql: str, rows: Any) -> Any:
        self._cur.executemany(self._convert(sql), rows)
        return self._cur
