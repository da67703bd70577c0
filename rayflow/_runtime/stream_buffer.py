"""A RunActor's output streams: group commit, in-memory tail, sealed segments.

Writes queue per stream; the event loop's one committer (`stream_commit`)
takes what every stream of every run on it has queued and commits it to
the Store in one transaction (group commit), so a burst of writes, to one
stream or many, of one run or many, costs one commit. Only then are the
chunks visible to readers and the writers' futures resolved: acknowledged
= durable = visible.

Memory stays bounded however long a stream grows: the newest `tail_chunks`
chunks stay in the actor's heap; full batches are sealed into the Ray object
store with `ray.put` (Ray spills them to disk under pressure) and only the
newest `object_store_segments` of those are remembered. Anything older is
read from the Store by an index seek. A segment is put as one pickled blob
(Ray's own serialisation walks a list of tuples item by item).
"""

from __future__ import annotations

import asyncio
import pickle
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from rayflow._runtime import hops
from rayflow._runtime.stream_commit import Entry, StreamCommitter, loop_committer
from rayflow._runtime.stream_refusals import closed_error, refusal_error
from rayflow._runtime.stream_rows import ReadReply, Row, fill_holes
from rayflow.store import Store
from rayflow.store.base import AppendResult, ChunkWrite, Refused, StreamInfo, now_ms


