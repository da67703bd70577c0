"""Group commit for the output streams of every run of a process: one Store
transaction for all of them.

Every write to any stream of a run queues at its `StreamBuffer`; one
`StreamCommitter` per event loop — a RunActor's, however many runs it
executes — takes what every stream of every run has queued (at most
`COMMIT_BATCH` chunks per stream, `ROUND_CHUNKS` in all) and commits it in
one transaction — one fsync for all — then publishes each stream and
resolves its writers' futures: acknowledged = durable = visible. While a
commit is in flight whatever arrives queues for the next one, so a lone
write commits at once and a flood costs one commit per round, not one per
chunk, per stream or per run: 1,000 runs streaming 10 tokens a second on
one actor are ~10,000 writes a second in a few hundred transactions.

A write that would take its stream past `max_bytes` fails alone
(`StreamTooLarge`, nothing of it stored): its stream leaves the round, the
others commit together, and its entries are committed one by one. A Store
failure fails every write of the round. A closed stream refuses before
queueing (`StreamBuffer`), and the Store refuses a commit to a stream closed
meanwhile (`append_chunks_own`): a run's end closes its streams in the same
transaction, so a canceled run's last writes are refused, never committed
after its end.

Commits run on one dedicated thread per process: they never queue behind
other blocking work handed to the default executor, and stay in order. It
is a daemon thread that lives as long as the process, so a recycled
RunActor does not count it as something its last run left running. It is
one Store connection however many runs write: PostgreSQL connections grow
with processes, not runs. A batch submitted at once (a pipe's batch, a
remote writer's call) is one entry with one future, however many chunks it
holds.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rayflow._runtime import hops
from rayflow._runtime.calls import PerProcess, shared_task
from rayflow.errors import StreamTooLarge
from rayflow.store import Store
from rayflow.store.base import AppendResult, ChunkWrite, Refused

if TYPE_CHECKING:
    from rayflow._runtime.stream_buffer import StreamBuffer

#: the GIL switch interval of a process that commits beside a busy event
#: loop (RunActors). The commit thread gives the GIL up at every SQL call and
#: then waits for the loop to hand it back, by default after up to 5 ms —
#: while it holds the Store's write lock: measured with 1,000 runs streaming
#: on 2 actors, a round took 35 ms for 9 ms of CPU; at 0.5 ms, ~12 ms; at
#: 0.2 ms, with the GC's pauses gone too (`run_actor.GC_YOUNG_OBJECTS`),
#: append -> reader p99 41-48 ms where 0.5 ms gave 57-63 (one sitting)
SWITCH_INTERVAL_S = 0.0002
#: most chunks of one stream in one group commit: a flood becomes visible
#: in steps, not all at once after one huge transaction
COMMIT_BATCH = 2048
#: most chunks of all streams in one group commit (streams left out of a
#: full round go first in the next)
ROUND_CHUNKS = 10_000


class Entry:
    """Writes submitted together; `single` resolves to one index, else a list."""

    __slots__ = ("writes", "future", "single", "landed")

    def __init__(self, writes: list[ChunkWrite], future: asyncio.Future[Any], single: bool) -> None:
        self.writes, self.future, self.single = writes, future, single
        #: its committer is done with it (settled or failed): what a drain counts
        self.landed = False

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


#: the process's commit thread (started on first use)
commit_thread = PerProcess(_CommitThread)


#: one committer per event loop, per (Store, size limit)
_by_loop: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, int], StreamCommitter]
] = weakref.WeakKeyDictionary()


def loop_committer(store: Store, max_bytes: int) -> StreamCommitter:
    """The committer of the running event loop for `store`."""
    loop = asyncio.get_running_loop()
    committers = _by_loop.get(loop)
    if committers is None:
        committers = _by_loop[loop] = {}
    key = (id(store), max_bytes)
    committer = committers.get(key)
    if committer is None:
        committer = committers[key] = StreamCommitter(store, max_bytes)
    return committer


#: one round: each stream's entries taken for it
Round = list[tuple["StreamBuffer", list[Entry]]]


class StreamCommitter:
    """Group commit of every stream of every run on one event loop."""

    def __init__(self, store: Store, max_bytes: int) -> None:
        self.store, self.max_bytes = store, max_bytes
        self._dirty: dict[int, StreamBuffer] = {}
        self._task: asyncio.Task[None] | None = None
        #: transactions committed (each holds one round, or part of one)
        self.commits = 0

    def wake(self, buf: StreamBuffer) -> None:
        """`buf` has queued entries: commit them in the next round."""
        self._dirty[id(buf)] = buf
        if self._task is None or self._task.done():
            # in no run's context: it commits for every run of the loop
            self._task = shared_task(self._loop())

    def _take(self) -> Round:
        """Whole entries of every dirty stream, up to `ROUND_CHUNKS` chunks;
        streams left out, then those with more queued, are dirty again."""
        dirty, self._dirty = self._dirty, {}
        taken: Round = []
        left: dict[int, StreamBuffer] = {}
        more: dict[int, StreamBuffer] = {}
        count = 0
        for key, buf in dirty.items():
            if count >= ROUND_CHUNKS:
                left[key] = buf
                continue
            entries = buf.take(min(COMMIT_BATCH, ROUND_CHUNKS - count))
            if entries:
                taken.append((buf, entries))
                count += sum(len(e.writes) for e in entries)
            if buf.has_pending:
                more[key] = buf
        self._dirty = {**left, **more, **self._dirty}
        return taken

    async def _loop(self) -> None:
        taken: Round = []
        try:
            while self._dirty:
                taken = self._take()
                await self._commit(taken)
                taken = []
        except BaseException as e:  # cancelled as the loop closes: no writer may hang
            for buf, entries in taken:
                buf.fail_taken(entries, e)
            dirty, self._dirty = self._dirty, {}
            for buf in dirty.values():
                buf.fail_pending(e)
            raise

    async def _commit(self, taken: Round) -> None:
        while taken:
            try:
                results: list[AppendResult | Refused] = await commit_thread().run(
                    self._append, taken
                )
            except StreamTooLarge as e:
                # that stream alone, entry by entry; the rest together again
                bad = [
                    (buf, entries)
                    for buf, entries in taken
                    if (buf.run_id, buf.key) == (e.run_id, e.stream)
                ] or taken
                taken = [t for t in taken if all(t[0] is not b for b, _ in bad)]
                for buf, entries in bad:
                    await self._one_by_one(buf, entries)
                continue
            except Exception as e:  # the Store failed: every writer must hear it
                for buf, entries in taken:
                    buf.fail_taken(entries, e)
                return
            for (buf, entries), result in zip(taken, results, strict=True):
                if isinstance(result, Refused):
                    buf.refused(entries, result)
                elif not buf.settle_now(entries, result):
                    await buf.settle(entries, result)
            return

    async def _one_by_one(self, buf: StreamBuffer, entries: list[Entry]) -> None:
        for entry in entries:
            try:
                (result,) = await commit_thread().run(self._append, [(buf, [entry])])
            except Exception as e:  # StreamTooLarge: only this entry fails
                buf.fail_taken([entry], e)
            else:
                if isinstance(result, Refused):
                    buf.refused([entry], result)
                else:
                    await buf.settle([entry], result)

    def _append(self, taken: Round) -> list[AppendResult | Refused]:
        items = [(b.run_id, b.key, [w for e in entries for w in e.writes]) for b, entries in taken]
        if not hops.enabled():
            results = self.store.append_chunks_own(items, self.max_bytes)
            self.commits += 1
            return results
        ids = [hops.write_id(w.writer_id, w.writer_seq) for _, _, ws in items for w in ws]
        hops.mark("commit_start", ids)
        results = self.store.append_chunks_own(items, self.max_bytes)
        self.commits += 1
        hops.mark("committed", ids)
        return results
