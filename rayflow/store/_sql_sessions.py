"""Sessions in SQL. A session row is locked by every transaction that
decides on it (a start with its external id, a continuation, a close), so
two starts converge, two continuations create one run, and nothing starts a
run on a session a close has committed.

The session's first run is inserted in the transaction that creates the
session (there is no moment where the session exists and no run was asked
for); launching it is the caller's job (`Controller.revive`, or the stray
sweep that launches any QUEUED run nobody launched).
"""

from __future__ import annotations

import json
from typing import Any

from rayflow.errors import InvalidArgument, SessionClosed
from rayflow.store._sql_base import SqlBase
from rayflow.store.base import RunRecord, SessionRecord, now_ms

_COLUMNS = (
    "id, external_id, type, task_id, trigger_config, current_run_id, tags, metadata,"
    " closed_at, closed_reason, expires_at, created_at, updated_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM sessions"
#: the prefix of every session id; an external id may not start with it
SESSION_PREFIX = "session_"
#: a session status -> its condition on a row (and how many `now` it takes)
_STATUS_SQL = {
    "CLOSED": ("closed_at IS NOT NULL", 0),
    "EXPIRED": ("(closed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?)", 1),
    "ACTIVE": ("(closed_at IS NULL AND (expires_at IS NULL OR expires_at > ?))", 1),
}


def _session(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row[0],
        external_id=row[1],
        type=row[2],
        task_id=row[3],
        trigger_config=row[4],
        current_run_id=row[5],
        tags=list(json.loads(row[6])),
        metadata=row[7],
        closed_at=row[8],
        closed_reason=row[9],
        expires_at=row[10],
        created_at=int(row[11]),
        updated_at=int(row[12]),
    )


def _closed(session: SessionRecord) -> SessionClosed:
    why = f"closed ({session.closed_reason})" if session.closed_at else "expired"
    return SessionClosed(
        f"session {session.id} ({session.external_id}) is {why}; it takes no more records"
        " and starts no runs: start a new session under another external id"
    )


class SessionsSql(SqlBase):
    def _insert_run(self, c: Any, run: RunRecord) -> tuple[RunRecord, bool]:
        raise NotImplementedError  # RunsSql

    def start_session(
        self, session: SessionRecord, first_run: RunRecord
    ) -> tuple[SessionRecord, bool]:
        now = now_ms()
        with self._tx() as c:
            if session.external_id is not None:
                found = self._find(c, "external_id", session.external_id, lock=True)
                if found is not None:
                    return self._cached_start(c, found, session, now), False
            inserted = c.execute(
                f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (
                    session.id,
                    session.external_id,
                    session.type,
                    session.task_id,
                    session.trigger_config,
                    first_run.id,
                    json.dumps(session.tags),
                    session.metadata,
                    None,
                    None,
                    session.expires_at,
                    now,
                    now,
                ),
            ).rowcount
            if not inserted:
                # a concurrent start with this external id committed first
                # (PostgreSQL: the unique index made this insert a no-op)
                found = self._find(c, "external_id", session.external_id, lock=True)
                assert found is not None
                return self._cached_start(c, found, session, now), False
            self._insert_run(c, first_run)
            session.current_run_id, session.created_at, session.updated_at = first_run.id, now, now
        self._changed(first_run.id)
        return session, True

    def _cached_start(
        self, c: Any, found: SessionRecord, asked: SessionRecord, now: int
    ) -> SessionRecord:
        if found.closed_or_expired(now):
            raise _closed(found)
        # a repeated start writes its config through (it applies to future runs)
        c.execute(
            "UPDATE sessions SET trigger_config = ?, tags = ?, metadata = COALESCE(?, metadata),"
            " expires_at = COALESCE(?, expires_at), updated_at = ? WHERE id = ?",
            (
                asked.trigger_config,
                json.dumps(asked.tags),
                asked.metadata,
                asked.expires_at,
                now,
                found.id,
            ),
        )
        found.trigger_config, found.tags = asked.trigger_config, asked.tags
        found.metadata = asked.metadata if asked.metadata is not None else found.metadata
        found.expires_at = asked.expires_at if asked.expires_at is not None else found.expires_at
        found.updated_at = now
        return found

    def _find(self, c: Any, column: str, value: Any, *, lock: bool = False) -> SessionRecord | None:
        row = c.execute(
            _SELECT + f" WHERE {column} = ?" + (self.lock_clause if lock else ""), (value,)
        ).fetchone()
        return _session(row) if row else None

    def get_session(self, id_or_external_id: str) -> SessionRecord | None:
        column = "id" if id_or_external_id.startswith(SESSION_PREFIX) else "external_id"
        with self._read() as c:
            return self._find(c, column, id_or_external_id)

    def list_sessions(
        self,
        *,
        types: list[str] | None = None,
        task_ids: list[str] | None = None,
        tags: list[str] | None = None,
        external_id: str | None = None,
        statuses: list[str] | None = None,
        created_from: int | None = None,
        created_to: int | None = None,
        before: tuple[int, str] | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        where: list[str] = []
        args: list[Any] = []
        for column, values in (("type", types), ("task_id", task_ids)):
            if values:
                where.append(f"{column} IN ({', '.join('?' for _ in values)})")
                args += values
        if external_id is not None:
            where.append("external_id = ?")
            args.append(external_id)
        if created_from is not None:
            where.append("created_at >= ?")
            args.append(created_from)
        if created_to is not None:
            where.append("created_at <= ?")
            args.append(created_to)
        if statuses:
            # in the query, not after it: a page holds `limit` matches and the
            # cursor walks every one of them
            now = now_ms()
            either: list[str] = []
            for status in dict.fromkeys(statuses):
                if status not in _STATUS_SQL:
                    raise InvalidArgument(
                        f"session status {status!r} is not ACTIVE, CLOSED or EXPIRED"
                    )
                sql, uses_now = _STATUS_SQL[status]
                either.append(sql)
                args += [now] * uses_now
            where.append("(" + " OR ".join(either) + ")")
        rows = self._newest_first(_SELECT, where, args, before=before, tags=tags, limit=limit)
        return [_session(r) for r in rows]

    def update_session(
        self, session_id: str, *, tags: list[str] | None = None, metadata: str | None = None
    ) -> SessionRecord | None:
        with self._tx() as c:
            found = self._find(c, "id", session_id, lock=True)
            if found is None:
                return None
            found.tags = tags if tags is not None else found.tags
            found.metadata = metadata if metadata is not None else found.metadata
            found.updated_at = now_ms()
            c.execute(
                "UPDATE sessions SET tags = ?, metadata = ?, updated_at = ? WHERE id = ?",
                (json.dumps(found.tags), found.metadata, found.updated_at, session_id),
            )
        return found

    def close_session(self, session_id: str, reason: str | None) -> SessionRecord | None:
        with self._tx() as c:
            found = self._find(c, "id", session_id, lock=True)
            if found is None or found.closed_at is not None:
                return found
            found.closed_at = found.updated_at = now_ms()
            found.closed_reason = reason
            c.execute(
                "UPDATE sessions SET closed_at = ?, closed_reason = ?, updated_at = ? WHERE id = ?",
                (found.closed_at, reason, found.updated_at, session_id),
            )
        return found
