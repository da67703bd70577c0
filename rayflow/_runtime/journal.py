"""A run's journal: the recorded outcome of every durable operation, in order.

A revived run executes its function again from the top; each durable
operation asks the journal first (`replay`) and gets its recorded outcome
instead of running, until the journal is exhausted and the run goes live.
Entries are written to the Store before the operation returns, so whatever
the task saw survives a crash.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rayflow.errors import NonDeterminism
from rayflow.store import Store
from rayflow.store.base import JournalEntry

_MISSING = object()


class Journal:
    def __init__(self, store: Store, run_id: str, attempt: int) -> None:
        self.store, self.run_id, self.attempt = store, run_id, attempt
        self.entries: list[JournalEntry] = store.journal_load(run_id, attempt)
        self.cursor = 0

    @property
    def replaying(self) -> bool:
        return self.cursor < len(self.entries)

    def replay(self, kind: str, name: str) -> Any:
        """The recorded value of the next operation, or `MISSING` when live.

        Raises NonDeterminism when the next recorded operation is another one.
        """
        if self.cursor >= len(self.entries):
            return _MISSING
        entry = self.entries[self.cursor]
        if entry.kind != kind or entry.name != name:
            raise NonDeterminism(
                f"run {self.run_id}: on replay the task did {kind} {name!r} where its journal"
                f" recorded {entry.kind} {entry.name!r} (operation #{self.cursor}). Code between"
                " durable operations must be deterministic: put I/O in steps and take time and"
                " randomness from rayflow.now()/rayflow.random()."
            )
        self.cursor += 1
        return json.loads(entry.value)

    async def record(self, kind: str, name: str, value: Any) -> None:
        """Make the outcome durable, then advance."""
        entry = JournalEntry(seq=len(self.entries), kind=kind, name=name, value=json.dumps(value))
        await asyncio.to_thread(self.store.journal_append, self.run_id, self.attempt, [entry])
        self.entries.append(entry)
        self.cursor = len(self.entries)


MISSING = _MISSING
