"""Wake-ups for readers of named streams (`rayflow/store/named.py`).

A commit that changes a named stream calls the Store's `on_named_change`
hook in the committing process. The hook installed by `connection` does two
things: it sets this process's `asyncio.Event`s for those paths (a reader in
the same process — a Serve replica reading what it just appended — wakes
with no hop), and it sends the paths, as feed keys (`feed_key`), to the
RunEvents change feed (`run_events.py`), which every replica follows
(`serve/run_feed.py`): readers in other processes wake one actor hop later.

Like the run feed, a signal only says *that* a stream changed; the reader
reads the Store (the truth). Take the event (`event(path)`) *before*
reading, then wait on it: a commit between the read and the wait is not
missed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

#: the prefix of a named stream's key in the change feed (run ids never start with it)
FEED_PREFIX = "stream:"


def feed_key(path: str) -> str:
    return FEED_PREFIX + path


class NamedSignals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, dict[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    def event(self, path: str) -> asyncio.Event:
        """An event set by the next change of `path` committed in this process."""
        loop = asyncio.get_running_loop()
        with self._lock:
            per_loop = self._events.setdefault(path, {})
            event = per_loop.get(loop)
            if event is None:
                event = per_loop[loop] = asyncio.Event()
            return event

    def notify(self, paths: list[str]) -> None:
        """Set the events of `paths` (from any thread)."""
        with self._lock:
            woken = [self._events.pop(p, None) for p in paths]
        for per_loop in woken:
            for loop, event in (per_loop or {}).items():
                if not loop.is_closed():
                    loop.call_soon_threadsafe(event.set)

    def notify_all(self) -> None:
        """Set every event (a feed that lost track: every reader reads again)."""
        with self._lock:
            paths = list(self._events)
        self.notify(paths)


_signals = NamedSignals()


def signals() -> NamedSignals:
    """This process's signals."""
    return _signals


def hook(feed: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """The Store's `on_named_change`: wake this process's readers, then tell
    the change feed (`feed`: the run-change Notifier)."""

    def changed(paths: list[str]) -> None:
        _signals.notify(paths)
        feed([feed_key(p) for p in paths])

    return changed
