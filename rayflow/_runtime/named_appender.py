"""One process's writes to named streams, group-committed.

Every writer of named streams in an event loop (the Durable Streams route's
POSTs, a session's `.out.append`) hands its `NamedWrite`s to the loop's
`NamedAppender`. It keeps one commit in flight: with nothing in flight a
write leaves at once (on the next turn of the loop, so writes made in one go
share the commit); writes made meanwhile, to any stream, queue and leave
together in the next one — at most `MAX_BATCH` writes, one transaction
(`Store.named_write_many`), one fsync, on the process's commit thread. Under
a flood commits begin at least `MIN_GAP_S` apart (larger batches); a lone
writer's commits are farther apart than that and never wait.

Invariants:
- Acknowledged = durable = visible: a write's future resolves with its
  `NamedWriteResult` once its commit is done; readers are woken by the
  Store's `on_named_change` hook (`named_signals`) after that commit.
- Writes to one stream are applied in the order submitted (the batch keeps
  submission order; one commit at a time), so a producer's pipelined
  requests arrive at the Store in the order it sent them on one connection.
- Each write succeeds or fails alone (its outcome); a Store error (the
  database away) fails every write of that commit, which stored nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

from rayflow._runtime import connection, hops
from rayflow._runtime.calls import shared_task
from rayflow._runtime.stream_commit import commit_thread
from rayflow.store import Store
from rayflow.store.named import NamedWrite, NamedWriteResult

log = logging.getLogger("rayflow")

#: most writes in one commit
MAX_BATCH = 2_000
#: under a flood a commit starts at least this long after the one before it
#: began, and the writes made meanwhile share it: fewer, larger commits
#: (a commit's fixed cost, ~100 µs of the commit thread's CPU and a wake-up
#: of the loop, is most of a small write's; benchmarks/README.md, Durable
#: Streams). A write with no commit begun this recently leaves at once.
MIN_GAP_S = 0.002

#: called on the commit thread with a write's result right after its commit
AfterCommit = Callable[[NamedWriteResult], None]
#: a write, its future, what to call after its commit
Queued = tuple[NamedWrite, "asyncio.Future[NamedWriteResult]", AfterCommit | None]

_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, NamedAppender] = (
    weakref.WeakKeyDictionary()
)


def named_appender() -> NamedAppender:
    """The appender of the running event loop."""
    loop = asyncio.get_running_loop()
    appender = _by_loop.get(loop)
    if appender is None:
        appender = _by_loop[loop] = NamedAppender()
    return appender


async def write(w: NamedWrite, after: AfterCommit | None = None) -> NamedWriteResult:
    """Commit `w` with whatever else this loop writes meanwhile. `after`:
    called with its result on the commit thread as soon as the commit
    returns, before the loop hears of it (its errors are logged, never
    raised: the write is durable either way)."""
    return await named_appender().submit(w, after)


class NamedAppender:
    def __init__(self, store: Store | None = None, max_bytes: int | None = None) -> None:
        """Writes to `store` (default: the connection's), limited to `max_bytes`
        per stream (default: `max_stream_bytes`)."""
        self._store, self._max_bytes = store, max_bytes
        self._queue: list[Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        #: when (loop time) the last commit began
        self._began = float("-inf")

    def submit(
        self, w: NamedWrite, after: AfterCommit | None = None
    ) -> asyncio.Future[NamedWriteResult]:
        future: asyncio.Future[NamedWriteResult] = asyncio.get_running_loop().create_future()
        self._queue.append((w, future, after))
        if self._flusher is None or self._flusher.done():
            # in no request's context: it commits for every request of the loop
            self._flusher = shared_task(self._flush_loop())
        return future

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                wait = self._began + MIN_GAP_S - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._began = loop.time()
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit(batch)
        except BaseException as e:  # e.g. cancelled as the loop closes: nobody may hang
            queued, self._queue = self._queue, []
            for _, future, _ in queued:
                if not future.done():
                    future.set_exception(e)
            if not isinstance(e, Exception):
                raise

    async def _commit(self, batch: list[Queued]) -> None:
        store, max_bytes = self._store, self._max_bytes
        if store is None or max_bytes is None:
            conn = connection.current()
            store = store or conn.store
            max_bytes = max_bytes or conn.settings.max_stream_bytes
        writes = [w for w, _, _ in batch]

        def commit() -> list[NamedWriteResult]:
            began = time.time_ns()
            results = store.named_write_many(writes, max_bytes)
            if hops.enabled():
                ids = _ids(writes, results)
                hops.mark("commit_start", ids, at=began)
                hops.mark("committed", ids)
            for (_, _, after), result in zip(batch, results, strict=True):
                if after is not None:
                    try:
                        after(result)
                    except Exception:
                        log.exception("rayflow: after the commit to %s", result)
            return results

        try:
            results = await commit_thread().run(commit)
        except BaseException as e:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
        if hops.enabled():
            hops.mark("resolved", _ids(writes, results))


def _ids(writes: list[NamedWrite], results: list[NamedWriteResult]) -> list[str]:
    return [
        hops.named_id(w.path, r.start + i)
        for w, r in zip(writes, results, strict=True)
        if r.start is not None
        for i in range(len(w.messages))
    ]
