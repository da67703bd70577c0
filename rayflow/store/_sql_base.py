"""What every SQL Store method stands on: the dialect hooks a backend
supplies (`_transaction`, `_sql`, `lock_clause`, …), transactions with `?`
placeholders rewritten for the driver, the run-change hook, migrations, the
row mappers, and the one status update that never moves a finished run.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from rayflow._status import RunStatus, WaitpointStatus
from rayflow.store._schema import MIGRATIONS
from rayflow.store.base import (
    FINISHED_STATUSES,
    NamedChangeHook,
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
_STREAM_COLUMNS = "SELECT run_id, key, length, size_bytes, closed, created_at, updated_at"
_STREAM_SELECT = _STREAM_COLUMNS + " FROM streams"


def from_keys(table: str, columns: tuple[str, ...], n: int) -> str:
    """`FROM` the rows of `table` whose `columns` equal one of `n` tuples of
    parameters, looked up by key: the list drives the join (`CROSS JOIN`
    keeps that order on SQLite). SQLite plans `WHERE (a, b) IN (VALUES …)`
    as a scan of the whole table, probing the list per row: a commit round
    or a start read then cost every stream (journal entry) ever stored."""
    row = "(" + ", ".join(["?"] * len(columns)) + ")"
    on = " AND ".join(f"{table}.{c} = v.column{i}" for i, c in enumerate(columns, 1))
    return f" FROM (VALUES {', '.join([row] * n)}) AS v CROSS JOIN {table} WHERE {on}"


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


class SqlBase:
    url: str
    on_run_change: RunChangeHook | None = None
    on_named_change: NamedChangeHook | None = None
    #: what the driver raises when an INSERT meets a row already there
    integrity_errors: tuple[type[Exception], ...] = ()
    blob_type = "BLOB"
    #: appended to a SELECT that must lock the row for the transaction
    lock_clause = ""
    #: appended to a SELECT that must hold a row against updates but not
    #: against other readers that lock it the same way (PostgreSQL: FOR SHARE)
    share_lock_clause = ""
    #: after a text column in ORDER BY: compare bytes (code points), the order
    #: Python's `sorted` locks rows in one by one (PostgreSQL: COLLATE "C")
    binary_collation = ""
    #: run first in `migrate` to serialise processes migrating at once; SQLite
    #: needs none (BEGIN IMMEDIATE already holds the database's write lock)
    migration_lock_sql: str | None = None
    #: a case-sensitive "column contains ?" (SQLite's LIKE ignores ASCII case)
    contains_sql = "instr({column}, ?) > 0"

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

    def _newest_first(
        self,
        select: str,
        where: list[str],
        args: list[Any],
        *,
        before: tuple[int, str] | None,
        tags: list[str] | None,
        limit: int,
    ) -> list[Any]:
        """The rows of `select` that match `where` and carry every one of
        `tags` (whole, in their case), newest first, after the page cursor
        `before` = (created_at, id) of the last row seen."""
        where, args = list(where), list(args)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        for tag in tags or []:
            # a whole tag, in its case: its JSON string in the stored JSON list
            where.append(self.contains_sql.format(column="tags"))
            args.append(json.dumps(tag))
        sql = select + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        with self._read() as c:
            rows: list[Any] = c.execute(sql, (*args, limit)).fetchall()
        return rows

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