class StreamBuffer:
    def __init__(
        self,
        run_id: str,
        key: str,
        store: Store,
        *,
        length: int,
        tail_chunks: int,
        segments: int,
        max_bytes: int,
        committer: StreamCommitter | None = None,
    ) -> None:
        self.run_id, self.key, self.store = run_id, key, store
        #: the event loop's (`loop_committer`), found on the first write
        self._committer = committer
        self.length = length
        self.tail: list[Row] = []
        self.tail_start = length
        self.segments: deque[tuple[int, int, Any]] = deque(maxlen=segments)
        self.tail_chunks, self.max_bytes = tail_chunks, max_bytes
        self.closed = False
        self._pending: list[Entry] = []
        self._pending_chunks = 0
        #: entries ever queued / landed (committed, failed or refused after
        #: queueing): a drain waits for the landed count to reach the queued
        #: count at its call; `_landing` is set at each landing
        self._queued_count = self._landed_count = 0
        self._landing: asyncio.Event | None = None
        #: the stream's length and closed flag being read from the Store (a
        #: thread hop, never on the loop); writes queue meanwhile
        self._loading: asyncio.Task[None] | None = None
        self.load_error: BaseException | None = None
        #: writes to a closed stream being told apart: replayed or new
        self._checks: set[asyncio.Task[None]] = set()
        #: merges into the tail, one at a time (a gap read awaits the Store)
        self._merging = asyncio.Lock()
        #: called whenever readers may find something new (StreamBuffers'
        #: `activity`, what a RunActor's multiplexed long poll waits on)
        self.on_change: Callable[[], None] | None = None

    def load(self, info: Callable[[], Awaitable[StreamInfo | None]]) -> None:
        """Start taking length and closed from the Store (`info` reads them)."""
        self._loading = asyncio.get_running_loop().create_task(self._load(info))

    async def _load(self, info: Callable[[], Awaitable[StreamInfo | None]]) -> None:
        try:
            found = await info()
        except Exception as e:  # StreamBuffers.get starts over with a new buffer
            self.load_error = e
            self._fail_pending(e)
            return
        if found is not None:
            self.length = self.tail_start = found.length
            self.closed = self.closed or found.closed
        if self.closed:
            pending, self._pending, self._pending_chunks = self._pending, [], 0
            self._land(pending)
            for entry in pending:
                self._refuse(entry)
        elif self._pending:
            self.committer.wake(self)

    @property
    def committer(self) -> StreamCommitter:
        if self._committer is None:
            self._committer = loop_committer(self.store, self.max_bytes)
        return self._committer

    def _refuse(self, entry: Entry) -> None:
        """A closed stream takes no new chunk — but a revived run's replay
        re-sends the chunks it wrote before the close (same writer ids and
        numbers): those are duplicates, acknowledged as such, not errors."""

        async def check() -> None:
            try:
                seen = await asyncio.to_thread(self.store.writer_positions, self.run_id)
            except Exception as e:
                entry.fail(e)
                return
            if all(
                w.writer_id is not None
                and w.writer_seq is not None
                and w.writer_seq <= seen.get((self.key, w.writer_id), -1)
                for w in entry.writes
            ):
                entry.settle([None] * len(entry.writes))
            else:
                entry.fail(closed_error(self.run_id, self.key))

        task = asyncio.get_running_loop().create_task(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending, self._pending_chunks = self._pending, [], 0
        self.fail_taken(pending, error)

    def fail_pending(self, error: BaseException) -> None:
        """Every queued write fails with `error` (its committer stopped)."""
        self._fail_pending(error)

    def fail_taken(self, entries: list[Entry], error: BaseException) -> None:
        """Entries taken for a commit that failed with `error`."""
        for entry in entries:
            entry.fail(error)
        self._land(entries)

    def refused(self, entries: list[Entry], refused: Refused) -> None:
        """The Store refused the entries' commit: the stream was closed (the
        run's end closes it in the same transaction), so nothing was stored.
        An entry whose writes were all stored before (a replay) is
        acknowledged as duplicates; the others fail. The stream takes no
        more writes here either."""
        self.closed = True
        error = refusal_error(self.run_id, self.key, refused)
        duplicates = refused.duplicates or []
        at = 0
        for entry in entries:
            n = len(entry.writes)
            if n and all(duplicates[at : at + n]):
                entry.settle([None] * n)
            else:
                entry.fail(error)
            at += n
        self._land(entries)
        self._notify()

    def _land(self, entries: list[Entry]) -> None:
        fresh = 0
        for entry in entries:
            if not entry.landed:
                entry.landed = True
                fresh += 1
        if fresh:
            self._landed_count += fresh
            if self._landing is not None:
                self._landing.set()
                self._landing = None

    async def ready(self) -> None:
        """Length and closed are known (raises what reading them raised)."""
        if self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)
        if self.load_error is not None:
            raise self.load_error

    @property
    def loaded(self) -> bool:
        return self._loading is None or self._loading.done()

    # -- writing ---------------------------------------------------------------
    def submit(self, write: ChunkWrite) -> asyncio.Future[int | None]:
        """Queue a write for the next group commit; the future gives its index
        once durable (None when it was a duplicate)."""
        return self._queue([write], True)

    def submit_batch(self, writes: list[ChunkWrite]) -> asyncio.Future[list[int | None]]:
        """Queue writes as one entry (one future, committed together)."""
        return self._queue(writes, False)

    def _queue(self, writes: list[ChunkWrite], single: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed:
            self._refuse(Entry(writes, future, single))
            return future
        if self.load_error is not None:
            future.set_exception(self.load_error)
            return future
        self._pending.append(Entry(writes, future, single))
        self._pending_chunks += len(writes)
        self._queued_count += 1
        if self.loaded:
            self.committer.wake(self)
        return future

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def take(self, limit: int) -> list[Entry]:
        """Whole entries from the front, up to `limit` chunks (at least one entry)."""
        if self._pending_chunks <= limit:
            taken, self._pending, self._pending_chunks = self._pending, [], 0
            return taken
        count = n = 0
        while n < len(self._pending) and (n == 0 or count + len(self._pending[n].writes) <= limit):
            count += len(self._pending[n].writes)
            n += 1
        taken, self._pending = self._pending[:n], self._pending[n:]
        self._pending_chunks -= count
        return taken

    async def settle(self, entries: list[Entry], result: AppendResult) -> None:
        """The entries are committed as `result` says: publish, then acknowledge."""
        try:
            await self._publish(entries, result)
        except Exception as e:  # committed, but not visible here: the writer hears it
            for entry in entries:
                entry.fail(e)
        finally:
            self._land(entries)

    def settle_now(self, entries: list[Entry], result: AppendResult) -> bool:
        """`settle` without awaiting, in the usual case: every write is new
        and its rows continue the tail exactly (no hole to read from the
        Store, no merge in progress). False, having done nothing: await
        `settle` (a coroutine chain and a lock per stream per round)."""
        seqs = result.seqs
        if not seqs or self._merging.locked() or seqs[0] != self.length:
            return False
        last = seqs[-1]
        if last is None or last - self.length != len(seqs) - 1 or result.length != last + 1:
            return False
        if None in seqs:
            return False
        now = now_ms()
        writes = [w for e in entries for w in e.writes]
        first = self.length
        try:
            self.tail.extend((first + i, w.data, now, w.record_id) for i, w in enumerate(writes))
            self.length = result.length
            self._seal()
            self._notify()
            if hops.enabled():
                hops.mark(
                    "visible",
                    [hops.stream_id(self.run_id, self.key, first + i) for i in range(len(seqs))],
                    [hops.write_id(w.writer_id, w.writer_seq) for w in writes],
                )
        except Exception as e:  # committed, but not visible here: the writer hears it
            for entry in entries:
                entry.fail(e)
            self._land(entries)
            return True
        at = 0
        for entry in entries:
            n = len(entry.writes)
            entry.settle(seqs[at : at + n])
            at += n
        self._land(entries)
        return True

    async def _publish(self, entries: list[Entry], result: AppendResult) -> None:
        writes = [w for e in entries for w in e.writes]
        now = now_ms()
        done = [(w, seq) for w, seq in zip(writes, result.seqs, strict=True) if seq is not None]
        await self.merge([(seq, w.data, now, w.record_id) for w, seq in done], result.length)
        if hops.enabled() and done:
            hops.mark(
                "visible",
                [hops.stream_id(self.run_id, self.key, s) for _, s in done],
                [hops.write_id(w.writer_id, w.writer_seq) for w, _ in done],
            )
        at = 0
        for entry in entries:
            n = len(entry.writes)
            entry.settle(result.seqs[at : at + n])
            at += n

    async def learn(self, rows: list[Row]) -> None:
        """Rows another process committed to this stream (an outside writer,
        `RunActor.published`): into the tail, readers woken."""
        await self.ready()
        if rows:
            await self.merge(rows, rows[-1][0] + 1)
            if hops.enabled():
                hops.mark("visible", [hops.stream_id(self.run_id, self.key, r[0]) for r in rows])

    async def merge(self, rows: list[Row], length: int) -> None:
        """Committed rows (ascending seqs) into the tail, the stream now at
        least `length` long. Commits of this run and of outside writers
        interleave in the Store, so `rows` may skip seqs anywhere — before
        its first row, or between rows (an outside writer tells the rows of
        several commits at once, another writer's commits between them):
        rows the tail already holds are skipped and every hole is read from
        the Store, so the tail stays gapless and in order (readers take it by
        offset; a row exposed past a hole would make them skip the hole for
        good) — also when every write of a commit was a duplicate (the
        length must never run ahead of the rows the tail holds)."""
        async with self._merging:
            rows = [r for r in rows if r[0] >= self.length]
            end = max(length, rows[-1][0] + 1 if rows else 0)
            if end <= self.length:
                return
            if len(rows) != end - self.length:  # holes: before, between or after the rows
                rows = await fill_holes(self.store, self.run_id, self.key, rows, self.length, end)
            if rows:
                self.tail.extend(rows)
                self.length = rows[-1][0] + 1
                self._seal()
                self._notify()

    def _seal(self) -> None:
        while len(self.tail) >= 2 * self.tail_chunks:
            sealed = self.tail[: self.tail_chunks]
            self.tail = self.tail[self.tail_chunks :]
            start = sealed[0][0]
            blob = pickle.dumps(sealed, protocol=pickle.HIGHEST_PROTOCOL)
            self.segments.append((start, start + len(sealed), ray.put(blob)))
            self.tail_start = self.tail[0][0]

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def drain(self) -> None:
        """Wait until everything submitted to this stream so far is committed
        (or has failed): only this stream's writes, whatever other streams
        and runs sharing the committer keep writing."""
        await self.ready()
        target = self._queued_count
        while self._landed_count < target:
            if self._landing is None:
                self._landing = asyncio.Event()
            await self._landing.wait()

    def close(self) -> None:
        self.closed = True
        self._notify()

    # -- reading ---------------------------------------------------------------
    async def peek(self, start: int, limit: int) -> ReadReply | None:
        """What a reader at `start` gets now, or None while there is nothing
        new for it (it waits for `StreamBuffers.activity`)."""
        await self.ready()
        return self.peek_now(start, limit)

    def peek_now(self, start: int, limit: int) -> ReadReply | None:
        """`peek` once the buffer is `loaded`."""
        if start >= self.length and not self.closed:
            return None  # the usual answer: nothing new yet
        reply = self._serve(start, limit)
        if reply.rows or reply.ref is not None or reply.from_store or reply.closed:
            return reply
        return None

    def _serve(self, start: int, limit: int) -> ReadReply:
        reply = ReadReply(rows=[], length=self.length, closed=self.closed)
        if start >= self.length:
            return reply
        if start >= self.tail_start:
            offset = start - self.tail_start
            reply.rows = self.tail[offset : offset + limit]
            return reply
        for seg_start, seg_end, ref in self.segments:
            if seg_start <= start < seg_end:
                reply.ref, reply.ref_start = ref, seg_start
                return reply
        reply.from_store = True
        return reply
