"""PostgreSQL store: the store for a multi-node Ray cluster.

Every process that touches the store (driver, Controller, inbox actors, each
RunActor, Serve replicas) opens its own small connection pool. All SQL is
shared with SQLite in `_sql.py` (and the `_sql_*` modules); this module supplies connections, the
`%s` placeholder style and row locks.

Concurrency rests on PostgreSQL's row locks under READ COMMITTED:
`append_chunks` locks the stream row (`SELECT ... FOR UPDATE`, after an
`INSERT ... ON CONFLICT DO NOTHING` for a new stream, so two processes that
create the same stream at once both end up waiting on the one row), and
`inbox_append` locks the run row. Each statement after a lock wait sees the
rows the lock holder committed, so sequence numbers have no gaps and no
duplicates. `migrate` takes a transaction-scoped advisory lock so that any
number of processes may start at once.

Every Store call is retried for up to RECONNECT_S when the server went away
(restart, failover, a cut connection: SQLSTATE 08/57P or a client-side
connection error): the failed transaction was rolled back, so running it
again is safe. A connection lost during COMMIT raises CommitUnknown instead
(it may have been applied).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
import time
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from rayflow.errors import Unavailable
from rayflow.store._sql import SqlStore

log = logging.getLogger("rayflow")

#: key of the advisory lock that serialises schema migrations (any constant
#: shared by every rayflow process; "rayflow" in ASCII)
_MIGRATION_LOCK_KEY = 0x7261_7966_6C6F_77

#: libpq TCP keep-alives, unless the URL sets its own: a NAT or load balancer
#: (AWS drops idle flows after ~350 s) must not silently cut pooled connections
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    # `%` is psycopg's placeholder character: escape any literal one first
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """`url` with its password replaced by `***`, for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


#: a Store call that failed because the server went away (restart, failover,
#: a cut connection) is tried again on a fresh connection for this long
RECONNECT_S = 30.0


class CommitUnknown(Unavailable):
    """The connection broke while COMMIT was in flight: the transaction may or
    may not have been applied, so it is not retried."""


def _server_went_away(e: psycopg.OperationalError) -> bool:
    """A broken or refused connection, or a server shutting down or starting
    up (SQLSTATE classes 08 and 57P): the transaction did not happen."""
    state = e.sqlstate
    return state is None or state.startswith(("08", "57P"))


#: writes that may run twice: chunks are deduplicated by (writer id, writer
#: seq), journal entries by their key, messages by their id. Only these are
#: retried after a COMMIT whose outcome is unknown; a state change (claim,
#: finish, suspend) is not, and its caller sees CommitUnknown.
IDEMPOTENT = frozenset(
    {
        "append_chunks",
        "append_chunks_many",
        "append_chunks_guarded",
        "append_chunks_own",
        "journal_append",
        "inbox_send_many",
        "named_touch",
    }
)


def _unreachable(call: str, e: Exception) -> Unavailable:
    """What a caller sees when the server stayed away: `Unavailable`, the
    error a run resumes after (it is not the task's failure) and HTTP
    answers with 503."""
    return Unavailable(
        f"PostgreSQL did not answer {call} within {RECONNECT_S:.0f} s: {e}; nothing was"
        " written, and the call is safe to retry"
    )


def _retried(method: Any) -> Any:
    """`method` tried again while the server is away, for up to RECONNECT_S.
    Safe: a transaction that failed before its COMMIT was rolled back; after
    an interrupted COMMIT (CommitUnknown) only IDEMPOTENT writes are."""
    idempotent = method.__name__ in IDEMPOTENT

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + RECONNECT_S
        pause = 0.05
        while True:
            try:
                return method(self, *args, **kwargs)
            except PoolClosed:
                # this process closed the Store: it is not coming back (an
                # OperationalError without SQLSTATE, like a refused connection)
                raise
            except PoolTimeout as e:
                # the pool already waited its whole timeout for a connection
                raise _unreachable(method.__name__, e) from e
            except (psycopg.OperationalError, CommitUnknown) as e:
                unknown = isinstance(e, CommitUnknown)
                if unknown and not idempotent:
                    raise
                away = unknown or _server_went_away(e)  # type: ignore[arg-type]
                if not away:
                    raise
                if time.monotonic() + pause > deadline:
                    if unknown:
                        raise
                    raise _unreachable(method.__name__, e) from e
                log.warning("PostgreSQL store: %s failed (%s); retrying", method.__name__, e)
                time.sleep(pause)
                pause = min(2 * pause, 1.0)

    return call


class PostgresStore(SqlStore):
    blob_type = "BYTEA"
    lock_clause = " FOR UPDATE"
    share_lock_clause = " FOR SHARE"
    binary_collation = ' COLLATE "C"'
    contains_sql = "strpos({column}, ?) > 0"
    migration_lock_sql = f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})"
    integrity_errors = (psycopg.errors.UniqueViolation,)

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout_s: float = 30.0,
        check_idle_s: float = 10.0,
        max_idle_s: float = 60.0,
    ) -> None:
        """Open a pool of connections to the database at `url`.

        `url` is a libpq URL (`postgresql://user:password@host:port/db`,
        optionally with `?options=-csearch_path%3Dschema` to use a schema).
        Raises `ConnectionError` when no connection can be made within
        `connect_timeout_s`. Pools are per process: keep `max_size` small,
        since every RunActor process opens one and the server's
        `max_connections` bounds them all. A connection idle in the pool for
        `check_idle_s` or longer is checked before use, and replaced if the
        server closed it meanwhile. Connections beyond `min_size` are closed
        after `max_idle_s` unused (a warm RunActor with `min_size=0` holds none).
        """
        self.url = url
        self._check_idle_s = check_idle_s
        #: when each pooled connection was last given back (monotonic seconds)
        self._last_used: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        given = conninfo_to_dict(url)
        kwargs: dict[str, Any] = {k: v for k, v in _KEEPALIVES.items() if k not in given}
        # transactions are explicit (conn.transaction()), never implicit
        kwargs["autocommit"] = True
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=connect_timeout_s,
            check=self._check_if_idle,
            max_idle=max_idle_s,
            open=False,
            name="rayflow-store",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
            if min_size == 0:  # nothing opened yet: fail now on a wrong URL, not at first use
                with self._pool.connection():
                    pass
        except (PoolTimeout, psycopg.OperationalError) as e:
            self._pool.close()
            raise Unavailable(
                f"cannot connect to PostgreSQL at {redact(url)} within {connect_timeout_s} s;"
                " check that the server is running and the URL (RAYFLOW_STORE) is right"
            ) from e

    def _check_if_idle(self, conn: psycopg.Connection[Any]) -> None:
        # A connection that sat in the pool may have been closed by the server
        # (restart, failover, idle timeout); ping it before handing it out,
        # but only then, so that busy connections cost no extra round trip.
        last = self._last_used.get(conn)
        if last is None or time.monotonic() - last >= self._check_idle_s:
            ConnectionPool.check_connection(conn)

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[psycopg.Cursor[Any]]:
        with self._pool.connection() as conn:
            committing = False
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
                    committing = True
            except psycopg.OperationalError as e:
                if committing and write:
                    raise CommitUnknown(
                        f"the connection to PostgreSQL broke while a COMMIT was in flight: {e}"
                    ) from e
                raise
            finally:
                self._last_used[conn] = time.monotonic()

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


# every Store call survives a server restart or a cut connection (retried)
for _name, _method in inspect.getmembers(SqlStore, inspect.isfunction):
    if not _name.startswith("_") and _name != "close":
        setattr(PostgresStore, _name, _retried(_method))
