"""Admission: which runs hold a slot, and the queue of runs waiting for one.

A slot is a run, not a process: runs of async tasks share RunActors
(~0.1 MiB each, docs/scaling.md), so `max_live_runs` is sized by memory. At
most that many runs hold a slot — live on an actor or getting a place on one
from the pool; the rest wait here, QUEUED in the Store. The queue is memory only: a
restarted Controller rebuilds it from the Store (`recovery`). A run is
launched at most once at a time (`live` or `pending`); the RunActor's claim in
the Store (QUEUED -> EXECUTING) makes a second launch by a race harmless.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

#: resources a run asks the pool for (Ray actor options), or None
Resources = dict[str, Any] | None
#: starts a run that was given a slot (the supervisor's `run_on_actor`)
Start = Callable[[str, Resources], Coroutine[Any, Any, None]]


class Admission:
    def __init__(
        self,
        max_live_runs: int,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        start: Start,
    ) -> None:
        self.max_live_runs = max_live_runs
        self._spawn = spawn
        self._start = start
        #: runs on a RunActor: run id -> (actor name, actor)
        self.live: dict[str, tuple[str, Any]] = {}
        #: runs queued here or waiting for an actor from the pool
        self.pending: set[str] = set()
        #: runs holding a slot (on an actor or getting one)
        self.slots = 0
        self.queue: deque[tuple[str, Resources]] = deque()

    def busy(self, run_id: str) -> bool:
        """Whether the run is live or already on its way to an actor."""
        return run_id in self.live or run_id in self.pending

    def launch(
        self, run_id: str, resources: Resources, *, child: bool = False, front: bool = False
    ) -> bool:
        """Hand the run to a RunActor, or queue it (QUEUED) while
        `max_live_runs` runs already hold a slot. A child run skips the
        queue: its parent holds a slot while it waits for it, and queueing
        children behind parents could deadlock. A revival goes to the front:
        it continues work already under way. False when the run is already
        live or on its way."""
        if self.busy(run_id):
            return False
        self.pending.add(run_id)
        if self.slots >= self.max_live_runs and not child:
            if front:
                self.queue.appendleft((run_id, resources))
            else:
                self.queue.append((run_id, resources))
            return True
        self.slots += 1
        self._spawn(self._start(run_id, resources))
        return True

    def take_slot(self, *, child: bool = False) -> bool:
        """A slot for a run being created, if one is free now and no run
        waits for one (the Controller then places it as it creates it);
        False: it is created QUEUED and `launch`ed."""
        if self.queue or (self.slots >= self.max_live_runs and not child):
            return False
        self.slots += 1
        return True

    def release_slot(self) -> None:
        """A run left its actor: give its slot to the next queued run."""
        self.slots -= 1
        while self.queue and self.slots < self.max_live_runs:
            run_id, resources = self.queue.popleft()
            self.slots += 1
            self._spawn(self._start(run_id, resources))
