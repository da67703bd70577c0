"""A run's journal: the recorded outcome of every durable operation, in order.

A revived run executes its function again from the top; each durable
operation asks the journal first (`replay`) and gets its recorded outcome
instead of running, until the journal is exhausted and the run goes live.
Entries are written to the Store before the operation returns, so whatever
the task saw survives a crash.

Messages handed to `.on()` handlers are journaled too ("on" entries for run
input streams, "session-on" for a session's), at the point they were
delivered. On replay they are handed to the (re-registered) handler at that
same point: before the next durable operation recorded after them.

Stream writes are journaled too (`_runtime/stream_journal.py`), out of the
order the task's own operations are matched in: a "stream" entry records a
writer segment that completed (a pipe, a `writer()` up to its `wait()`), and
a "suspend" entry, recorded when the run suspends, each writer's position at
that point. A "suspend" entry is passed by the next operation the replay
asks for (the `.wait()` that suspended): until then the run is still
replaying what it did before it suspended.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import Callable
from typing import Any

from rayflow.errors import NonDeterminism
from rayflow.store import Store
from rayflow.store.base import JournalEntry

MISSING: Any = object()

#: entries that are not one of the task's operations: "stream" entries are
#: skipped wherever they are, "suspend" entries by the next `replay`
STREAM, SUSPEND = "stream", "suspend"
#: deliveries to `.on()` handlers, handed over again where the replay meets them
DELIVERIES = ("on", "session-on")


class Journal:
    def __init__(
        self,
        store: Store,
        run_id: str,
        attempt: int,
        entries: list[JournalEntry] | None = None,
    ) -> None:
        """The journal of `attempt`: `entries` as loaded (`journal_load_many`
        for the runs starting together), else read from the Store now."""
        self.store, self.run_id, self.attempt = store, run_id, attempt
        self.entries: list[JournalEntry] = (
            store.journal_load(run_id, attempt) if entries is None else entries
        )
        self.cursor = 0
        self._persist = asyncio.Lock()
        #: by kind (DELIVERIES): called with each delivery entry met on
        #: replay; returns False while the handler it belongs to is not
        #: registered yet
        self.dispatch: dict[str, Callable[[JournalEntry], bool]] = {}
        #: called once when the journal is exhausted and the run goes live
        self.on_live: Callable[[], None] | None = None
        self._live = False
        #: set once the journal is exhausted: deliveries made live from then
        #: on are recorded after everything the replay handed over
        self.live = asyncio.Event()
        #: set, and replaced, whenever the cursor passes a "suspend" entry
        self.passed = asyncio.Event()
        #: what `stream_journal` keeps of this attempt's writers, and what it
        #: is told when the replay passes a "suspend" entry
        self.stream_state: Any = None
        self.on_suspension_passed: Callable[[JournalEntry], None] | None = None
        self._suspends = [i for i, e in enumerate(self.entries) if e.kind == SUSPEND]

    @property
    def replaying(self) -> bool:
        return self.cursor < len(self.entries)

    def pump(self) -> None:
        """Hand recorded `.on()` deliveries at the cursor to their handlers,
        and go live when nothing is left to replay."""
        while self.cursor < len(self.entries) and (
            self.entries[self.cursor].kind in DELIVERIES or self.entries[self.cursor].kind == STREAM
        ):
            entry = self.entries[self.cursor]
            if entry.kind != STREAM:
                dispatch = self.dispatch.get(entry.kind)
                if dispatch is None or not dispatch(entry):
                    return
            self.cursor += 1
        if self.cursor >= len(self.entries) and not self._live:
            self._live = True
            self.live.set()
            if self.on_live is not None:
                self.on_live()

    def replay(self, kind: str, name: str) -> Any:
        """The recorded value of the next operation, or `MISSING` when live.

        Raises NonDeterminism when the next recorded operation is another one.
        """
        self.pump()
        if self.cursor < len(self.entries) and self.entries[self.cursor].kind == SUSPEND:
            while self.cursor < len(self.entries) and self.entries[self.cursor].kind == SUSPEND:
                if self.on_suspension_passed is not None:
                    self.on_suspension_passed(self.entries[self.cursor])
                self.cursor += 1
            self.passed.set()
            self.passed = asyncio.Event()
            self.pump()
        if self.cursor >= len(self.entries):
            return MISSING
        entry = self.entries[self.cursor]
        if entry.kind != kind or entry.name != name:
            raise NonDeterminism(
                f"run {self.run_id}: on replay the task did {kind} {name!r} where its journal"
                f" recorded {entry.kind} {entry.name!r} (operation #{self.cursor}). Code between"
                " durable operations must be deterministic: put I/O in steps and take time and"
                " randomness from rayflow.now()/rayflow.random()."
            )
        self.cursor += 1
        self.pump()
        return json.loads(entry.value)

    def consumed(self, stream_id: str) -> set[int]:
        """Message seqs of an input stream that the journal says were taken."""
        taken: set[int] = set()
        for e in self.entries:
            if e.kind in ("once", "wait", "on") and e.name == stream_id:
                seq = json.loads(e.value).get("seq")
                if seq is not None:
                    taken.add(int(seq))
        return taken

    def next_suspension(self) -> JournalEntry | None:
        """The first "suspend" entry the replay has not passed yet, if any."""
        at = bisect.bisect_left(self._suspends, self.cursor)
        return self.entries[self._suspends[at]] if at < len(self._suspends) else None

    async def note(self, kind: str, name: str, value: Any) -> None:
        """Make an entry durable that is not one of the task's operations
        (a "stream" entry): recorded at the end, the cursor left where the
        replay is."""
        live = self.cursor >= len(self.entries)
        entry = JournalEntry(seq=len(self.entries), kind=kind, name=name, value=json.dumps(value))
        self.entries.append(entry)
        if live:
            self.cursor = len(self.entries)
        async with self._persist:
            await asyncio.to_thread(self.store.journal_append, self.run_id, self.attempt, [entry])

    async def record(
        self,
        kind: str,
        name: str,
        value: Any,
        persist: Callable[[JournalEntry], None] | None = None,
    ) -> None:
        """Make the outcome durable, then return. Concurrent records keep
        their order (seq is taken before the first await). `persist` writes
        the entry instead of `journal_append`, in a transaction that also
        commits what the operation did (a session's consumed cursor)."""
        entry = JournalEntry(seq=len(self.entries), kind=kind, name=name, value=json.dumps(value))
        if kind == SUSPEND:
            self._suspends.append(entry.seq)
        self.entries.append(entry)
        self.cursor = len(self.entries)
        async with self._persist:
            if persist is not None:
                await asyncio.to_thread(persist, entry)
            else:
                await asyncio.to_thread(
                    self.store.journal_append, self.run_id, self.attempt, [entry]
                )
