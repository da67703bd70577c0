"""The RunActor's side of `follow_many`: one reader process's polls on the
streams of the runs an actor executes, answered as their streams commit.

A RunActor executes many runs at once, and a process reading streams of
several of them follows them all in one call (`actor_polls`). A `Follow`
watches the `StreamBuffers` of every run it has a reader for; when one has
news it looks again at that run's readers only, so a commit costs the
readers of its run, not every reader the call carries (1,000 runs on one
actor, read from one process: one look per commit, not 1,000).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from rayflow._runtime.named_tails import NamedTail, path_of, tails

if TYPE_CHECKING:
    from rayflow._runtime.attempts import Execution
    from rayflow._runtime.push_inbox import Address
    from rayflow._runtime.stream_buffers import StreamBuffers

#: one reader's poll: (run id, stream key, next index)
Poll = tuple[str, str, int]


class Follow:
    """The polls of one `follow_many` call, by position in the call."""

    def __init__(
        self,
        executing: Callable[[str], Execution | None],
        polls: list[Poll],
        claiming: Callable[[str], bool] = lambda run_id: False,
        inbox: Address | None = None,
    ) -> None:
        self._executing = executing
        #: where the reader process takes pushed rows (`push_inbox`), if it does
        self.inbox = inbox
        #: the runs polled when the call came (writers learn `inbox` for them)
        self.runs = {run_id for run_id, _, _ in polls}
        #: whether a run is being claimed here (not executing yet, soon)
        self._claiming = claiming
        self.polls: dict[int, Poll] = dict(enumerate(polls))
        #: positions of the polls of each run
        self.by_run: dict[str, list[int]] = {}
        for i, (run_id, _, _) in self.polls.items():
            self.by_run.setdefault(run_id, []).append(i)
        #: whether any poll names a named stream (`named_tails`)
        self._named = any(path_of(key) is not None for _, key, _ in polls)
        #: a poll left since the last `watch`: it looks at every run again
        self._left = False
        #: set when a watched run has news, at the deadline and at a kick
        self.wake = asyncio.Event()
        self.kicked = False
        #: runs with news since they were last looked at
        self.changed: set[str] = set()
        self._watched: dict[str, StreamBuffers] = {}
        #: (run id, path) -> the named tail watched for that run's readers
        self._tails: dict[tuple[str, str], tuple[NamedTail, Callable[[], None]]] = {}

    def _on_change(self, run_id: str) -> None:
        self.changed.add(run_id)
        self.wake.set()

    def kick(self) -> None:
        self.kicked = True
        self.wake.set()

    def look_at(self, run_id: str) -> None:
        """A run was claimed here, or left (or its claim failed): look at it
        again (and watch it) if it is polled."""
        if run_id in self.by_run:
            self._on_change(run_id)

    @property
    def watching(self) -> bool:
        """Whether any run polled executes here or is being claimed here
        (there is something to wait on)."""
        if self._watched or self._tails:
            return True
        return any(self._claiming(r) for r in self.by_run)

    def forget(self, i: int) -> None:
        """Poll `i` leaves the call (its reader was sent something other than rows)."""
        run_id = self.polls.pop(i)[0]
        same = self.by_run[run_id]
        same.remove(i)
        if not same:
            del self.by_run[run_id]
        self._left = True

    def looking_at(self, runs: set[str] | None) -> list[int]:
        """The polls of `runs` (None: all), by position."""
        if runs is None:
            return list(self.polls)
        by_run = self.by_run
        return [i for run_id in runs for i in by_run.get(run_id, ())]

    def watch(self, runs: set[str] | None = None) -> None:
        """Watch the buffers of every polled run executing here now, and no
        others. Called before looking, so a commit in between is not missed.
        `runs`: only these runs may have changed (news, a claim, a run that
        left: each tells this follow), unless a poll left since the last
        call; None: look at all."""
        if runs is None or self._left:
            self._left = False
            for run_id in [r for r in self._watched if r not in self.by_run]:
                self._watched.pop(run_id).watchers.discard(self._on_change)
            runs = set(self.by_run)
        for run_id in runs:
            if run_id not in self.by_run:
                continue
            execution = self._executing(run_id)
            buffers = execution.buffers if execution is not None else None
            watched = self._watched.get(run_id)
            if watched is buffers:
                continue
            if watched is not None:  # the run left and came back: new buffers
                watched.watchers.discard(self._on_change)
                del self._watched[run_id]
            if buffers is not None:
                buffers.watchers.add(self._on_change)
                self._watched[run_id] = buffers
        if not self._named and not self._tails:
            return  # no poll of a named stream (the usual case)
        named: set[tuple[str, str]] = set()
        for run_id, key, _ in self.polls.values():
            path = path_of(key)
            if path is not None and run_id in self._watched:
                named.add((run_id, path))
        for pair in [p for p in self._tails if p not in named]:
            self._unwatch(pair)
        for run_id, path in named - self._tails.keys():
            tail = tails().tail(path)
            watcher = functools.partial(self._on_change, run_id)
            tail.watchers.add(watcher)
            self._tails[(run_id, path)] = (tail, watcher)
            if self.inbox is not None:
                # its commits are pushed there from now on (`named_tails.push`)
                tail.followed(self.inbox, run_id)

    def _unwatch(self, pair: tuple[str, str]) -> None:
        tail, watcher = self._tails.pop(pair)
        tail.watchers.discard(watcher)
        if self.inbox is not None:
            # pushed to a while longer: its process reads on between two calls
            tail.followed(self.inbox, pair[0])

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def close(self) -> None:
        for buffers in self._watched.values():
            buffers.watchers.discard(self._on_change)
        self._watched.clear()
        for pair in list(self._tails):
            self._unwatch(pair)
