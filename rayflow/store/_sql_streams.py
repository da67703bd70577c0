"""Output streams in SQL: appends that lock each stream row in a fixed
order, drop a write at or below its writer's watermark, enforce the size
limit (nothing of a write that would pass it is stored) and number chunks
consecutively; reads by index; closing; writer watermarks.

`append_chunks_many` is one group commit of every run of a process (a
RunActor hosting hundreds of runs, `_runtime/stream_commit.py`): its
statements are per round, not per stream (`_sql_stream_rounds`). A round
that creates some of its streams and writes to others takes the one-by-one
path here, which creates and locks rows strictly in order.
"""

from __future__ import annotations

from typing import Any, cast

from rayflow.store._sql_base import (
    _STREAM_COLUMNS,
    _STREAM_SELECT,
    _stream,
    from_keys,
)
from rayflow.store._sql_stream_rounds import StreamRoundsSql, _too_large
from rayflow.store.base import (
    FINISHED_STATUSES,
    AppendResult,
    Chunk,
    ChunkWrite,
    Refused,
    StreamInfo,
    now_ms,
)


class StreamsSql(StreamRoundsSql):
    # -- output streams ------------------------------------------------------
    def append_chunks(
        self, run_id: str, key: str, writes: list[ChunkWrite], max_bytes: int
    ) -> AppendResult:
        return self.append_chunks_many([(run_id, key, writes)], max_bytes)[0]

    def append_chunks_many(
        self, items: list[tuple[str, str, list[ChunkWrite]]], max_bytes: int
    ) -> list[AppendResult]:
        return cast(list[AppendResult], self._append_chunks(items, max_bytes, own=False))

    def append_chunks_own(
        self, items: list[tuple[str, str, list[ChunkWrite]]], max_bytes: int
    ) -> list[AppendResult | Refused]:
        return self._append_chunks(items, max_bytes, own=True)

    def _append_chunks(
        self, items: list[tuple[str, str, list[ChunkWrite]]], max_bytes: int, own: bool
    ) -> list[AppendResult | Refused]:
        """`append_chunks_many` and, `own`, `append_chunks_own`: per round
        when it can (`_append_batch`), else stream by stream."""
        now = now_ms()
        results: list[AppendResult | Refused | None] = [None] * len(items)
        new_streams: set[str] = set()
        with self._tx() as c:
            batched = (
                self._append_batch(c, items, max_bytes, now, new_streams, own)
                if len(items) > 1
                else None
            )
            if batched is None:
                # stream rows are locked in one order by every transaction: no deadlock
                for i in sorted(range(len(items)), key=lambda i: items[i][:2]):
                    run_id, key, writes = items[i]
                    results[i] = self._append_in(
                        c, run_id, key, writes, max_bytes, now, new_streams, own=own
                    )
        if new_streams:
            self._changed(*sorted(new_streams))  # the runs' lists of streams grew
        if batched is not None:
            return list(batched)
        return [r for r in results if r is not None]

    def append_chunks_guarded(
        self, items: list[tuple[str, str, list[ChunkWrite]]], max_bytes: int
    ) -> list[AppendResult | Refused]:
        now = now_ms()
        results: list[AppendResult | Refused | None] = [None] * len(items)
        new_streams: set[str] = set()
        with self._tx() as c:
            # run rows first, then stream rows, each in one order (as
            # `finish_run` does): no deadlock
            refusals: dict[str, Refused | None] = {}
            actors: dict[str, str | None] = {}
            for run_id in sorted({item[0] for item in items}):
                row = c.execute(
                    "SELECT status, actor_name FROM runs WHERE id = ?" + self.share_lock_clause,
                    (run_id,),
                ).fetchone()
                if row is None:
                    refusals[run_id] = Refused("missing")
                elif row[0] in FINISHED_STATUSES:
                    refusals[run_id] = Refused("finished", row[0])
                else:
                    refusals[run_id] = None
                    actors[run_id] = row[1]
            for i in sorted(range(len(items)), key=lambda i: items[i][:2]):
                run_id, key, writes = items[i]
                refusal = refusals[run_id]
                if refusal is not None and refusal.reason == "missing":
                    results[i] = refusal
                else:
                    result = self._append_in(
                        c, run_id, key, writes, max_bytes, now, new_streams, True, refusal
                    )
                    if isinstance(result, AppendResult):
                        result.actor_name = actors.get(run_id)
                    results[i] = result
        if new_streams:
            self._changed(*sorted(new_streams))
        return [r for r in results if r is not None]

    def _append_in(
        self,
        c: Any,
        run_id: str,
        key: str,
        writes: list[ChunkWrite],
        max_bytes: int,
        now: int,
        new_streams: set[str],
        guarded: bool = False,
        refusal: Refused | None = None,
        own: bool = False,
    ) -> Any:
        """AppendResult. When `guarded`, new writes to a closed stream (or to
        any stream, when there is a `refusal`: the run has finished) store
        nothing and answer Refused; duplicates of stored writes answer None.
        When `own` (the run's own writes), the same for a closed stream, and
        a stream the write would create for a run that has finished."""
        row = c.execute(
            "SELECT length, size_bytes, closed FROM streams WHERE run_id = ? AND key = ?"
            + self.lock_clause,
            (run_id, key),
        ).fetchone()
        if row is None:
            if refusal is not None:
                return refusal  # nothing was ever stored there
            if own and (ended := self._ended(c, run_id)) is not None:
                return ended
            new_streams.add(run_id)
            c.execute(
                "INSERT INTO streams (run_id, key, length, size_bytes, closed, created_at,"
                " updated_at) VALUES (?, ?, 0, 0, 0, ?, ?) ON CONFLICT DO NOTHING",
                (run_id, key, now, now),
            )
            row = c.execute(
                "SELECT length, size_bytes, closed FROM streams WHERE run_id = ? AND key = ?"
                + self.lock_clause,
                (run_id, key),
            ).fetchone()
        length, size = int(row[0]), int(row[1])
        last_by_writer: dict[str, int] = {}
        for writer_id in {w.writer_id for w in writes if w.writer_id is not None}:
            r = c.execute(
                "SELECT last_seq FROM stream_writers"
                " WHERE run_id = ? AND key = ? AND writer_id = ?",
                (run_id, key, writer_id),
            ).fetchone()
            last_by_writer[writer_id] = int(r[0]) if r else -1
        if (guarded or own) and (refusal is not None or row[2]):
            duplicates = [_stored(w, last_by_writer) for w in writes]
            if all(duplicates):
                return AppendResult(seqs=[None] * len(writes), length=length)
            refused = refusal or (own and self._ended(c, run_id)) or Refused("closed")
            return Refused(refused.reason, refused.status, duplicates)
        seqs: list[int | None] = []
        rows: list[tuple[object, ...]] = []
        touched: dict[str, int] = {}
        for w in writes:
            if w.writer_id is not None and w.writer_seq is not None:
                if w.writer_seq <= last_by_writer[w.writer_id]:
                    seqs.append(None)
                    continue
                last_by_writer[w.writer_id] = w.writer_seq
                touched[w.writer_id] = w.writer_seq
            size += len(w.data.encode())
            if size > max_bytes:
                raise _too_large(run_id, key, size, max_bytes)
            seqs.append(length)
            rows.append((run_id, key, length, w.data, w.record_id, now))
            length += 1
        if rows:
            c.executemany(
                "INSERT INTO chunks (run_id, key, seq, data, record_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            c.execute(
                "UPDATE streams SET length = ?, size_bytes = ?, updated_at = ?"
                " WHERE run_id = ? AND key = ?",
                (length, size, now, run_id, key),
            )
        for writer_id, last in touched.items():
            c.execute(
                "INSERT INTO stream_writers (run_id, key, writer_id, last_seq)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (run_id, key, writer_id)"
                " DO UPDATE SET last_seq = excluded.last_seq",
                (run_id, key, writer_id, last),
            )
        return AppendResult(seqs=seqs, length=length)

    def _ended(self, c: Any, run_id: str) -> Refused | None:
        """`finished` when the run has finished (a run's own writes are those
        of a run its RunActor claimed: it exists)."""
        row = c.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is not None and row[0] in FINISHED_STATUSES:
            return Refused("finished", row[0])
        return None

    def read_chunks(self, run_id: str, key: str, start: int, limit: int) -> list[Chunk]:
        with self._read() as c:
            rows = c.execute(
                "SELECT seq, data, created_at, record_id FROM chunks"
                " WHERE run_id = ? AND key = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (run_id, key, start, limit),
            ).fetchall()
        return [Chunk(seq=int(r[0]), data=r[1], created_at=int(r[2]), record_id=r[3]) for r in rows]

    def stream_info(self, run_id: str, key: str) -> StreamInfo | None:
        with self._read() as c:
            row = c.execute(_STREAM_SELECT + " WHERE run_id = ? AND key = ?", (run_id, key))
            found = row.fetchone()
        return _stream(found) if found else None

    def stream_infos(self, keys: list[tuple[str, str]]) -> list[StreamInfo | None]:
        found: dict[tuple[str, str], StreamInfo] = {}
        unique = list(dict.fromkeys(keys))
        with self._read() as c:
            for start in range(0, len(unique), 500):
                page = unique[start : start + 500]
                rows = c.execute(
                    _STREAM_COLUMNS + from_keys("streams", ("run_id", "key"), len(page)),
                    [x for pair in page for x in pair],
                ).fetchall()
                for row in rows:
                    info = _stream(row)
                    found[(info.run_id, info.key)] = info
        return [found.get(k) for k in keys]

    def list_streams(self, run_id: str) -> list[StreamInfo]:
        with self._read() as c:
            rows = c.execute(_STREAM_SELECT + " WHERE run_id = ? ORDER BY key", (run_id,))
            return [_stream(r) for r in rows.fetchall()]

    def list_streams_many(self, run_ids: list[str]) -> list[list[StreamInfo]]:
        found: dict[str, list[StreamInfo]] = {}
        unique = sorted(set(run_ids))
        with self._read() as c:
            for start in range(0, len(unique), 500):
                page = unique[start : start + 500]
                rows = c.execute(
                    _STREAM_SELECT + f" WHERE run_id IN ({', '.join('?' for _ in page)})"
                    " ORDER BY run_id, key",
                    page,
                ).fetchall()
                for row in rows:
                    info = _stream(row)
                    found.setdefault(info.run_id, []).append(info)
        return [list(found.get(run_id, ())) for run_id in run_ids]

    def close_stream(self, run_id: str, key: str) -> None:
        now = now_ms()
        with self._tx() as c:
            c.execute(
                "INSERT INTO streams (run_id, key, length, size_bytes, closed, created_at,"
                " updated_at) VALUES (?, ?, 0, 0, 1, ?, ?) ON CONFLICT (run_id, key)"
                " DO UPDATE SET closed = 1, updated_at = excluded.updated_at",
                (run_id, key, now, now),
            )
        self._changed(run_id)  # a reader waiting for this key to exist hears it

    def writer_positions(self, run_id: str) -> dict[tuple[str, str], int]:
        with self._read() as c:
            rows = c.execute(
                "SELECT key, writer_id, last_seq FROM stream_writers WHERE run_id = ?", (run_id,)
            ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}


def _stored(w: ChunkWrite, last_by_writer: dict[str, int]) -> bool:
    """`w` is a duplicate of a write already stored."""
    return (
        w.writer_id is not None
        and w.writer_seq is not None
        and w.writer_seq <= last_by_writer[w.writer_id]
    )
