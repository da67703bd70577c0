"""Group commit for a run's output streams: one Store transaction for all of them.

Every write to any stream of a run queues at its `StreamBuffer`; one
`RunCommitter` per run takes what every stream has queued (at most
`COMMIT_BATCH` chunks per stream) and commits it in one transaction — one
fsync for all — then publishes each stream and resolves its writers'
futures: acknowledged = durable = visible. While a commit is in flight
whatever arrives queues for the next one, so a lone write commits at once
and a flood costs one commit per round, not one per chunk or per stream.

Commits run on one dedicated thread per process: they never queue behind
other blocking work handed to the default executor, and stay in order. It
is a daemon thread that lives as long as the process, so a recycled
RunActor does not count it as something its last run left running.
A batch submitted at once (a pipe's batch, a remote writer's call) is one
entry with one future, however many chunks it holds.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rayflow._runtime import hops
from rayflow.errors import StreamTooLarge
from rayflow.store import Store
from rayflow.store.base import AppendResult, ChunkWrite

if TYPE_CHECKING:
    from rayflow._runtime.stream_buffer import StreamBuffer

#: most chunks of one stream in one group commit: a flood becomes visible
#: in steps, not all at once after one huge transaction
COMMIT_BATCH = 2048


class Entry:
    """Writes submitted together; `single` resolves to one index, else a list."""

    __slots__ = ("writes", "future", "single")

    def __init__(self, writes: list[ChunkWrite], future: asyncio.Future[Any], single: bool) -> None:
        self.writes, self.future, self.single = writes, future, single

    def settle(self, seqs: list[int | None]) -> None:
        if not self.future.done():
            self.future.set_result(seqs[0] if self.single else seqs)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class _CommitThread:
    """One daemon thread running blocking calls in order; results come back
    to the caller's event loop."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._work, name="rayflow-commit", daemon=True).start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        return future

    def _work(self) -> None:
        while True:
            fn, args, loop, future = self._jobs.get()
            try:
                result = fn(*args)
            except BaseException as e:
                loop.call_soon_threadsafe(_settle, future, None, e)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_thread: _CommitThread | None = None
_thread_lock = threading.Lock()


def commit_thread() -> _CommitThread:
    """The process's commit thread (started on first use)."""
    global _thread
    with _thread_lock:
        if _thread is None:
            _thread = _CommitThread()
        return _thread


class RunCommitter:
    def __init__(self, store: Store, max_bytes: int) -> None:
        self.store, self.max_bytes = store, max_bytes
        self._dirty: dict[int, StreamBuffer] = {}
        self._task: asyncio.Task[None] | None = None

    def wake(self, buf: StreamBuffer) -> None:
        """`buf` has queued entries: commit them in the next round."""
        self._dirty[id(buf)] = buf
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await commit_thread().run(fn, *args)

    async def _loop(self) -> None:
        while self._dirty:
            bufs, self._dirty = list(self._dirty.values()), {}
            taken = [(buf, buf.take(COMMIT_BATCH)) for buf in bufs]
            for buf in bufs:
                if buf.has_pending:
                    self._dirty[id(buf)] = buf
            try:
                results: list[AppendResult] = await self._run(self._append, taken)
            except StreamTooLarge:
                # one of them is too large: commit entry by entry, fail only those
                for buf, entries in taken:
                    await self._one_by_one(buf, entries)
                continue
            except BaseException as e:  # the Store failed: every writer must hear it
                for _, entries in taken:
                    for entry in entries:
                        entry.fail(e)
                if not isinstance(e, Exception):
                    raise
                continue
            for (buf, entries), result in zip(taken, results, strict=True):
                await buf.settle(entries, result)

    async def _one_by_one(self, buf: StreamBuffer, entries: list[Entry]) -> None:
        for entry in entries:
            try:
                (result,) = await self._run(self._append, [(buf, [entry])])
            except Exception as e:  # StreamTooLarge: only this entry fails
                entry.fail(e)
            else:
                await buf.settle([entry], result)

    def _append(self, taken: list[tuple[StreamBuffer, list[Entry]]]) -> list[AppendResult]:
        items = [(b.run_id, b.key, [w for e in entries for w in e.writes]) for b, entries in taken]
        if not hops.enabled():
            return self.store.append_chunks_many(items, self.max_bytes)
        ids = [hops.write_id(w.writer_id, w.writer_seq) for _, _, ws in items for w in ws]
        hops.mark("commit_start", ids)
        results = self.store.append_chunks_many(items, self.max_bytes)
        hops.mark("committed", ids)
        return results
