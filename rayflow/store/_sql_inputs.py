"""Input streams and waitpoints in SQL: a send checks the run under a lock
on its row, dedupes by message id, appends with the next seq and, in the
same transaction, resolves a PENDING waitpoint on that stream and queues the
run; suspending a run registers its waitpoint in one transaction.
"""

from __future__ import annotations

from typing import Any

from rayflow._status import WaitpointStatus
from rayflow.errors import RunFinished, RunNotFound
from rayflow.store._sql_base import (
    _WP_SELECT,
    PENDING,
    QUEUED,
    WAITING,
    SqlBase,
    _waitpoint,
)
from rayflow.store.base import (
    FINISHED_STATUSES,
    SESSION_WAIT_PREFIX,
    InboxMessage,
    Waitpoint,
    now_ms,
)


class InputsSql(SqlBase):
    def suspend_run(self, wp: Waitpoint) -> bool:
        with self._tx() as c:
            if not self._set_active(c, wp.run_id, WAITING, actor_name=None):
                return False
            self._upsert_waitpoint(c, wp)
            if wp.stream_id.startswith(SESSION_WAIT_PREFIX):
                # suspended on its session: done with every record it took
                # (in this transaction: a cancel of the WAITING run keeps that)
                c.execute(
                    "UPDATE session_cursors SET settled_seq = next_seq WHERE session_id = ?",
                    (wp.stream_id.removeprefix(SESSION_WAIT_PREFIX),),
                )
        self._changed(wp.run_id)  # -> WAITING
        return True

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
        # a retried send answers as the first one did, even once the run has finished
        if message_id is not None:
            seen = self._inbox_seen(c, run_id, stream_id, message_id)
            if seen is not None:
                return seen, False
        if run[0] in FINISHED_STATUSES:
            raise RunFinished(
                f"run {run_id} is {run[0]}; input can only be sent to a run that is still running",
                run_id=run_id,
                stream=stream_id,
                status=run[0],
            )
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

    def inbox_find(self, run_id: str, stream_id: str, message_id: str) -> InboxMessage | None:
        with self._read() as c:
            return self._inbox_seen(c, run_id, stream_id, message_id)

    def _inbox_seen(
        self, c: Any, run_id: str, stream_id: str, message_id: str
    ) -> InboxMessage | None:
        seen = c.execute(
            "SELECT seq, data, created_at FROM inbox WHERE run_id = ? AND stream_id = ?"
            " AND message_id = ?",
            (run_id, stream_id, message_id),
        ).fetchone()
        if seen is None:
            return None
        return InboxMessage(seq=int(seen[0]), data=seen[1], created_at=int(seen[2]))

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

    def inbox_streams_many(self, run_ids: list[str]) -> list[list[str]]:
        found: dict[str, list[str]] = {}
        with self._read() as c:
            for start in range(0, len(run_ids), 500):
                page = sorted(set(run_ids[start : start + 500]))
                rows = c.execute(
                    "SELECT DISTINCT run_id, stream_id FROM inbox WHERE run_id IN"
                    f" ({', '.join('?' for _ in page)}) ORDER BY run_id, stream_id",
                    page,
                ).fetchall()
                for r in rows:
                    found.setdefault(r[0], []).append(r[1])
        return [list(found.get(run_id, ())) for run_id in run_ids]

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
