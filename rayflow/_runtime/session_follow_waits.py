"""How a session reader waits between two reads of the Store.

`Waiter`: arms a wait for a change of a path BEFORE the read it follows (a
feed-based waiter would miss a commit in between); `local_waiter` is this
process's (its feed follower, `named_feed`), Serve's is
`serve/session_records.feed_waiter`. `lingering`: the followers of
`wait_records` calls that returned lately, kept for the same reader's next
call (see `session_reads`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rayflow._response import on_io_loop
from rayflow._runtime import named_feed
from rayflow._runtime.named_signals import signals

if TYPE_CHECKING:
    from rayflow._runtime.session_reads import RecordFollower

#: waits, after a read, for a change of the path since its arming (or the timeout)
Armed = Callable[[float], Awaitable[None]]
#: arms a wait for a change of `path`; called BEFORE the read it follows
Waiter = Callable[[str], Awaitable[Armed]]


async def local_waiter(path: str) -> Armed:
    """This process's signal for `path`, set by a commit here or by the
    process's feed follower (`named_feed`) for a commit anywhere."""
    named_feed.follower()
    event = signals().event(path)

    async def wait(timeout_s: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    return wait


class _Lingering:
    """The followers of `wait_records` calls that returned lately, kept
    `LINGER_S` for the same reader's next call (a user reading page after
    page: `read(start=…, wait_s=…)` in a loop, each call its own): its next
    call goes on with the same push subscription and listener — no Ray call
    to follow the run again, and the rows pushed in between are held. On the
    process's rayflow I/O loop only (it lives as long as the process); a
    follower is used by one call at a time."""

    def __init__(self) -> None:
        self._kept: OrderedDict[Any, tuple[RecordFollower, asyncio.TimerHandle]] = OrderedDict()

    def take(self, key: Any) -> RecordFollower | None:
        found = self._kept.pop(key, None)
        if found is None:
            return None
        found[1].cancel()
        return found[0]

    def keep(self, key: Any, follower: RecordFollower) -> None:
        loop = asyncio.get_running_loop()
        if not on_io_loop() or key in self._kept:  # another call's is kept already
            # once the page is handed back: ending its `follow_many` is a Ray call
            loop.call_soon(follower.close)
            return
        timer = loop.call_later(LINGER_S, self._expire, key, follower)
        self._kept[key] = (follower, timer)
        while len(self._kept) > MAX_LINGERING:
            _, (oldest, oldest_timer) = self._kept.popitem(last=False)
            oldest_timer.cancel()
            oldest.close()

    def _expire(self, key: Any, follower: RecordFollower) -> None:
        kept = self._kept.get(key)
        if kept is not None and kept[0] is follower:
            del self._kept[key]
        follower.close()


#: a `wait_records` follower is kept this long for the reader's next call
LINGER_S = 5.0
#: at most this many kept (the least recently used closed first)
MAX_LINGERING = 256
lingering = _Lingering()
