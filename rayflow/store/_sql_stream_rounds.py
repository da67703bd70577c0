"""One group-commit round of output-stream appends in SQL, with statements
per round, not per stream (`append_chunks_many`, `append_chunks_own`): one
statement locks every stream row (in the same byte order as one-by-one
locking, so no deadlock), one reads every writer's watermark, and the
inserts and updates go as batches. On PostgreSQL that is a few round trips
for 500 streams instead of ~2,000.

A round that creates streams (the first writes of runs that start
together) creates them and locks the existing ones in one upsert per 500
streams, row by row in that same order: a burst of 500 runs' first tokens
is a handful of statements, not the ~8 per stream of the one-by-one path
(`_sql_streams`).

Every statement of a round names a number of rows padded up to a power of
two (`_padded`; the padding rows are all NULL and match or insert nothing):
a round's size varies from round to round, and a statement text per size
overflowed SQLite's statement cache, so most rounds parsed and planned
their 3-5 statements of hundreds of parameters anew — ~10 µs of the
commit thread's CPU per chunk (benchmarks/README.md, "Density"). Padded,
a round's statements are one of ~10 texts each, prepared once.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from rayflow.errors import StreamTooLarge
from rayflow.store._sql_base import SqlBase, from_keys
from rayflow.store.base import FINISHED_STATUSES, AppendResult, ChunkWrite


class StreamRoundsSql(SqlBase):
    def _append_batch(
        self,
        c: Any,
        items: list[tuple[str, str, list[ChunkWrite]]],
        max_bytes: int,
        now: int,
        new_streams: set[str],
        own: bool = False,
    ) -> list[AppendResult] | None:
        """`append_chunks_many` with statements per round, not per stream;
        None (nothing written yet) when a stream is named twice, or, when
        `own`, closed or new to a run that has finished (the one-by-one path
        answers its refusal). The runs whose streams it created go into
        `new_streams`."""
        pairs = sorted({(run_id, key) for run_id, key, _ in items})
        if len(pairs) < len(items):
            return None
        looked: dict[tuple[str, str], Any] = {}
        for group in _groups(pairs, _PAIRS_PER_STATEMENT):
            n = _padded(len(group))
            rows = c.execute(
                "SELECT streams.run_id, streams.key, length, size_bytes, closed"
                + from_keys("streams", ("run_id", "key"), n),
                [x for pair in group for x in pair] + [None] * (2 * (n - len(group))),
            ).fetchall()
            looked.update(((r[0], r[1]), r) for r in rows)
        new = [pair for pair in pairs if pair not in looked]
        if new and own and self._any_ended(c, new):
            return None
        # without row locks (SQLite: the transaction holds the whole
        # database) that look was the read: a round that creates no stream
        # is one statement here, not two
        locking = bool(new or self.lock_clause)
        rows = self._lock_streams(c, pairs, bool(new), now) if locking else list(looked.values())
        streams = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}
        closed = any(r[4] for r in rows)
        new_streams.update(run_id for run_id, _ in new)
        if len(streams) < len(pairs):
            return None  # deleted meanwhile (retention): nothing was written yet
        if own and closed:
            return None  # refused item by item, in the same order
        triples = sorted(
            {
                (run_id, key, w.writer_id)
                for run_id, key, ws in items
                for w in ws
                if w.writer_id is not None
            }
        )
        last_by_writer: dict[tuple[str, str, str], int] = dict.fromkeys(triples, -1)
        for group in _groups(triples, _PAIRS_PER_STATEMENT):
            n = _padded(len(group))
            rows = c.execute(
                "SELECT stream_writers.run_id, stream_writers.key, writer_id, last_seq"
                + from_keys("stream_writers", ("run_id", "key", "writer_id"), n),
                [x for triple in group for x in triple] + [None] * (3 * (n - len(group))),
            ).fetchall()
            last_by_writer.update({(r[0], r[1], r[2]): int(r[3]) for r in rows})
        results: list[AppendResult] = []
        chunk_rows: list[tuple[object, ...]] = []
        stream_rows: list[tuple[object, ...]] = []
        touched: dict[tuple[str, str, str], int] = {}
        for run_id, key, writes in items:
            length, size = streams[(run_id, key)]
            seqs: list[int | None] = []
            for w in writes:
                if w.writer_id is not None and w.writer_seq is not None:
                    at = (run_id, key, w.writer_id)
                    if w.writer_seq <= last_by_writer[at]:
                        seqs.append(None)
                        continue
                    last_by_writer[at] = touched[at] = w.writer_seq
                size += len(w.data.encode())
                if size > max_bytes:
                    raise _too_large(run_id, key, size, max_bytes)
                seqs.append(length)
                chunk_rows.append((run_id, key, length, w.data, w.record_id, now))
                length += 1
            if length != streams[(run_id, key)][0]:
                stream_rows.append((length, size, now, run_id, key))
            results.append(AppendResult(seqs=seqs, length=length))
        # many rows per statement: a statement per row hands the GIL back and
        # forth per row, and a RunActor's busy event loop holds the commit
        # thread up at each hand-back (measured: 150 rows, 2 ms alone, 12 ms
        # beside a busy loop)
        _insert_many(
            c,
            "INSERT INTO chunks (run_id, key, seq, data, record_id, created_at)"
            " SELECT * FROM (VALUES ",
            "(?, ?, ?, ?, ?, ?)",
            ") AS v WHERE v.column1 IS NOT NULL",
            chunk_rows,
        )
        _insert_many(
            c,
            "UPDATE streams SET length = v.column1, size_bytes = v.column2,"
            " updated_at = v.column3 FROM (VALUES ",
            "(?, ?, ?, ?, ?)",
            ") AS v WHERE streams.run_id = v.column4 AND streams.key = v.column5",
            stream_rows,
        )
        _insert_many(
            c,
            "INSERT INTO stream_writers (run_id, key, writer_id, last_seq) SELECT * FROM (VALUES ",
            "(?, ?, ?, ?)",
            ") AS v WHERE v.column1 IS NOT NULL"
            " ON CONFLICT (run_id, key, writer_id) DO UPDATE SET last_seq = excluded.last_seq",
            [(*at, last) for at, last in touched.items()],
        )
        return results

    def _lock_streams(
        self, c: Any, pairs: list[tuple[str, str]], create: bool, now: int
    ) -> list[Any]:
        """Lock the stream rows of `pairs` in the one order every transaction
        takes them (no deadlock), creating the missing ones when `create`;
        their (run_id, key, length, size_bytes, closed)."""
        order = f"run_id{self.binary_collation}, key{self.binary_collation}"
        found: list[Any] = []
        for group in _groups(pairs, _PAIRS_PER_STATEMENT):
            if not create:
                n = _padded(len(group))
                found += c.execute(
                    "SELECT run_id, key, length, size_bytes, closed FROM streams WHERE"
                    f" (run_id, key) IN (VALUES {', '.join(['(?, ?)'] * n)})"
                    f" ORDER BY {order}" + self.lock_clause,
                    [x for pair in group for x in pair] + [None] * (2 * (n - len(group))),
                ).fetchall()
            else:
                # new streams created and existing ones locked in one
                # statement, row by row in that order; the update changes nothing
                found += c.execute(
                    "INSERT INTO streams (run_id, key, length, size_bytes, closed, created_at,"
                    " updated_at) VALUES "
                    + ", ".join(["(?, ?, 0, 0, 0, ?, ?)"] * len(group))
                    + " ON CONFLICT (run_id, key) DO UPDATE SET updated_at = streams.updated_at"
                    " RETURNING run_id, key, length, size_bytes, closed",
                    [x for run_id, key in group for x in (run_id, key, now, now)],
                ).fetchall()
        return found

    def _any_ended(self, c: Any, pairs: list[tuple[str, str]]) -> bool:
        """Whether a run of `pairs` has finished (its new streams are refused)."""
        runs = sorted({run_id for run_id, _ in pairs})
        for group in _groups(runs, _PAIRS_PER_STATEMENT):
            rows = c.execute(
                f"SELECT status FROM runs WHERE id IN ({', '.join(['?'] * len(group))})", group
            ).fetchall()
            if any(r[0] in FINISHED_STATUSES for r in rows):
                return True
        return False


#: (run, key) pairs named in one statement (SQLite allows 32,766 parameters)
_PAIRS_PER_STATEMENT = 512


def _groups(values: list[Any], size: int) -> list[list[Any]]:
    it = iter(values)
    return list(iter(lambda: list(islice(it, size)), []))


#: rows in one multi-row statement (6 parameters each: 3,072 of SQLite's 32,766)
_ROWS_PER_STATEMENT = 512


def _padded(n: int) -> int:
    """The rows a statement for `n` rows names: the next power of two (a
    statement text per size would overflow the statement cache)."""
    return 1 << (n - 1).bit_length()


def _insert_many(c: Any, head: str, row: str, tail: str, rows: list[tuple[object, ...]]) -> None:
    """`head` + `row` once per row, comma-separated, + `tail`: one statement
    per `_ROWS_PER_STATEMENT` rows, padded with rows of NULLs (`_padded`;
    `tail` must keep them out: a NULL key matches and inserts nothing)."""
    for group in _groups(rows, _ROWS_PER_STATEMENT):
        n = _padded(len(group))
        args = [x for r in group for x in r]
        args += [None] * (len(group[0]) * (n - len(group)))
        c.execute(head + ", ".join([row] * n) + tail, args)


def _too_large(run_id: str, key: str, size: int, max_bytes: int) -> StreamTooLarge:
    return StreamTooLarge(
        f"stream {key!r} of run {run_id} would grow to {size} bytes, over its"
        f" limit of {max_bytes}; nothing of this write was stored. Write large"
        " results elsewhere and stream references to them.",
        run_id=run_id,
        stream=key,
        size=size,
        limit=max_bytes,
    )
