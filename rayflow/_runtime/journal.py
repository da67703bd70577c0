"""A run's journal: the recorded outcome of every durable operation, in order.

A revived run executes its function again from the top; each durable
operation asks the journal first (`replay`) and gets its recorded outcome
instead of running, until the journal is exhausted and the run goes live.
Entries are written to the Store before the operation returns, so whatever
the task saw survives a crash.

Messages handed to `.on()` handlers are journaled too ("on" entries), at the
point they were delivered. On replay they are handed to the (re-registered)
handler at that same point: before the next durable operation recorded
after them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from rayflow.errors import NonDeterminism
from rayflow.store import Store
from rayflow.store.base import JournalEntry

MISSING: Any = object()


class Journal:
    def __init__(self, store: Store, run_id: str, attempt: int) -> None:
        self.store, self.run_id, self.attempt = store, run_id, attempt
        self.entries: list[JournalEntry] = store.journal_load(run_id, attempt)
        self.cursor = 0
        self._persist = asyncio.Lock()
        #: called with each "on" entry met on replay; returns False while the
        #: handler it belongs to is not registered yet
        self.dispatch_on: Callable[[JournalEntry], bool] | None = None
        #: called once when the journal is exhausted and the run goes live
        self.on_live: Callable[[], None] | None = None
        self._live = False

    @property
    def replaying(self) -> bool:
        return self.cursor < len(self.entries)

    def pump(self) -> None:
        """Hand recorded `.on()` deliveries at the cursor to their handlers,
        and go live when nothing is left to replay."""
        while self.cursor < len(self.entries) and self.entries[self.cursor].kind == "on":
            if self.dispatch_on is None or not self.dispatch_on(self.entries[self.cursor]):
                return
            self.cursor += 1
        if self.cursor >= len(self.entries) and not self._live:
            self._live = True
            if self.on_live is not None:
                self.on_live()

    def replay(self, kind: str, name: str) -> Any:
        """The recorded value of the next operation, or `MISSING` when live.

        Raises NonDeterminism when the next recorded operation is another one.
        """
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

    async def record(self, kind: str, name: str, value: Any) -> None:
        """Make the outcome durable, then return. Concurrent records keep
        their order (seq is taken before the first await)."""
        entry = JournalEntry(seq=len(self.entries), kind=kind, name=name, value=json.dumps(value))
        self.entries.append(entry)
        self.cursor = len(self.entries)
        async with self._persist:
            await asyncio.to_thread(self.store.journal_append, self.run_id, self.attempt, [entry])
