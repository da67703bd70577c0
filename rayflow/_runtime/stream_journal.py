"""Stream writes as durable operations: what a replay may write, and what not.

A writer inside a task has a deterministic id (`RunContext.next_writer_id`).
Its life is cut into segments, each ended by a *completion*: a pipe has one
(its source is exhausted and every chunk is durable), a `writer()` one per
`wait()` (leaving `async with` is one). A completion is journaled (a
"stream" entry: writer id, segment, chunks written, the writer's position
and the indexes the chunks got) once its chunks are durable and before the
task hears of it. A replay that reaches a recorded segment gets the recorded
outcome and writes nothing: a pipe does not even start iterating its source.

A run that suspends journals every writer's position (a "suspend" entry,
`mark_suspension`, after flushing every writer: each position is what the
Store holds). Until the replay passes that point — the `.wait()` that
suspended asks the journal for its outcome — no write of a writer reaches
the Store: below its position there the chunk is stored already (answered
as a duplicate without a commit), and at or past it the write is dropped
the same way (a source that answers differently this time must not add to
what readers saw); a pipe or `merge` that is not being awaited holds before
writing past it until the run is past that point, then writes on (its
chunks from there on come from this attempt).
When the replay passes the point, each writer's numbering moves up to its
recorded position, so its live writes come after everything stored.

A run revived after a crash has no such entry for the time after its last
suspension: its writers' chunks up to what was committed are recognised as
duplicates (writer id and number), and those past it come from the new
attempt — a pipe cut mid-stream restarts its source.

A session stream's writer inside a run (`session_writer.SessionWriter`) is
journaled the same way: its number and id are the record's producer stamp.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from rayflow._runtime.journal import STREAM, SUSPEND, Journal
from rayflow.store.base import JournalEntry


class JournaledWriter(Protocol):
    """A writer with a deterministic id inside a task: a run stream's
    `ChunkWriter`, a session stream's `SessionWriter`."""

    writer_id: str

    @property
    def position(self) -> int:
        """How many writes it numbered so far."""
        ...

    def advance_to(self, position: int) -> None: ...

    async def flush(self) -> None: ...


@dataclass
class WriterLog:
    """The journaled stream writes of one attempt (`Journal.stream_state`)."""

    #: writer id -> its recorded completions, by segment number
    completions: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    #: the writers this execution created, by id (their positions at a suspension)
    writers: dict[str, JournaledWriter] = field(default_factory=dict)
    #: "suspend" entries' positions, parsed once, by entry seq
    positions: dict[int, dict[str, int]] = field(default_factory=dict)


def log_of(journal: Journal) -> WriterLog:
    log: WriterLog | None = journal.stream_state
    if log is None:
        log = WriterLog()
        for entry in journal.entries:
            if entry.kind == STREAM:
                _add_completion(log, entry)
        journal.stream_state = log
        journal.on_suspension_passed = lambda entry: _passed(log, entry)
    return log


def _add_completion(log: WriterLog, entry: JournalEntry) -> None:
    value = json.loads(entry.value)
    log.completions.setdefault(entry.name, {})[int(value["segment"])] = value


def _positions(log: WriterLog, entry: JournalEntry) -> dict[str, int]:
    found = log.positions.get(entry.seq)
    if found is None:
        found = log.positions[entry.seq] = dict(json.loads(entry.value)["positions"])
    return found


def _passed(log: WriterLog, entry: JournalEntry) -> None:
    """The replay passed a suspension: writers number on from where they were."""
    for writer_id, position in _positions(log, entry).items():
        writer = log.writers.get(writer_id)
        if writer is not None:
            writer.advance_to(position)


def register(journal: Journal, writer: JournaledWriter) -> None:
    """A writer of this attempt: its position goes into "suspend" entries;
    one created after the replay passed a suspension starts past what it
    wrote before it."""
    log = log_of(journal)
    log.writers[writer.writer_id] = writer
    for entry in journal.entries[: journal.cursor]:
        if entry.kind == SUSPEND:
            writer.advance_to(_positions(log, entry).get(writer.writer_id, 0))


def completion(journal: Journal, writer_id: str, segment: int) -> dict[str, Any] | None:
    """The recorded outcome of segment `segment` of a writer, if it completed."""
    return log_of(journal).completions.get(writer_id, {}).get(segment)


async def complete(journal: Journal, writer_id: str, segment: int, outcome: dict[str, Any]) -> None:
    """Journal that a segment completed (its chunks are durable)."""
    value = {"segment": segment, **outcome}
    log_of(journal).completions.setdefault(writer_id, {})[segment] = value
    await journal.note(STREAM, writer_id, value)


def bound(journal: Journal, writer_id: str) -> int | None:
    """The position this writer may not write at or past yet (None: no limit)."""
    entry = journal.next_suspension()
    if entry is None:
        return None
    return _positions(log_of(journal), entry).get(writer_id, 0)


async def admit(journal: Journal, writer_id: str, end: int, awaited: asyncio.Event) -> None:
    """Hold a background writer (pipe, merge) whose next writes reach `end`
    until the replay is past the suspension that bounds it — unless the task
    awaits it meanwhile (then the writes past the bound are dropped, as a
    foreground write's: holding would wait for a point the task cannot reach)."""
    while (b := bound(journal, writer_id)) is not None and end > b and not awaited.is_set():
        waits = [asyncio.ensure_future(e.wait()) for e in (journal.passed, awaited)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


async def mark_suspension(journal: Journal, stream_id: str) -> None:
    """Journal every writer's position as the run suspends on `stream_id`
    (after its writes were drained: each position is what the Store holds)."""
    log = journal.stream_state
    positions: dict[str, int] = {}
    if isinstance(log, WriterLog):
        # writes to other runs (target="parent", …) are not in the run's drained
        # buffers; a write that failed reached its own future (the task's to see)
        await asyncio.gather(*(w.flush() for w in log.writers.values()), return_exceptions=True)
        positions = {wid: w.position for wid, w in log.writers.items() if w.position > 0}
    # recorded even with no writer: it is also where a replay passes from
    # what ran before the suspension to live code (`journal.next_suspension`)
    await journal.record(SUSPEND, stream_id, {"positions": positions})


def ranges(indexes: list[int]) -> list[list[int]]:
    """Sorted indexes as [start, stop) runs: a pipe's chunks, compactly."""
    out: list[list[int]] = []
    for i in sorted(indexes):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out
