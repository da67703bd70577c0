"""The Store written once in the SQL that SQLite and PostgreSQL share.

Subclasses supply a connection (`_transaction`), the placeholder style and
the row-locking clause (`_sql_base.SqlBase`); every query lives in this
package, split by job — runs, tasks, journal and retention (`_sql_runs`),
output streams (`_sql_streams`; a group commit's round `_sql_stream_rounds`),
input streams and waitpoints (`_sql_inputs`), named streams owned by no run
(`_sql_named`, `_sql_named_life`), wait tokens (`_sql_tokens`), sessions
(`_sql_sessions`, their streams `_sql_session_io`) — so both stores behave
alike.
"""

from __future__ import annotations

from rayflow.store._sql_base import SqlBase
from rayflow.store._sql_inputs import InputsSql
from rayflow.store._sql_named_life import NamedLifecycleSql
from rayflow.store._sql_runs import RunsSql
from rayflow.store._sql_session_io import SessionIoSql
from rayflow.store._sql_sessions import SessionsSql
from rayflow.store._sql_streams import StreamsSql
from rayflow.store._sql_tokens import TokensSql


class SqlStore(
    RunsSql, StreamsSql, InputsSql, SessionIoSql, NamedLifecycleSql, TokensSql, SessionsSql, SqlBase
):
    """Every `Store` method, in SQL; subclass it for a database."""


__all__ = ["SqlBase", "SqlStore"]
