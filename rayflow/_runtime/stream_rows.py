"""What a reader of a live stream is sent: rows, or where to find them.

A RunActor's `StreamBuffer` answers readers with a `ReadReply` — committed
rows from its heap tail, an ObjectRef of a sealed segment, or "read the
Store" — and readers (`reader`, `actor_polls`) turn segments and Store
chunks into the same `Row`s.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from dataclasses import dataclass
from typing import Any

from rayflow.store import Store
from rayflow.store.base import Chunk

log = logging.getLogger("rayflow")

#: one chunk as sent to readers: (seq, JSON text, created_at ms, record id)
Row = tuple[int, str, int, str | None]


@dataclass
class ReadReply:
    """What a reader gets from `StreamBuffer.read`: rows, or where to find them."""

    rows: list[Row]
    #: a sealed segment holding the rows from `ref_start` on, when not in
    #: `rows`: an ObjectRef of the pickled rows (`segment_rows` unpacks it)
    ref: Any = None
    ref_start: int = 0
    #: the reader's index is older than the actor remembers: read the Store
    from_store: bool = False
    length: int = 0
    closed: bool = False


#: one reply of a `follow_many` stream to the readers of one process: the
#: rows for each reader that has some — (position in the call, rows), pickled
#: into one blob — and what the others are told instead (a sealed segment,
#: `from_store`, `closed`) by position. One blob, not a dict of ReadReply
#: objects: Ray's pickler visits every object of a reply through a Python
#: hook and its reader rebuilds every dataclass (measured: ~17 % of a
#: reader process's CPU for 1,000 runs of a token each 100 ms); plain pickle
#: of tuples is a few C calls each way.
FollowReply = tuple[bytes, dict[int, ReadReply]]


def pack_replies(rows: list[tuple[int, list[Row]]], others: dict[int, ReadReply]) -> FollowReply:
    return pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL), others


def unpack_rows(reply: FollowReply) -> list[tuple[int, list[Row]]]:
    rows: list[tuple[int, list[Row]]] = pickle.loads(reply[0])
    return rows


def segment_rows(blob: bytes) -> list[Row]:
    """The rows of a sealed segment (what its ObjectRef holds)."""
    rows: list[Row] = pickle.loads(blob)
    return rows


def rows_from_chunks(chunks: list[Chunk]) -> list[Row]:
    return [(c.seq, c.data, c.created_at, c.record_id) for c in chunks]


async def fill_holes(
    store: Store, run_id: str, key: str, rows: list[Row], at: int, end: int
) -> list[Row]:
    """`rows` (ascending seqs) with the seqs they lack in [at, end) read
    from the Store (one read, from the first hole to the last), cut at the
    first seq the Store does not have either (none: everything below `end`
    is committed)."""
    known = {r[0]: r for r in rows}
    first = next(s for s in range(at, end) if s not in known)
    last = next(s for s in range(end - 1, at - 1, -1) if s not in known)
    chunks = await asyncio.to_thread(store.read_chunks, run_id, key, first, last + 1 - first)
    known.update((c.seq, (c.seq, c.data, c.created_at, c.record_id)) for c in chunks)
    filled: list[Row] = []
    for seq in range(at, end):
        row = known.get(seq)
        if row is None:
            log.warning(
                "rayflow: run %s stream %s: chunk %d committed but not found in the"
                " store; its followers read from %d on from the store",
                run_id,
                key,
                seq,
                seq,
            )
            break
        filled.append(row)
    return filled
