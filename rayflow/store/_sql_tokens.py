"""Wait tokens in SQL. A token row is locked by every transaction that
changes it or decides on it (completion, timeout, a run settling its
suspension), so a completion and a run suspending on the token at the same
moment never miss each other: whichever commits second sees the other.

A run waiting on a token has an ordinary waitpoint whose `stream_id` is
`token:<id>`; completing the token resolves those waitpoints and queues
their runs in the completion's transaction.
"""

from __future__ import annotations

import json
from typing import Any

from rayflow._status import WaitpointStatus, WaitTokenStatus
from rayflow.store._sql_base import PENDING, QUEUED, WAITING, SqlBase
from rayflow.store.base import TOKEN_WAIT_PREFIX, WaitTokenRecord, now_ms

_COLUMNS = (
    "id, status, output, output_is_error, timeout_at, idempotency_key,"
    " idempotency_key_expires_at, tags, created_at, completed_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM wait_tokens"
_WAITING = WaitTokenStatus.WAITING.value


def _token(row: Any) -> WaitTokenRecord:
    return WaitTokenRecord(
        id=row[0],
        status=row[1],
        output=row[2],
        output_is_error=bool(row[3]),
        timeout_at=row[4],
        idempotency_key=row[5],
        idempotency_key_expires_at=row[6],
        tags=list(json.loads(row[7])),
        created_at=int(row[8]),
        completed_at=row[9],
    )


class TokensSql(SqlBase):
    def create_wait_token(self, token: WaitTokenRecord) -> tuple[WaitTokenRecord, bool]:
        now = now_ms()
        with self._tx() as c:
            if token.idempotency_key is not None:
                found = c.execute(
                    _SELECT + " WHERE idempotency_key = ?" + self.lock_clause,
                    (token.idempotency_key,),
                ).fetchone()
                if found is not None:
                    earlier = _token(found)
                    expires = earlier.idempotency_key_expires_at
                    if expires is None or expires > now:
                        return earlier, False
                    # the key expired: it names a new token from now on
                    c.execute(
                        "UPDATE wait_tokens SET idempotency_key = NULL WHERE id = ?",
                        (earlier.id,),
                    )
            inserted = c.execute(
                f"INSERT INTO wait_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (
                    token.id,
                    token.status,
                    token.output,
                    int(token.output_is_error),
                    token.timeout_at,
                    token.idempotency_key,
                    token.idempotency_key_expires_at,
                    json.dumps(token.tags),
                    token.created_at,
                    token.completed_at,
                ),
            ).rowcount
            if inserted:
                return token, True
        # a token with this id (a task's replay) or this key (a concurrent
        # creation, PostgreSQL: the unique index made this insert a no-op)
        # is there: converge on it
        with self._read() as c:
            row = c.execute(
                _SELECT + " WHERE id = ? OR idempotency_key = ?",
                (token.id, token.idempotency_key),
            ).fetchone()
        if row is None:  # pragma: no cover - the conflicting row cannot vanish
            raise RuntimeError(f"wait token {token.id} conflicted with a token that is gone")
        return _token(row), False

    def get_wait_token(self, token_id: str) -> WaitTokenRecord | None:
        with self._read() as c:
            row = c.execute(_SELECT + " WHERE id = ?", (token_id,)).fetchone()
        return _token(row) if row else None

    def list_wait_tokens(
        self,
        *,
        statuses: list[str] | None = None,
        tags: list[str] | None = None,
        idempotency_key: str | None = None,
        created_from: int | None = None,
        created_to: int | None = None,
        before: tuple[int, str] | None = None,
        limit: int = 100,
    ) -> list[WaitTokenRecord]:
        where: list[str] = []
        args: list[Any] = []
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args += statuses
        if idempotency_key is not None:
            where.append("idempotency_key = ?")
            args.append(idempotency_key)
        if created_from is not None:
            where.append("created_at >= ?")
            args.append(created_from)
        if created_to is not None:
            where.append("created_at <= ?")
            args.append(created_to)
        rows = self._newest_first(_SELECT, where, args, before=before, tags=tags, limit=limit)
        return [_token(r) for r in rows]

    def complete_wait_token(
        self, token_id: str, output: str | None, is_error: bool = False
    ) -> tuple[WaitTokenRecord | None, list[str]]:
        with self._tx() as c:
            token, woken = self._complete(c, token_id, output, is_error)
        self._changed(*woken)  # WAITING -> QUEUED
        return token, woken

    def _complete(
        self, c: Any, token_id: str, output: str | None, is_error: bool
    ) -> tuple[WaitTokenRecord | None, list[str]]:
        """`output` None with `is_error`: the token timed out."""
        row = c.execute(_SELECT + " WHERE id = ?" + self.lock_clause, (token_id,)).fetchone()
        if row is None:
            return None, []
        token = _token(row)
        if token.status != _WAITING:
            return token, []  # the first completion stands
        now = now_ms()
        if not is_error and token.timeout_at is not None and token.timeout_at <= now:
            # its time ran out before this completion: the timeout was first
            output, is_error = None, True
        if output is None:
            output = _timeout_output(token)
        status = WaitTokenStatus.TIMED_OUT if is_error else WaitTokenStatus.COMPLETED
        c.execute(
            "UPDATE wait_tokens SET status = ?, output = ?, output_is_error = ?,"
            " completed_at = ? WHERE id = ?",
            (status.value, output, int(is_error), now, token_id),
        )
        token.status, token.output = status.value, output
        token.output_is_error, token.completed_at = is_error, now
        waiting = c.execute(
            "SELECT run_id FROM waitpoints WHERE stream_id = ? AND status = ?",
            (TOKEN_WAIT_PREFIX + token_id, PENDING),
        ).fetchall()
        woken = [r[0] for r in waiting if self._resolve_token_wait(c, r[0])]
        return token, woken

    def expire_wait_tokens(self, now: int) -> list[str]:
        with self._read() as c:
            due = [
                r[0]
                for r in c.execute(
                    "SELECT id FROM wait_tokens WHERE status = ? AND timeout_at IS NOT NULL"
                    " AND timeout_at <= ? ORDER BY timeout_at LIMIT 1000",
                    (_WAITING, now),
                ).fetchall()
            ]
        woken: list[str] = []
        for token_id in due:
            with self._tx() as c:
                woken += self._complete(c, token_id, None, True)[1]
        self._changed(*woken)
        return woken

    def settle_token_wait(self, run_id: str, token_id: str) -> bool:
        """After a run suspended on the token: if the token was completed
        before the waitpoint existed (it woke nobody), resolve the run's own
        waitpoint and queue it. True when this call queued the run."""
        with self._tx() as c:
            row = c.execute(
                "SELECT status FROM wait_tokens WHERE id = ?" + self.lock_clause, (token_id,)
            ).fetchone()
            if row is not None and row[0] == _WAITING:
                return False
            resolved = self._resolve_token_wait(c, run_id)
        if resolved:
            self._changed(run_id)
        return resolved

    def _resolve_token_wait(self, c: Any, run_id: str) -> bool:
        cur = c.execute(
            "UPDATE waitpoints SET status = ? WHERE run_id = ? AND status = ?",
            (WaitpointStatus.RESOLVED.value, run_id, PENDING),
        )
        if not cur.rowcount:
            return False
        c.execute(
            "UPDATE runs SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
            (QUEUED, now_ms(), run_id, WAITING),
        )
        return True


def _timeout_output(token: WaitTokenRecord) -> str:
    return json.dumps({"message": f"wait token {token.id} timed out"})
