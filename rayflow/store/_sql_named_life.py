"""Named streams' lifecycle in SQL: creating (and forking), deleting with
tombstones, expiry, readers' follow leases and idle producers. Appends and
reads are `_sql_named.py`.

Forks copy the source's rows below the fork position (a sub-offset inside
a byte append splits that row): a fork reads like any stream and lives on
whatever happens to its source. A deleted stream that forks name as their
source stays as a tombstone (`deleted`, no data) so its path answers GONE
and is not created again until the last fork goes; deleting that fork
removes the tombstone, up the chain.
"""

from __future__ import annotations

import uuid
from typing import Any

from rayflow.store._sql_named import _COLUMNS, _SELECT, NamedStreamsSql, _like_prefix
from rayflow.store.base import now_ms
from rayflow.store.named import (
    DEFAULT_CONTENT_TYPE,
    NamedOutcome,
    NamedStreamInfo,
    NamedStreamSpec,
    NamedWrite,
    NamedWriteResult,
    normalize_content_type,
)


class NamedLifecycleSql(NamedStreamsSql):
    # -- creating ------------------------------------------------------------
    def named_create(
        self, spec: NamedStreamSpec, messages: list[bytes], max_bytes: int
    ) -> NamedWriteResult:
        now = now_ms()
        for attempt in range(2):
            try:
                with self._tx() as c:
                    result = self._create_in(c, spec, messages, max_bytes, now)
                break
            except _Rollback as e:
                return e.result
            except self.integrity_errors:
                # another process created the path between our look and our
                # insert (PostgreSQL): look again, now it is there
                if attempt:
                    raise
        if result.outcome is NamedOutcome.OK:
            self._named_changed(spec.path)
        return result

    def _create_in(
        self, c: Any, spec: NamedStreamSpec, messages: list[bytes], max_bytes: int, now: int
    ) -> NamedWriteResult:
        existing = self._locked(c, spec.path)
        if existing is not None and existing.expired(now) and not existing.deleted:
            if self._has_forks(c, spec.path):
                self._tombstone(c, spec.path, now)
                existing = self._locked(c, spec.path)
            else:
                self._drop(c, spec.path)
                existing = None
        if existing is not None:
            if existing.deleted:
                return NamedWriteResult(NamedOutcome.CONFLICT, existing)
            return NamedWriteResult(
                NamedOutcome.EXISTS if _same(existing, spec) else NamedOutcome.CONFLICT, existing
            )
        content_type = spec.content_type or DEFAULT_CONTENT_TYPE
        ttl_s, expires_at = spec.ttl_s, spec.expires_at
        length = size = 0
        fork_offset: int | None = None
        if spec.forked_from is not None:
            source = self._locked(c, spec.forked_from, share=True)
            if source is None or (source.expired(now) and not source.deleted):
                return NamedWriteResult(NamedOutcome.SOURCE_MISSING)
            if source.deleted:
                return NamedWriteResult(NamedOutcome.SOURCE_GONE)
            if spec.content_type is None:
                content_type = source.content_type
            elif normalize_content_type(spec.content_type) != normalize_content_type(
                source.content_type
            ):
                return NamedWriteResult(NamedOutcome.CONFLICT, source)
            if ttl_s is None and expires_at is None:  # inherit the source's expiry
                ttl_s, expires_at = source.ttl_s, source.expires_at
            fork_offset = source.length if spec.fork_offset is None else spec.fork_offset
            cut = self._fork_cut(c, source, fork_offset, spec.fork_sub_offset)
            if cut is None:
                return NamedWriteResult(NamedOutcome.BAD_OFFSET, source)
            length, size = cut, self._copy_prefix(c, source.path, spec.path, cut)
        c.execute(
            f"INSERT INTO named_streams ({_COLUMNS}) VALUES"
            " (?, ?, ?, ?, ?, 0, NULL, ?, ?, ?, NULL, ?, ?, ?, 0, ?, ?)",
            (
                spec.path,
                uuid.uuid4().hex[:16],
                content_type,
                length,
                size,
                ttl_s,
                expires_at,
                now,
                spec.forked_from,
                fork_offset,
                spec.fork_sub_offset,
                now,
                now,
            ),
        )
        write = NamedWrite(spec.path, messages, close=spec.closed)
        state = self._locked(c, spec.path)
        assert state is not None
        result = self._apply(c, write, state, {}, max_bytes, now)
        if result.outcome is not NamedOutcome.OK:
            raise _Rollback(result)  # too large: nothing of the create stays
        self._save(c, state)
        return result

    def _fork_cut(self, c: Any, source: NamedStreamInfo, offset: int, sub: int) -> int | None:
        """The position a fork of `source` at (offset, sub-offset) ends at;
        None when that is past the source's data or inside no append."""
        if offset < 0 or offset > source.length:
            return None
        if sub == 0:
            return offset
        row = c.execute(
            "SELECT pos, span_end FROM named_chunks WHERE path = ? AND end_pos > ?"
            " ORDER BY end_pos LIMIT 1",
            (source.path, offset),
        ).fetchone()
        if row is None or int(row[0]) != offset or offset + sub > int(row[1]):
            return None  # the sub-offset reaches past the append at the offset
        return offset + sub

    def _copy_prefix(self, c: Any, source: str, target: str, cut: int) -> int:
        """Copy `source`'s data below position `cut` to `target`; its size."""
        c.execute(
            "INSERT INTO named_chunks (path, end_pos, pos, span_end, data, created_at)"
            " SELECT ?, end_pos, pos, CASE WHEN span_end > ? THEN ? ELSE span_end END,"
            " data, created_at FROM named_chunks WHERE path = ? AND end_pos <= ?",
            (target, cut, cut, source, cut),
        )
        size = int(
            c.execute(
                "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM named_chunks WHERE path = ?",
                (target,),
            ).fetchone()[0]
        )
        split = c.execute(
            "SELECT pos, data, created_at FROM named_chunks"
            " WHERE path = ? AND pos < ? AND end_pos > ?",
            (source, cut, cut),
        ).fetchone()
        if split is not None:  # a byte append cut by a sub-offset: its head
            head = bytes(split[1])[: cut - int(split[0])]
            c.execute(
                "INSERT INTO named_chunks (path, end_pos, pos, span_end, data, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (target, cut, int(split[0]), cut, head, int(split[2])),
            )
            size += len(head)
        return size

    # -- readers' follow leases, idle producers --------------------------------
    def named_follow(self, path: str, until: int, renew_before: int) -> bool:
        """A reader somewhere waits for changes of `path`: make sure commits
        that change it until `renew_before` (ms) tell other processes (the
        lease runs to `until`). False when the lease already did (nothing
        written) or the stream does not exist."""
        with self._read() as c:
            row = c.execute(
                "SELECT followed_until FROM named_streams WHERE path = ?", (path,)
            ).fetchone()
        if row is None or (row[0] is not None and int(row[0]) >= renew_before):
            return False
        with self._tx() as c:
            # the row lock orders it against writers (`named_write_many`)
            c.execute(
                "UPDATE named_streams SET followed_until = ? WHERE path = ?"
                " AND (followed_until IS NULL OR followed_until < ?)",
                (until, path, until),
            )
        return True

    def named_expire_producers(self, prefix: str, before: int, limit: int = 500) -> int:
        """Forget the state of producers of streams under `prefix` that last
        wrote before `before` (ms), at most `limit`; how many."""
        with self._tx() as c:
            cur = c.execute(
                "DELETE FROM named_producers WHERE (path, producer_id) IN"
                " (SELECT path, producer_id FROM named_producers WHERE updated_at < ?"
                " AND path LIKE ? ESCAPE '!' LIMIT ?)",
                (before, _like_prefix(prefix), limit),
            )
            return int(cur.rowcount)

    # -- deleting ------------------------------------------------------------
    def named_delete(self, path: str) -> NamedOutcome:
        now = now_ms()
        with self._tx() as c:
            state = self._locked(c, path)
            if state is None:
                return NamedOutcome.MISSING
            if state.deleted:
                return NamedOutcome.GONE
            expired = state.expired(now)
            self._delete_in(c, state, now)
        self._named_changed(path)
        return NamedOutcome.MISSING if expired else NamedOutcome.OK

    def _delete_in(self, c: Any, state: NamedStreamInfo, now: int) -> None:
        if self._has_forks(c, state.path):
            self._tombstone(c, state.path, now)
            return
        self._drop(c, state.path)
        source = state.forked_from
        while source is not None:  # tombstones no fork needs any more go too
            row = c.execute(
                "SELECT deleted, forked_from FROM named_streams WHERE path = ?" + self.lock_clause,
                (source,),
            ).fetchone()
            if row is None or not row[0] or self._has_forks(c, source):
                break
            self._drop(c, source)
            source = row[1]

    def named_delete_expired(self, now: int | None = None, limit: int = 500) -> int:
        """Delete streams past their TTL or expiry (at most `limit` per call);
        returns how many."""
        now = now_ms() if now is None else now
        with self._tx() as c:
            rows = c.execute(
                _SELECT + " WHERE deleted = 0 AND (expires_at <= ?"
                " OR (ttl_s IS NOT NULL AND touched_at + ttl_s * 1000 <= ?))"
                " ORDER BY path LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for row in rows:
                state = self._locked(c, row[0])
                if state is not None and not state.deleted and state.expired(now):
                    self._delete_in(c, state, now)
        if rows:
            self._named_changed(*(r[0] for r in rows))
        return len(rows)

    # -- trimming ------------------------------------------------------------
    def named_trim(self, write: NamedWrite, earliest: int, max_bytes: int) -> NamedWriteResult:
        """Append `write` (one message: the trim record itself) and delete the
        messages before min(`earliest`, the position it got), in one
        transaction — S2's trim: monotonic (a trim below an earlier one
        deletes nothing, yet takes its position), never past the tail. A
        read from a trimmed position starts at the first message left."""
        now = now_ms()
        with self._tx() as c:
            results, changed = self._write_in(c, [write], max_bytes, now)
            result = results[0]
            if result.outcome is NamedOutcome.OK and result.start is not None:
                cut = min(earliest, result.start)
                freed = c.execute(
                    "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM named_chunks"
                    " WHERE path = ? AND end_pos <= ?",
                    (write.path, cut),
                ).fetchone()[0]
                c.execute(
                    "DELETE FROM named_chunks WHERE path = ? AND end_pos <= ?", (write.path, cut)
                )
                c.execute(
                    "UPDATE named_streams SET size_bytes = size_bytes - ? WHERE path = ?",
                    (int(freed), write.path),
                )
        if changed:
            self._named_changed(*sorted(changed))
        return result

    def _has_forks(self, c: Any, path: str) -> bool:
        row = c.execute(
            "SELECT 1 FROM named_streams WHERE forked_from = ? LIMIT 1", (path,)
        ).fetchone()
        return row is not None

    def _tombstone(self, c: Any, path: str, now: int) -> None:
        c.execute("DELETE FROM named_chunks WHERE path = ?", (path,))
        c.execute("DELETE FROM named_producers WHERE path = ?", (path,))
        c.execute(
            "UPDATE named_streams SET deleted = 1, updated_at = ? WHERE path = ?", (now, path)
        )

    def _drop(self, c: Any, path: str) -> None:
        for table in ("named_chunks", "named_producers", "named_streams"):
            c.execute(f"DELETE FROM {table} WHERE path = ?", (path,))


class _Rollback(Exception):
    def __init__(self, result: NamedWriteResult) -> None:
        super().__init__(result.outcome.value)
        self.result = result


def _same(existing: NamedStreamInfo, spec: NamedStreamSpec) -> bool:
    """A create that finds `existing` at its path asks for the same stream
    (a fork that names no type or expiry asks for its source's)."""
    fork = spec.forked_from is not None
    wanted_type = spec.content_type or (None if fork else DEFAULT_CONTENT_TYPE)
    if wanted_type is not None and normalize_content_type(wanted_type) != normalize_content_type(
        existing.content_type
    ):
        return False
    asks_expiry = spec.ttl_s is not None or spec.expires_at is not None
    if (not fork or asks_expiry) and (spec.ttl_s, spec.expires_at) != (
        existing.ttl_s,
        existing.expires_at,
    ):
        return False
    if spec.closed != existing.closed or spec.forked_from != existing.forked_from:
        return False
    return not fork or (
        spec.fork_offset in (None, existing.fork_offset)
        and spec.fork_sub_offset == existing.fork_sub_offset
    )
