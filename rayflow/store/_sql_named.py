"""Named streams in SQL (see `named.py` for the model).

Every request is checked and applied in the transaction that stores it:
the stream row is locked (`lock_clause`) before anything of it is read, so
the producer checks, the `Stream-Seq` check, the size limit and the append
are one step per stream — two requests of one producer can never both pass
its check. `named_write_many` takes many requests (of any streams) in one
transaction and one commit: stream rows are locked in path order first (no
deadlock with another batch), then the requests are applied in the order
given, each to its own outcome.

Creating, forking, deleting, expiry and follow leases: `_sql_named_life.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rayflow.store._sql_base import SqlBase
from rayflow.store.base import now_ms
from rayflow.store.named import (
    NamedChunk,
    NamedOutcome,
    NamedRead,
    NamedStreamInfo,
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
_SELECT = f"SELECT {_COLUMNS}, followed_until FROM named_streams"


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
        followed_until=None if row[17] is None else int(row[17]),
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

    # -- writing -------------------------------------------------------------
    def named_write(self, write: NamedWrite, max_bytes: int) -> NamedWriteResult:
        return self.named_write_many([write], max_bytes)[0]

    def named_write_many(self, writes: list[NamedWrite], max_bytes: int) -> list[NamedWriteResult]:
        now = now_ms()
        with self._tx() as c:
            results, changed = self._write_in(c, writes, max_bytes, now)
        if changed:
            # read under the row lock: a lease committed before this commit
            # is seen, one committed after it is followed by a read that sees
            # this commit (`named_follow`)
            always = {w.path for w in writes if not w.leased}
            followed = [p for p, s in changed.items() if p in always or s.followed(now)]
            self._named_changed(*sorted(changed), followed=sorted(followed))
        return results  # each shows the stream as its own request left it

    def _write_in(
        self, c: Any, writes: list[NamedWrite], max_bytes: int, now: int
    ) -> tuple[list[NamedWriteResult], dict[str, NamedStreamInfo]]:
        """`named_write_many` inside the caller's transaction: (outcomes, the
        streams changed by path, as locked — tell their readers after the
        commit)."""
        results: list[NamedWriteResult] = []
        states: dict[str, NamedStreamInfo | None] = {}
        for path in sorted({w.path for w in writes}):  # one lock order: no deadlock
            states[path] = self._locked(c, path)
        # the batch's producers in one query per stream, its rows in one
        # statement each: one execute per append cost the commit thread (and
        # the GIL the event loop needs) more than SQLite's own work
        producers = self._producers(c, writes)
        rows: list[tuple[str, int, int, int, bytes, int]] = []
        changed: dict[str, NamedStreamInfo] = {}
        for write in writes:
            state = states[write.path]
            if state is None or (state.expired(now) and not state.deleted):
                results.append(NamedWriteResult(NamedOutcome.MISSING))
            elif state.deleted:
                results.append(NamedWriteResult(NamedOutcome.GONE, state))
            else:
                result = self._apply(c, write, state, producers, max_bytes, now, rows)
                if result.outcome is NamedOutcome.OK:
                    changed[write.path] = state
                results.append(result)
        self._insert_chunks(c, rows)
        for path in sorted(changed):
            self._save(c, changed[path])
        dirty = [(k, p) for k, p in producers.items() if p is not None and p.dirty]
        if dirty:
            c.executemany(
                "INSERT INTO named_producers (path, producer_id, epoch, last_seq,"
                " updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (path, producer_id)"
                " DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq,"
                " updated_at = excluded.updated_at",
                [(path, pid, p.epoch, p.last_seq, now) for (path, pid), p in dirty],
            )
        return results, changed

    def _producers(
        self, c: Any, writes: list[NamedWrite]
    ) -> dict[tuple[str, str], _ProducerState | None]:
        """The stored state of the producers that `writes` name (None: new)."""
        wanted: dict[str, set[str]] = {}
        for w in writes:
            if w.producer is not None:
                wanted.setdefault(w.path, set()).add(w.producer.id)
        found: dict[tuple[str, str], _ProducerState | None] = {}
        for path, ids in wanted.items():
            names = sorted(ids)
            for i in range(0, len(names), 500):  # SQLite's bound parameters
                part = names[i : i + 500]
                marks = ", ".join("?" for _ in part)
                rows = c.execute(
                    "SELECT producer_id, epoch, last_seq FROM named_producers"
                    f" WHERE path = ? AND producer_id IN ({marks})",
                    (path, *part),
                ).fetchall()
                found.update({(path, pid): None for pid in part})
                found.update({(path, r[0]): _ProducerState(int(r[1]), int(r[2])) for r in rows})
        return found

    @staticmethod
    def _insert_chunks(c: Any, rows: list[tuple[str, int, int, int, bytes, int]]) -> None:
        if rows:
            c.executemany(
                "INSERT INTO named_chunks (path, end_pos, pos, span_end, data, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def _apply(
        self,
        c: Any,
        w: NamedWrite,
        state: NamedStreamInfo,
        producers: dict[tuple[str, str], _ProducerState | None],
        max_bytes: int,
        now: int,
        rows: list[tuple[str, int, int, int, bytes, int]] | None = None,
    ) -> NamedWriteResult:
        """Check and apply one write to the locked `state` (updated in place;
        the caller saves it). Checks in the protocol's order: closed, content
        type, producer, Stream-Seq, size. Its chunk rows go to `rows` (the
        caller inserts them), or are inserted now."""
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
                if p.seq != 0 and not w.producer_gaps:
                    return _snapshot(NamedOutcome.SEQ_GAP, state, expected_seq=0)
            elif p.epoch < pstate.epoch:
                return _snapshot(NamedOutcome.STALE_EPOCH, state, pstate.epoch)
            elif p.epoch > pstate.epoch:
                if p.seq != 0:
                    return _snapshot(NamedOutcome.EPOCH_SEQ, state, pstate.epoch)
            elif p.seq <= pstate.last_seq:
                return _snapshot(NamedOutcome.DUPLICATE, state, p.epoch, pstate.last_seq)
            elif p.seq > pstate.last_seq + 1 and not w.producer_gaps:
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
            new: list[tuple[str, int, int, int, bytes, int]]
            if state.json:
                end = start + len(w.messages)
                new = [
                    (state.path, start + i + 1, start + i, end, m, now)
                    for i, m in enumerate(w.messages)
                ]
            else:
                data = b"".join(w.messages)
                end = start + len(data)
                new = [(state.path, end, start, end, data, now)]
            if rows is None:
                self._insert_chunks(c, new)
            else:
                rows += new
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

    # -- helpers -------------------------------------------------------------
    def _locked(self, c: Any, path: str, share: bool = False) -> NamedStreamInfo | None:
        row = c.execute(
            _SELECT + " WHERE path = ?" + (self.share_lock_clause if share else self.lock_clause),
            (path,),
        ).fetchone()
        return _info(row) if row else None

    def _named_changed(self, *paths: str, followed: list[str] | None = None) -> None:
        """Tell this process's readers of `paths`, and other processes' of
        `followed` (default: of all), after the commit."""
        hook = self.on_named_change
        if hook is not None and paths:
            hook(list(paths), list(paths) if followed is None else followed)


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


def _like_prefix(prefix: str) -> str:
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


__all__ = ["NamedStreamsSql", "is_json"]
