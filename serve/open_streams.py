"""Long-lived requests each public token holds open on this replica.

An SSE body (an output stream, an input log, a run's events) or a live run
subscription (a shape long poll) holds a connection, a task and, for a
stream, a hub subscriber for as long as the client keeps it. A public token
can be in anyone's browser: one token may hold at most
`RAYFLOW_MAX_STREAMS_PER_TOKEN` of them at once on a replica; the next is a
429 until one ends. The secret key (backends) is not limited. The count is
per replica (replicas share nothing), so N replicas allow N times as many.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator

from rayflow.errors import TooManyRequests
from serve.auth import Principal

#: (caller) -> requests open now
_open: Counter[str] = Counter()


def take(who: Principal, limit: int) -> Callable[[], None]:
    """Count one more open request of `who`; returns the callable that ends
    it (idempotent). Raises TooManyRequests (429) when `who` holds `limit`."""
    if who.secret:
        return _nothing
    caller = who.caller
    if _open[caller] >= limit:
        raise TooManyRequests(
            f"this token holds {_open[caller]} open streams and subscriptions on this server,"
            f" its limit (RAYFLOW_MAX_STREAMS_PER_TOKEN); close one (or wait for one to end)"
            " before opening another"
        )
    _open[caller] += 1
    done = False

    def release() -> None:
        nonlocal done
        if done:
            return
        done = True
        _open[caller] -= 1
        if _open[caller] <= 0:
            del _open[caller]

    return release


@contextlib.contextmanager
def hold(who: Principal, limit: int) -> Iterator[None]:
    """`take` for the length of a block."""
    release = take(who, limit)
    try:
        yield
    finally:
        release()


def _nothing() -> None:
    return None
