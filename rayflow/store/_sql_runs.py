"""Tasks, runs, the journal and retention in SQL: creating runs (an
idempotency key returns the existing run), claiming and finishing them (a
finished run never moves), listing them, and deleting finished runs past
retention with everything they own.
"""

from __future__ import annotations

import json
from typing import Any

from rayflow._status import WaitTokenStatus
from rayflow.store._sql_base import (
    _RUN_COLUMNS,
    _RUN_SELECT,
    _WP_SELECT,
    EXECUTING,
    PENDING,
    QUEUED,
    WAITING,
    SqlBase,
    _run,
    _waitpoint,
    from_keys,
)
from rayflow.store.base import (
    FINISHED_STATUSES,
    Claim,
    JournalEntry,
    RunRecord,
    Waitpoint,
    now_ms,
)


class RunsSql(SqlBase):
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
                for row in c.execute(_RUN_SELECT + f" WHERE id IN ({marks})", page).fetchall():
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

    def claim_run(self, run_id: str, actor_name: str) -> Claim:
        return self.claim_runs([(run_id, actor_name)])[0]

    def claim_runs(self, claims: list[tuple[str, str]]) -> list[Claim]:
        now = now_ms()
        # the first claim of a run named twice may take it; the others see it taken
        first: dict[str, int] = {}
        for i, (run_id, _) in enumerate(claims):
            first.setdefault(run_id, i)
        ids = sorted(first)
        found: dict[str, RunRecord] = {}
        taken: set[str] = set()
        waitpoints: dict[str, Waitpoint] = {}
        with self._tx() as c:
            # statements per 500 runs, not per run (a RunActor claims the
            # runs placed on it together); run rows locked in one order, as
            # every transaction on several runs takes them: no deadlock
            for page in _pages(ids):
                marks = ", ".join("?" for _ in page)
                rows = c.execute(
                    f"SELECT id, status FROM runs WHERE id IN ({marks})"
                    f" ORDER BY id{self.binary_collation}" + self.lock_clause,
                    page,
                ).fetchall()
                queued = [r[0] for r in rows if r[1] == QUEUED]
                for actor_name in sorted({claims[first[r]][1] for r in queued}):
                    mine = [r for r in queued if claims[first[r]][1] == actor_name]
                    c.execute(
                        "UPDATE runs SET status = ?, actor_name = ?,"
                        " attempt = CASE WHEN attempt < 1 THEN 1 ELSE attempt END,"
                        " started_at = COALESCE(started_at, ?), updated_at = ?"
                        f" WHERE id IN ({', '.join('?' for _ in mine)})",
                        (EXECUTING, actor_name, now, now, *mine),
                    )
                taken.update(queued)
                for row in c.execute(_RUN_SELECT + f" WHERE id IN ({marks})", page).fetchall():
                    run = _run(row)
                    found[run.id] = run
                if queued:
                    marks = ", ".join("?" for _ in queued)
                    for row in c.execute(
                        _WP_SELECT + f" WHERE run_id IN ({marks}) AND status <> ?",
                        (*queued, PENDING),
                    ).fetchall():
                        waitpoints[row[0]] = _waitpoint(row)
                    if waitpoints:
                        resolved = [r for r in queued if r in waitpoints]
                        if resolved:
                            c.execute(
                                "DELETE FROM waitpoints WHERE run_id IN"
                                f" ({', '.join('?' for _ in resolved)})",
                                resolved,
                            )
        out = []
        for i, (run_id, _) in enumerate(claims):
            claimed = run_id in taken and first[run_id] == i
            waitpoint = waitpoints.get(run_id) if claimed else None
            out.append(Claim(run=found.get(run_id), claimed=claimed, waitpoint=waitpoint))
        if taken:
            self._changed(*sorted(taken))  # QUEUED -> EXECUTING
        return out

    def finish_run(self, run_id: str, status: str, output: str | None, error: str | None) -> bool:
        return self.finish_runs([(run_id, status, output, error)])[0]

    def finish_runs(self, finishes: list[tuple[str, str, str | None, str | None]]) -> list[bool]:
        now = now_ms()
        finished = ", ".join("?" for _ in FINISHED_STATUSES)
        done = [False] * len(finishes)
        order = sorted(range(len(finishes)), key=lambda i: finishes[i][0])
        with self._tx() as c:
            # every run row first, then stream rows, each in one order (as
            # `append_chunks_guarded` takes them): no deadlock
            for i in order:
                run_id, status, output, error = finishes[i]
                cur = c.execute(
                    "UPDATE runs SET status = ?, output = ?, error = ?, finished_at = ?,"
                    f" updated_at = ?, actor_name = NULL WHERE id = ?"
                    f" AND status NOT IN ({finished})",
                    (status, output, error, now, now, run_id, *FINISHED_STATUSES),
                )
                done[i] = cur.rowcount > 0
            for i in order:
                if done[i]:
                    run_id = finishes[i][0]
                    c.execute(
                        "UPDATE streams SET closed = 1, updated_at = ? WHERE run_id = ?",
                        (now, run_id),
                    )
                    c.execute("DELETE FROM waitpoints WHERE run_id = ?", (run_id,))
        ended = [finishes[i][0] for i in order if done[i]]
        if ended:
            self._changed(*ended)
        return done

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
        for column, value in (
            ("task_id", task_id),
            ("parent_id", parent_id),
            ("batch_id", batch_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
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
        for tag in tags or []:
            # tags are stored as a JSON array (json.dumps); an element is its
            # JSON string, quotes included, so this matches whole tags only,
            # in their case, before LIMIT (a filter after it could return
            # nothing while matching runs exist further back)
            where.append(self.contains_sql.format(column="tags"))
            args.append(json.dumps(tag))
        sql = _RUN_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        with self._read() as c:
            return [_run(r) for r in c.execute(sql, [*args, limit])]

    def recoverable_runs(self, after_id: str | None, limit: int) -> list[RunRecord]:
        sql = _RUN_SELECT + (
            " WHERE (status IN (?, ?) OR (status = ? AND NOT EXISTS"
            " (SELECT 1 FROM waitpoints w WHERE w.run_id = runs.id AND w.status = ?)))"
            " AND id > ? ORDER BY id LIMIT ?"
        )
        params = [QUEUED, EXECUTING, WAITING, PENDING, after_id or "", limit]
        with self._read() as c:
            return [_run(r) for r in c.execute(sql, params)]

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

    def journal_load_many(self, keys: list[tuple[str, int]]) -> list[list[JournalEntry]]:
        found: dict[tuple[str, int], list[JournalEntry]] = {}
        # each key once: the join below yields a key's rows once per time it is named
        unique = list(dict.fromkeys(keys))
        with self._read() as c:
            for start in range(0, len(unique), 500):
                page = unique[start : start + 500]
                rows = c.execute(
                    "SELECT journal.run_id, journal.attempt, seq, kind, name, value"
                    + from_keys("journal", ("run_id", "attempt"), len(page))
                    + " ORDER BY journal.run_id, journal.attempt, seq",
                    [x for pair in page for x in pair],
                ).fetchall()
                for r in rows:
                    entry = JournalEntry(seq=int(r[2]), kind=r[3], name=r[4], value=r[5])
                    found.setdefault((r[0], int(r[1])), []).append(entry)
        # each caller its own list (a key asked twice gets two)
        return [list(found.get(k, ())) for k in keys]

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
                break
        with self._tx() as c:
            # wait tokens completed (or timed out) as long ago as those runs
            c.execute(
                "DELETE FROM wait_tokens WHERE status <> ? AND completed_at < ?",
                (WaitTokenStatus.WAITING.value, finished_before),
            )
        return deleted


def _pages(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]
