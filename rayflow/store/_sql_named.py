"""Named streams in SQL (see `named.py` for the model).

Every request is checked and applied in the transaction that stores it:
the stream row is locked (`lock_clause`) before anything of it is read, so
the producer checks, the `Stream-Seq` check, the size limit and the append
are one step per stream — two requests of one producer can never both pass
its check. `named_write_many` takes many requests (of any streams) in one
transaction and one commit: stream rows are locked in path order first (no
deadlock with another batch), then the requests are applied in the order
given, each to its own outcome.

Forks copy the source's rows below the fork position (a sub-offset inside
a byte append splits that row): a fork reads like any stream and lives on
whatever happens to its source. A deleted stream that forks name as their
source stays as a tombstone (`deleted`, no data) so its path answers GONE
and is not created again until the last fork goes; deleting that fork
removes the tombstone, up the chain.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from rayflow.store._sql_base import SqlBase
from rayflow.store.base import now_ms
from rayflow.store.named import (
    DEFAULT_CONTENT_TYPE,
    NamedChunk,
    NamedOutcome,
    NamedRead,
    NamedStreamInfo,
    NamedStreamSpec,
    NamedWrite,
    NamedWriteResult,
    Producer,
    is_json,
    normalize_content_type,
)

_COLUMNS = (
    "path, stream_id, content_type, length, size_bytes, closed, closed_by, ttl_s,"
    " expires_at, touched_at, last_stream_seq, forked_from, fork_offset, fork_sub_offset,"
    " deleted, created_at, updated_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM named_streams"


def _info(row: Any) -> NamedStreamInfo:
    closed_by = json.loads(row[6]) if row[6] else None
    return NamedStreamInfo(
        path=row[0],
        stream_id=row[1],
        content_type=row[2],
        length=int(row[3]),
        size_bytes=int(row[4]),
        closed=bool(row[5]),
        closed_by=Producer(*closed_by) if closed_by else None,
        ttl_s=None if row[7] is None else int(row[7]),
        expires_at=None if row[8] is None else int(row[8]),
        touched_at=int(row[9]),
        last_stream_seq=row[10],
        forked_from=row[11],
        fork_offset=None if row[12] is None else int(row[12]),
        fork_sub_offset=int(row[13]),
        deleted=bool(row[14]),
        created_at=int(row[15]),
        updated_at=int(row[16]),
    )


@dataclass
class _ProducerState:
    epoch: int
    last_seq: int
    dirty: bool = False


class NamedStreamsSql(SqlBase):
    # -- reading -------------------------------------------------------------
    def named_info(self, path: str) -> NamedStreamInfo | None:
        with self._read() as c:
            row = c.execute(_SELECT + " WHERE path = ?", (path,)).fetchone()
        info = _info(row) if row else None
        return None if info is None or info.expired(now_ms()) else info

    def named_read(self, path: str, start: int, limit: int, max_bytes: int) -> NamedRead:
        with self._read() as c:
            row = c.execute(_SELECT + " WHERE path = ?", (path,)).fetchone()
            info = _info(row) if row else None
            if info is None or info.expired(now_ms()):
                return NamedRead(None)
            if info.deleted or start >= info.length:
                return NamedRead(info)
            rows = c.execute(
                "SELECT pos, end_pos, data, created_at FROM named_chunks"
                " WHERE path = ? AND end_pos > ? ORDER BY end_pos LIMIT ?",
                (path, start, limit),
            ).fetchall()
        chunks: list[NamedChunk] = []
        size = 0
        for pos, end, data, created_at in rows:
            data = bytes(data)
            pos, end = int(pos), int(end)
            if pos < start:  # an offset inside a byte append: its rest
                data, pos = data[start - pos :], start
            if chunks and size + len(data) > max_bytes:
                break
            size += len(data)
            chunks.append(NamedChunk(pos, end, data, int(created_at)))
        return NamedRead(info, chunks)

    def named_list(
        self, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> list[NamedStreamInfo]:
        """Live streams whose path starts with `prefix`, by path, after `after`."""
        pattern = _like_prefix(prefix)
        with self._read() as c:
            rows = c.execute(
                _SELECT + " WHERE path LIKE ? ESCAPE '!' AND path > ? AND deleted = 0"
                " ORDER BY path LIMIT ?",
                (pattern, after or "", limit),
            ).fetchall()
        now = now_ms()
        return [i for i in map(_info, rows) if not i.expired(now)]

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

    # -- writing -------------------------------------------------------------
    def named_write(self, write: NamedWrite, max_bytes: int) -> NamedWriteResult:
        return self.named_write_many([write], max_bytes)[0]

    def named_write_many(self, writes: list[NamedWrite], max_bytes: int) -> list[NamedWriteResult]:
        now = now_ms()
        results: list[NamedWriteResult] = []
        with self._tx() as c:
            states: dict[str, NamedStreamInfo | None] = {}
            for path in sorted({w.path for w in writes}):  # one lock order: no deadlock
                states[path] = self._locked(c, path)
            producers: dict[tuple[str, str], _ProducerState | None] = {}
            changed: set[str] = set()
            for write in writes:
                state = states[write.path]
                if state is None or (state.expired(now) and not state.deleted):
                    results.append(NamedWriteResult(NamedOutcome.MISSING))
                elif state.deleted:
                    results.append(NamedWriteResult(NamedOutcome.GONE, state))
                else:
                    result = self._apply(c, write, state, producers, max_bytes, now)
                    if result.outcome is NamedOutcome.OK:
                        changed.add(write.path)
                    results.append(result)
            for path in sorted(changed):
                state = states[path]
                assert state is not None
                self._save(c, state)
            for (path, producer_id), p in producers.items():
                if p is not None and p.dirty:
                    c.execute(
                        "INSERT INTO named_producers (path, producer_id, epoch, last_seq,"
                        " updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (path, producer_id)"
                        " DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq,"
                        " updated_at = excluded.updated_at",
                        (path, producer_id, p.epoch, p.last_seq, now),
                    )
        if changed:
            self._named_changed(*sorted(changed))
        return results  # each shows the stream as its own request left it

    def _apply(
        self,
        c: Any,
        w: NamedWrite,
        state: NamedStreamInfo,
        producers: dict[tuple[str, str], _ProducerState | None],
        max_bytes: int,
        now: int,
    ) -> NamedWriteResult:
        """Check and apply one write to the locked `state` (updated in place;
        the caller saves it). Checks in the protocol's order: closed, content
        type, producer, Stream-Seq, size."""
        p = w.producer
        if state.closed:
            if p is not None and state.closed_by == p:
                return _snapshot(NamedOutcome.DUPLICATE, state, p.epoch, p.seq)
            if not w.messages and w.close and p is None:
                return _snapshot(NamedOutcome.OK, state)  # closing again: idempotent
            return _snapshot(NamedOutcome.CLOSED, state)
        if (
            w.messages
            and w.content_type is not None
            and normalize_content_type(w.content_type) != normalize_content_type(state.content_type)
        ):
            return _snapshot(NamedOutcome.CONTENT_TYPE, state)
        pstate: _ProducerState | None = None
        if p is not None:
            key = (state.path, p.id)
            if key not in producers:
                producers[key] = self._producer(c, state.path, p.id)
            pstate = producers[key]
            if pstate is None:
                if p.seq != 0:
                    return _snapshot(NamedOutcome.SEQ_GAP, state, expected_seq=0)
            elif p.epoch < pstate.epoch:
                return _snapshot(NamedOutcome.STALE_EPOCH, state, pstate.epoch)
            elif p.epoch > pstate.epoch:
                if p.seq != 0:
                    return _snapshot(NamedOutcome.EPOCH_SEQ, state, pstate.epoch)
            elif p.seq <= pstate.last_seq:
                return _snapshot(NamedOutcome.DUPLICATE, state, p.epoch, pstate.last_seq)
            elif p.seq > pstate.last_seq + 1:
                return _snapshot(NamedOutcome.SEQ_GAP, state, expected_seq=pstate.last_seq + 1)
        if (
            w.stream_seq is not None
            and state.last_stream_seq is not None
            and w.stream_seq.encode() <= state.last_stream_seq.encode()
        ):
            return _snapshot(NamedOutcome.STREAM_SEQ, state)
        added = sum(len(m) for m in w.messages)
        if state.size_bytes + added > max_bytes:
            result = _snapshot(NamedOutcome.TOO_LARGE, state)
            result.size = state.size_bytes + added
            return result
        start = state.length
        if w.messages:
            if state.json:
                end = start + len(w.messages)
                c.executemany(
                    "INSERT INTO named_chunks (path, end_pos, pos, span_end, data, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (state.path, start + i + 1, start + i, end, m, now)
                        for i, m in enumerate(w.messages)
                    ],
                )
            else:
                data = b"".join(w.messages)
                end = start + len(data)
                c.execute(
                    "INSERT INTO named_chunks (path, end_pos, pos, span_end, data, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (state.path, end, start, end, data, now),
                )
            state.length, state.size_bytes = end, state.size_bytes + added
        if p is not None:
            producers[(state.path, p.id)] = _ProducerState(p.epoch, p.seq, dirty=True)
        if w.stream_seq is not None:
            state.last_stream_seq = w.stream_seq
        if w.close:
            state.closed = True
            state.closed_by = p
        state.touched_at = state.updated_at = now
        result = _snapshot(NamedOutcome.OK, state, *((p.epoch, p.seq) if p else (None, None)))
        result.start = start if w.messages else None
        return result

    def _save(self, c: Any, s: NamedStreamInfo) -> None:
        closed_by = (
            json.dumps([s.closed_by.id, s.closed_by.epoch, s.closed_by.seq])
            if s.closed_by
            else None
        )
        c.execute(
            "UPDATE named_streams SET length = ?, size_bytes = ?, closed = ?, closed_by = ?,"
            " touched_at = ?, last_stream_seq = ?, updated_at = ? WHERE path = ?",
            (
                s.length,
                s.size_bytes,
                int(s.closed),
                closed_by,
                s.touched_at,
                s.last_stream_seq,
                s.updated_at,
                s.path,
            ),
        )

    def _producer(self, c: Any, path: str, producer_id: str) -> _ProducerState | None:
        row = c.execute(
            "SELECT epoch, last_seq FROM named_producers WHERE path = ? AND producer_id = ?",
            (path, producer_id),
        ).fetchone()
        return _ProducerState(int(row[0]), int(row[1])) if row else None

    def named_touch(self, paths: list[str]) -> None:
        """A read of these streams: their sliding TTL starts again."""
        if not paths:
            return
        marks = ", ".join("?" for _ in paths)
        with self._tx() as c:
            c.execute(
                f"UPDATE named_streams SET touched_at = ? WHERE path IN ({marks})"
                " AND ttl_s IS NOT NULL AND deleted = 0",
                (now_ms(), *paths),
            )

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

    # -- helpers -------------------------------------------------------------
    def _locked(self, c: Any, path: str, share: bool = False) -> NamedStreamInfo | None:
        row = c.execute(
            _SELECT + " WHERE path = ?" + (self.share_lock_clause if share else self.lock_clause),
            (path,),
        ).fetchone()
        return _info(row) if row else None

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

    def _named_changed(self, *paths: str) -> None:
        """Tell this process's and other processes' readers (after the commit)."""
        hook = self.on_named_change
        if hook is not None and paths:
            hook(list(paths))


class _Rollback(Exception):
    def __init__(self, result: NamedWriteResult) -> None:
        super().__init__(result.outcome.value)
        self.result = result


def _snapshot(
    outcome: NamedOutcome,
    state: NamedStreamInfo,
    producer_epoch: int | None = None,
    producer_seq: int | None = None,
    expected_seq: int | None = None,
) -> NamedWriteResult:
    """A result carrying a copy of the stream as it is now (later requests
    in the same batch go on changing `state`)."""
    copy = NamedStreamInfo(**vars(state))
    return NamedWriteResult(
        outcome,
        copy,
        producer_epoch=producer_epoch,
        producer_seq=producer_seq,
        expected_seq=expected_seq,
    )


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


def _like_prefix(prefix: str) -> str:
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


__all__ = ["NamedStreamsSql", "is_json"]
