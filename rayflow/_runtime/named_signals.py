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

Durable Streams appends tell the change feed only when someone follows
the stream (a Ray call per commit otherwise: 4-7 % of a replica's CPU under
small appends): a reader of the endpoint that is about to wait holds a
*follow lease* on the stream in the Store (`Store.named_follow`, `follow`
below), and a commit of a `leased` write (`NamedWrite.leased`) that finds
the lease on the stream row it locks tells the feed. No lost wake-up: a
reader leases, *then* reads, then waits; a commit either saw the lease (it
tells the feed) or committed before the lease, so the read after it sees
its data (the lease's UPDATE and the commit's lock take the same row, in
one order). The reader renews when less than `RENEW_S` is left and never
waits longer than that at once (`wait_s`). Readers in the committing
process are woken either way; every other write (sessions', whose readers
do not lease) tells the feed always.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from rayflow.store import Store
from rayflow.store.base import now_ms

#: the prefix of a named stream's key in the change feed (run ids never start with it)
FEED_PREFIX = "stream:"
#: a follow lease lasts this long (s); a reader renews it when less than
#: RENEW_S is left, and waits at most RENEW_S at once, so it waits leased
LEASE_S, RENEW_S = 600.0, 300.0


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


def hook(feed: Callable[[list[str]], None]) -> Callable[[list[str], list[str]], None]:
    """The Store's `on_named_change`: wake this process's readers, then tell
    the change feed (`feed`: the run-change Notifier) of the streams that a
    reader follows (leased)."""

    def changed(paths: list[str], followed: list[str]) -> None:
        _signals.notify(paths)
        if followed:
            feed([feed_key(p) for p in followed])

    return changed


def unleased(followed_until: int | None) -> bool:
    """A stream with this lease (ms) must be leased again before a wait."""
    return followed_until is None or followed_until < now_ms() + RENEW_S * 1000


async def follow(store: Store, path: str) -> None:
    """Lease `path` for `LEASE_S`: commits that change it tell other
    processes. The caller reads the stream again before it waits."""
    now = now_ms()
    until, renew_before = now + int(LEASE_S * 1000), now + int(RENEW_S * 1000)
    await asyncio.to_thread(store.named_follow, path, until, renew_before)


def wait_s(left: float) -> float:
    """How long one wait may last of the `left` seconds (a lease outlasts it)."""
    return min(left, RENEW_S)
