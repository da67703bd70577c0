"""PostgreSQL store: the store for a multi-node Ray cluster.

Every process that touches the store (driver, Controller, inbox actors, each
RunActor, Serve replicas) opens its own small connection pool. All SQL is
shared with SQLite in `_sql.py`; this module supplies connections, the
`%s` placeholder style and row locks.

Concurrency rests on PostgreSQL's row locks under READ COMMITTED:
`append_chunks` locks the stream row (`SELECT ... FOR UPDATE`, after an
`INSERT ... ON CONFLICT DO NOTHING` for a new stream, so two processes that
create the same stream at once both end up waiting on the one row), and
`inbox_append` locks the run row. Each statement after a lock wait sees the
rows the lock holder committed, so sequence numbers have no gaps and no
duplicates. `migrate` takes a transaction-scoped advisory lock so that any
number of processes may start at once.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from rayflow.store._sql import SqlStore

#: key of the advisory lock that serialises schema migrations (any constant
#: shared by every rayflow process; "rayflow" in ASCII)
_MIGRATION_LOCK_KEY = 0x7261_7966_6C6F_77


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    # `%` is psycopg's placeholder character: escape any literal one first
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """`url` with its password replaced by `***`, for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class PostgresStore(SqlStore):
    blob_type = "BYTEA"
    lock_clause = " FOR UPDATE"
    migration_lock_sql = f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout_s: float = 30.0,
    ) -> None:
        """Open a pool of connections to the database at `url`.

        `url` is a libpq URL (`postgresql://user:password@host:port/db`,
        optionally with `?options=-csearch_path%3Dschema` to use a schema).
        Raises `ConnectionError` when no connection can be made within
        `connect_timeout_s`. Pools are per process: keep `max_size` small,
        since every RunActor process opens one and the server's
        `max_connections` bounds them all.
        """
        self.url = url
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            # transactions are explicit (conn.transaction()), never implicit
            kwargs={"autocommit": True},
            timeout=connect_timeout_s,
            open=False,
            name="rayflow-store",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as e:
            self._pool.close()
            raise ConnectionError(
                f"cannot connect to PostgreSQL at {redact(url)} within {connect_timeout_s} s;"
                " check that the server is running and the URL (RAYFLOW_STORE) is right"
            ) from e

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def _sql(self, sql: str) -> str:
        return _to_pyformat(sql)

    def close(self) -> None:
        self._pool.close()

    def __reduce__(self) -> tuple[type[PostgresStore], tuple[str]]:
        # A pool cannot cross a process boundary; a copy sent to another Ray
        # worker reconnects with the same URL.
        return (PostgresStore, (self.url,))

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"
