"""Session streams in SQL: a send to a session and what it decides, the
consumed cursors, and settling a run that suspended on its session.

Every decision takes the session row's lock first (as `_sql_sessions` does),
then the stream row's: a send stores its record and — in the same
transaction — wakes the session's waiting run or continues the session
(inserts a fresh run and makes it current). Two sends to a session whose run
ended therefore create one run between them, and a close committed first
refuses the send. A run that suspends on its session settles under the same
lock (`settle_session_wait`), so a record stored between its last read and
its waitpoint is never missed.

A session's consumed cursor (`session_cursors`, one row per input stream)
moves in the transaction that journals the take (`session_consume`): the run
replays the take from its journal, and a continuation run starts at the
cursor — no record is handed out twice or skipped across runs. Beside it,
the settled cursor: the records a run took and has finished with (a take
settles the takes before it on that stream, a suspension on the session
all of them, a return everything the run took). When the run ends any other
way (failed, crashed, cancelled, timed out), the send that continues the
session moves the consumed cursor back to the settled one, so the records
whose handling never finished go to the next run: at least once, never
silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rayflow._status import WaitpointStatus
from rayflow.errors import InvalidArgument, SessionNotFound
from rayflow.store._sql_named_life import NamedLifecycleSql
from rayflow.store._sql_sessions import _SELECT, _closed, _session
from rayflow.store.base import (
    FINISHED_STATUSES,
    SESSION_WAIT_PREFIX,
    JournalEntry,
    RunRecord,
    SessionRecord,
    SessionSend,
    now_ms,
)
from rayflow.store.named import NamedOutcome, NamedStreamSpec, NamedWrite, NamedWriteResult

_PENDING = WaitpointStatus.PENDING.value
_WAITING = "WAITING"
_COMPLETED = "COMPLETED"
JSON_TYPE = "application/json"


def in_path(session_id: str) -> str:
    return f"sessions/{session_id}/in"


class SessionIoSql(NamedLifecycleSql):
    def _insert_run(self, c: Any, run: RunRecord) -> tuple[RunRecord, bool]:
        raise NotImplementedError  # RunsSql

    def _resolve(self, c: Any, run_id: str, status: str, inbox_seq: int | None) -> bool:
        raise NotImplementedError  # InputsSql

    def _session_row(self, c: Any, session_id: str) -> SessionRecord:
        row = c.execute(_SELECT + " WHERE id = ?" + self.lock_clause, (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound(f"session {session_id} not found; check the id")
        return _session(row)

    def session_send(
        self,
        session_id: str,
        write: NamedWrite,
        max_bytes: int,
        *,
        wakes: bool,
        next_run: Callable[[SessionRecord], RunRecord] | None,
        send_key: str | None = None,
        ttl_s: int | None = None,
        send_key_window_ms: int | None = None,
    ) -> SessionSend:
        now = now_ms()
        # a key older than its window dedupes nothing (retention deletes it later)
        keys_from = 0 if send_key_window_ms is None else now - send_key_window_ms
        runs_changed: list[str] = []
        with self._tx() as c:
            session = self._session_row(c, session_id)
            if session.closed_or_expired(now):
                raise _closed(session)
            if send_key is not None:
                row = c.execute(
                    "SELECT seq FROM session_sent_keys WHERE path = ? AND send_key = ?"
                    " AND created_at >= ?",
                    (write.path, send_key, keys_from),
                ).fetchone()
                if row is not None:
                    result = NamedWriteResult(NamedOutcome.DUPLICATE, self._locked(c, write.path))
                    run_id = session.current_run_id
                    return SessionSend(result, seq=int(row[0]), duplicate=True, run_id=run_id)
            existing = self._locked(c, write.path)
            if existing is None or (existing.expired(now) and not existing.deleted):
                self._create_in(c, NamedStreamSpec(write.path, JSON_TYPE, ttl_s=ttl_s), [], 0, now)
            results, changed = self._write_in(c, [write], max_bytes, now)
            sent = SessionSend(results[0], run_id=session.current_run_id)
            if sent.result.outcome is not NamedOutcome.OK:
                return sent
            sent.seq = sent.result.start
            if send_key is not None:
                c.execute(
                    "INSERT INTO session_sent_keys (path, send_key, seq, created_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (path, send_key) DO UPDATE"
                    " SET seq = excluded.seq, created_at = excluded.created_at",
                    (write.path, send_key, sent.seq, now),
                )
            if wakes:
                self._wake_or_continue(c, session, sent, next_run)
                runs_changed = [r for r in (sent.woke, sent.continued) if r is not None]
        self._named_changed(*sorted(changed))
        self._changed(*runs_changed)
        return sent

    def _wake_or_continue(
        self,
        c: Any,
        session: SessionRecord,
        sent: SessionSend,
        next_run: Callable[[SessionRecord], RunRecord] | None,
    ) -> None:
        run_id = session.current_run_id
        status = None
        if run_id is not None:
            row = c.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            status = row[0] if row else None
        if run_id is None or status is None or status in FINISHED_STATUSES:
            if next_run is None:
                return
            if status is not None and status != _COMPLETED:
                # it ended before it finished with what it took: the next run
                # gets those records again
                c.execute(
                    "UPDATE session_cursors SET next_seq = settled_seq"
                    " WHERE session_id = ? AND settled_seq < next_seq",
                    (session.id,),
                )
            elif status == _COMPLETED:  # it returned: done with all it took
                c.execute(
                    "UPDATE session_cursors SET settled_seq = next_seq WHERE session_id = ?",
                    (session.id,),
                )
            run = next_run(session)
            self._insert_run(c, run)
            c.execute(
                "UPDATE sessions SET current_run_id = ?, updated_at = ? WHERE id = ?",
                (run.id, now_ms(), session.id),
            )
            self._runs_from_cursor(c, session.id)
            sent.continued = sent.run_id = run.id
        elif status == _WAITING and self._resolve_session_wait(c, run_id, session.id):
            sent.woke = run_id

    def _waits_on(self, c: Any, run_id: str, session_id: str) -> bool:
        row = c.execute(
            "SELECT stream_id FROM waitpoints WHERE run_id = ? AND status = ?",
            (run_id, _PENDING),
        ).fetchone()
        return row is not None and bool(row[0] == SESSION_WAIT_PREFIX + session_id)

    def _resolve_session_wait(self, c: Any, run_id: str, session_id: str) -> bool:
        if not self._waits_on(c, run_id, session_id):
            return False  # it waits on something else: this record waits for it
        return self._resolve(c, run_id, WaitpointStatus.RESOLVED.value, None)

    def session_consume(
        self,
        run_id: str,
        attempt: int,
        entry: JournalEntry | None,
        session_id: str,
        path: str,
        next_seq: int,
        settled_seq: int | None = None,
    ) -> None:
        # no settled seq (a delivery to `.on()` handlers): a new row settles
        # nothing of what this take hands out
        settled = next_seq - 1 if settled_seq is None else settled_seq
        settles = (
            ""
            if settled_seq is None
            else ", settled_seq = CASE WHEN excluded.settled_seq > session_cursors.settled_seq"
            " THEN excluded.settled_seq ELSE session_cursors.settled_seq END"
        )
        with self._tx() as c:
            row = c.execute(
                "SELECT current_run_id FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFound(f"session {session_id} not found; check the id")
            if row[0] != run_id:
                raise InvalidArgument(
                    f"run {run_id} is not the run of session {session_id} (that is {row[0]}):"
                    " only a session's own run takes records from its input; read them"
                    " without taking with session.input.read() / session.output.read()"
                )
            if entry is not None:
                c.execute(
                    "INSERT INTO journal (run_id, attempt, seq, kind, name, value)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (run_id, attempt, entry.seq, entry.kind, entry.name, entry.value),
                )
            c.execute(
                "INSERT INTO session_cursors (session_id, path, next_seq, settled_seq)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (session_id, path) DO UPDATE SET next_seq ="
                " CASE WHEN excluded.next_seq > session_cursors.next_seq"
                " THEN excluded.next_seq ELSE session_cursors.next_seq END" + settles,
                (session_id, path, next_seq, settled),
            )

    def session_settle(self, run_id: str, session_id: str, path: str, settled_seq: int) -> bool:
        with self._tx() as c:
            row = c.execute(
                "SELECT current_run_id FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None or row[0] != run_id:
                return False  # not its session's run (any more): it settles nothing
            c.execute(
                "INSERT INTO session_cursors (session_id, path, next_seq, settled_seq)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (session_id, path) DO UPDATE SET"
                " next_seq = CASE WHEN excluded.next_seq > session_cursors.next_seq"
                " THEN excluded.next_seq ELSE session_cursors.next_seq END,"
                " settled_seq = CASE WHEN excluded.settled_seq > session_cursors.settled_seq"
                " THEN excluded.settled_seq ELSE session_cursors.settled_seq END",
                (session_id, path, settled_seq, settled_seq),
            )
        return True

    def session_cursor(self, session_id: str, path: str) -> int:
        with self._read() as c:
            return self._cursor(c, session_id, path)

    def _cursor(self, c: Any, session_id: str, path: str) -> int:
        row = c.execute(
            "SELECT next_seq FROM session_cursors WHERE session_id = ? AND path = ?",
            (session_id, path),
        ).fetchone()
        return int(row[0]) if row else 0

    def settle_session_wait(self, run_id: str, session_id: str) -> bool:
        with self._tx() as c:
            session = self._session_row(c, session_id)
            path = in_path(session_id)
            row = c.execute("SELECT length FROM named_streams WHERE path = ?", (path,)).fetchone()
            length = int(row[0]) if row else 0
            waiting = length > self._cursor(c, session_id, path)
            if not waiting and not session.closed_or_expired(now_ms()):
                return False
            resolved = self._resolve_session_wait(c, run_id, session_id)
        if resolved:
            self._changed(run_id)
        return resolved

    def session_swap(
        self, session_id: str, calling_run_id: str, next_run: Callable[[SessionRecord], RunRecord]
    ) -> tuple[str | None, bool]:
        with self._tx() as c:
            session = self._session_row(c, session_id)
            if session.closed_or_expired(now_ms()):
                raise _closed(session)
            if session.current_run_id != calling_run_id:
                return session.current_run_id, False  # someone else moved on
            run = next_run(session)
            self._insert_run(c, run)
            c.execute(
                "UPDATE sessions SET current_run_id = ?, updated_at = ? WHERE id = ?",
                (run.id, now_ms(), session.id),
            )
            self._runs_from_cursor(c, session.id)
        self._changed(run.id)
        return run.id, True

    def _runs_from_cursor(self, c: Any, session_id: str) -> None:
        """A new current run takes from the cursors on: what lies before
        them is no replay's business any more (retention may drop it)."""
        c.execute(
            "UPDATE session_cursors SET run_from_seq = next_seq WHERE session_id = ?",
            (session_id,),
        )

    # -- retention -------------------------------------------------------------
    #: sessions deleted per transaction by `delete_expired_sessions`
    session_expire_batch = 200

    def delete_expired_sessions(self, ended_before: int, keys_before: int) -> int:
        sessions = 0
        while True:
            now = now_ms()
            finished = ", ".join("?" for _ in FINISHED_STATUSES)
            with self._tx() as c:
                # ended long ago, and its run too: a run still alive (or
                # waiting) keeps its session, as run retention keeps the run
                ids = [
                    r[0]
                    for r in c.execute(
                        "SELECT s.id FROM sessions s LEFT JOIN runs r ON r.id = s.current_run_id"
                        " WHERE (s.closed_at < ? OR (s.closed_at IS NULL AND s.expires_at < ?))"
                        f" AND (r.id IS NULL OR r.status IN ({finished}))"
                        " ORDER BY s.id LIMIT ?",
                        (ended_before, ended_before, *FINISHED_STATUSES, self.session_expire_batch),
                    ).fetchall()
                ]
                paths: list[str] = []
                for session_id in ids:
                    paths += self._drop_session(c, session_id, now)
            sessions += len(ids)
            if paths:
                self._named_changed(*paths)
            if len(ids) < self.session_expire_batch:
                break
        with self._tx() as c:
            c.execute("DELETE FROM session_sent_keys WHERE created_at < ?", (keys_before,))
        self._trim_taken_inputs(ended_before)
        return sessions

    def _trim_taken_inputs(self, before: int) -> None:
        """Delete the input records (`.in`, channels' `in`) of open sessions
        stored before `before` that ended runs took and settled: below both
        the settled cursor and where the current run began taking (its
        replay reads what it took), as S2's retention would."""
        after: tuple[str, str] = ("", "")
        while True:
            changed: list[str] = []
            with self._tx() as c:
                rows = c.execute(
                    "SELECT session_id, path, settled_seq, run_from_seq FROM session_cursors"
                    " WHERE session_id > ? OR (session_id = ? AND path > ?)"
                    " ORDER BY session_id, path LIMIT ?",
                    (after[0], after[0], after[1], self.session_expire_batch),
                ).fetchall()
                for _, path, settled, run_from in rows:
                    cut = min(int(settled or 0), int(run_from or 0))
                    if cut <= 0:
                        continue
                    where = " FROM named_chunks WHERE path = ? AND end_pos <= ? AND created_at < ?"
                    freed = c.execute(
                        "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0)" + where,
                        (path, cut, before),
                    ).fetchone()
                    if not freed[0]:
                        continue
                    c.execute("DELETE" + where, (path, cut, before))
                    c.execute(
                        "UPDATE named_streams SET size_bytes = size_bytes - ? WHERE path = ?",
                        (int(freed[1]), path),
                    )
                    changed.append(path)
            if changed:
                self._named_changed(*changed)
            if len(rows) < self.session_expire_batch:
                return
            after = (rows[-1][0], rows[-1][1])

    def _drop_session(self, c: Any, session_id: str, now: int) -> list[str]:
        """Delete a session with its `.in` and `.out`, cursors and send keys;
        the paths of the streams deleted. Its side channels go by their own
        sliding TTL (`CHANNEL_TTL_S` after their last use: a path-prefix
        scan per session would not use the path index on PostgreSQL under
        a non-C collation); its runs by run retention."""
        self._session_row(c, session_id)  # its lock: no send or close is deciding on it
        paths: list[str] = []
        for io in ("in", "out"):
            path = f"sessions/{session_id}/{io}"
            state = self._locked(c, path)
            if state is not None and not state.deleted:
                self._delete_in(c, state, now)
                paths.append(path)
            c.execute("DELETE FROM session_sent_keys WHERE path = ?", (path,))
        c.execute("DELETE FROM session_cursors WHERE session_id = ?", (session_id,))
        c.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        return paths
