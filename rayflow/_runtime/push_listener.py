"""A reader of a named stream waiting for the rows runs push to its process.

A session's `.out` reader (`session_reads.RecordFollower`) `listen`s
(`actor_polls.listen`) from its position: the RunActor of whichever run
writes the stream pushes each commit's rows from its commit thread to the
processes that followed the path lately (`named_tails.push`), and this
process's inbox (`push_inbox`) offers them to the listeners of their path —
also while the reader has no `follow_many` subscription in flight.
"""

from __future__ import annotations

import contextlib

from rayflow._runtime.stream_rows import Row
from rayflow._runtime.wake import Wake

#: rows a `Listener` holds for its reader at most
MAX_HELD = 1000


class Listener:
    """A reader of a named stream (a session's `.out`) waiting for rows
    pushed to this loop's inbox from `position` on, by whichever run's
    RunActor commits them (`named_tails.push`) — also while it has no
    `follow_many` subscription in flight (between two reads, or before the
    first look). Rows are committed rows at their Store positions."""

    def __init__(self, listeners: dict[str, list[Listener]], path: str, start: int) -> None:
        self._listeners, self.path = listeners, path
        self.position = start
        self.rows: list[Row] = []
        #: held MAX_HELD rows the reader did not take: holds nothing until `at`
        self.full = False
        self._ready = Wake()
        listeners.setdefault(path, []).append(self)

    def at(self, start: int) -> None:
        """Listen from `start` on, keeping the rows held from there."""
        held = [r for r in self.rows if r[0] >= start]
        self.rows = held if held and held[0][0] == start else []
        self.position = self.rows[-1][0] + 1 if self.rows else start
        self.full = False

    def offer(self, rows: list[Row]) -> int:
        at = self.position - rows[0][0]
        if self.full or at < 0 or at >= len(rows):
            return 0
        fresh = rows[at:]
        if len(self.rows) + len(fresh) > MAX_HELD:
            # a reader this far behind reads the Store: hold nothing more
            self.rows, self.full = [], True
            return 0
        self.rows += fresh
        self.position = fresh[-1][0] + 1
        self._ready.set()
        return len(fresh)

    def take(self) -> list[Row]:
        rows, self.rows = self.rows, []
        return rows

    async def wait(self, timeout_s: float) -> None:
        """Until rows are held (or `timeout_s`)."""
        if not self.rows:
            self._ready.clear()
            await self._ready.wait(timeout_s)

    def close(self) -> None:
        same = self._listeners.get(self.path)
        if same is not None:
            with contextlib.suppress(ValueError):
                same.remove(self)
            if not same:
                del self._listeners[self.path]
