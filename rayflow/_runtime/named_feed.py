"""Wake-ups of named-stream readers in a process that follows no change feed
of its own (the driver, a RunActor reading another session's output).

A Serve replica follows the change feed once for all its readers
(`serve/run_feed.py`), and a RunActor is poked for its own session's input
(`RunActor.session_changed`). Any other process that waits for a named
stream starts this follower on first use: one daemon thread, one long poll
on the RunEvents actor at a time, which sets this process's signals
(`named_signals`) for the paths the feed reports — so every reader of the
process shares one poll, and a commit reaches a waiting reader two actor
hops later. The poll keeps its cursor, so a change made between two polls
is reported by the next; a lost or reset feed wakes every reader (they read
the Store again, the truth). The follower follows the feed of the process's
current deployment (namespace): after `rayflow.init` with another one, the
next reader starts a follower for it and the old one stops.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

from rayflow._runtime import connection, run_events
from rayflow._runtime.named_signals import FEED_PREFIX, signals

log = logging.getLogger("rayflow")

#: how long one poll waits on the feed
POLL_S = 30.0


class NamedFeedFollower:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.stopped = False
        self._thread = threading.Thread(target=self._follow, name="rayflow-named-feed", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        after, actor = -1, None
        while not self.stopped:
            if not ray.is_initialized():
                time.sleep(0.5)
                continue
            if actor is None:
                actor = run_events.handle(self.namespace)
                if actor is None:
                    time.sleep(0.5)
                    continue
            try:
                # a future, not ray.get: this thread may live in an async actor's process
                reply = actor.wait.remote(after, POLL_S).future()
                after, changed = reply.result(timeout=POLL_S * 2)
            except Exception as e:
                if self.stopped:
                    return
                log.warning("following the change feed for named streams failed: %r", e)
                actor, after = None, -1
                signals().notify_all()  # read again: something may have been missed
                time.sleep(0.2)
                continue
            if self.stopped:
                return
            if changed is None:
                signals().notify_all()
            else:
                paths = [k[len(FEED_PREFIX) :] for k in changed if k.startswith(FEED_PREFIX)]
                if paths:
                    signals().notify(paths)


_lock = threading.Lock()
_current: NamedFeedFollower | None = None


def follower() -> NamedFeedFollower:
    """This process's follower of its deployment's feed, started on first use."""
    global _current
    namespace = connection.current().settings.namespace
    with _lock:
        if _current is None or _current.namespace != namespace:
            if _current is not None:
                _current.stopped = True
            _current = NamedFeedFollower(namespace)
        return _current
