"""One long poll per replica on the RunEvents actor, shared by every run
subscription this replica serves (see rayflow/_runtime/run_events.py).

The feed also carries named streams' changes, as keys `stream:<path>`
(`rayflow/_runtime/named_signals.py`); a wait for any run ignores them.

`changes()` returns a `Changes` cursor taken *before* the caller reads its
rows; `wait_for(cursor, run_ids)` then returns as soon as one of those runs
changed after the cursor (or everything must be re-read), so a change
committed between the read and the wait is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from rayflow._runtime.serving import FEED_PREFIX, current, run_events, shared_task

log = logging.getLogger("rayflow.serve")

#: how long one poll of RunEvents waits before it asks again
POLL_S = 25.0
#: longest wait for the feed's first answer before callers go on without it
READY_S = 5.0
#: local change records kept for subscriptions between two reads
WINDOW = 20_000


@dataclass(frozen=True)
class Changes:
    """A position in this replica's change feed."""

    gen: int


class RunFeed:
    def __init__(self, namespace: str | None = None) -> None:
        #: the deployment whose feed this follows
        self.namespace = namespace
        self.gen = 0
        #: (gen, run id or None for "everything may have changed")
        self.recent: deque[tuple[int, str | None]] = deque(maxlen=WINDOW)
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _record(self, run_ids: list[str] | None) -> None:
        for run_id in run_ids if run_ids is not None else [None]:
            self.gen += 1
            self.recent.append((self.gen, run_id))
        self._changed.set()
        self._changed = asyncio.Event()

    async def _follow(self) -> None:
        settings = current().settings
        namespace = self.namespace or settings.namespace
        after = -1
        actor: Any = None
        while True:
            try:
                if actor is None:
                    actor = run_events.start(namespace, {"num_cpus": 0})
                seq, run_ids = await actor.wait.remote(after, 0 if after < 0 else POLL_S)
                if after >= 0 and (run_ids is None or run_ids):
                    self._record(run_ids)
                after = seq
                self._ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("run change feed interrupted (%s); resyncing", e)
                actor, after = None, -1
                self._record(None)
                await asyncio.sleep(0.5)

    async def changes(self) -> Changes:
        """The current position (the feed started and caught up first; if it
        cannot within READY_S, the position as it is: the callers' waits are
        bounded and they look at the Store again)."""
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = shared_task(self._follow())  # outlives this request
        if not self._ready.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), READY_S)
        return Changes(self.gen)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def changed_since(self, since: Changes, run_ids: set[str] | None) -> bool:
        if self.gen == since.gen:
            return False
        if self.recent and self.recent[0][0] > since.gen + 1:
            return True  # fell out of the window
        for gen, run_id in reversed(self.recent):
            if gen <= since.gen:
                break
            if run_id is None:
                return True
            if run_ids is None:
                if not run_id.startswith(FEED_PREFIX):  # a named stream is no run
                    return True
            elif run_id in run_ids:
                return True
        return False

    def changed_ids(self, since: Changes, upto: Changes) -> set[str] | None:
        """The runs that changed after `since` up to `upto`; None when
        anything may have changed (a resync, or `since` left the window)."""
        if self.recent and self.recent[0][0] > since.gen + 1:
            return None
        ids: set[str] = set()
        for gen, run_id in reversed(self.recent):
            if gen <= since.gen:
                break
            if gen > upto.gen:
                continue
            if run_id is None:
                return None
            ids.add(run_id)
        return ids

    async def wait_for(self, since: Changes, run_ids: set[str] | None, timeout_s: float) -> bool:
        """Wait until one of `run_ids` (None: any run) changed after `since`;
        False after `timeout_s` without such a change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.changed_since(since, run_ids):
            left = deadline - loop.time()
            if left <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        return True


_feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RunFeed] = weakref.WeakKeyDictionary()


def feed() -> RunFeed:
    """The running event loop's feed of the current deployment (a replica
    has one loop and one deployment; a process that connects to another
    deployment gets a new feed, the old one stops)."""
    loop = asyncio.get_running_loop()
    namespace = current().settings.namespace
    found = _feeds.get(loop)
    if found is None or found.namespace != namespace:
        if found is not None:
            found.stop()
        found = _feeds[loop] = RunFeed(namespace)
    return found
