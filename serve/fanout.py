"""One upstream subscription per replica and stream, fanned out to its clients.

A Ray call costs the same for one chunk or a thousand (docs/scaling.md), so N
browsers reading one live stream must not mean N long polls of its
RunActor. Each replica keeps one `StreamHub` per (run, key) being read: one
runtime `ChunkReader` follows the live tail and keeps the newest records in
a bounded window; every client reads from that window. A client that is
behind the window (it asked for old history, or was too slow) reads the
Store by index until it catches up — every acknowledged chunk is there
(acknowledged = durable = visible) — so each client gets every chunk once,
in order, whatever its position. A hub starts where its first client is,
but never past the stream's end: a client that claims to have seen chunks
nobody wrote yet (a far-future `Last-Event-ID`) waits for them without
stalling the hub every other client of the stream reads from. The window
is bounded in records and in bytes (WINDOW, WINDOW_BYTES; trimmed when
either is exceeded twice over).

A client naming a stream that does not exist (yet) of a run that executes
gets its hub at once: the hub's reader follows the key at the run's RunActor
(which allocates nothing for a key nobody wrote), so the stream's first
commit comes to it like every later one — the RunActor's reply to the
outside writer's first `published` call names this replica, and the writer
pushes its next commits here itself — not through the change feed and a
Store look after it. For a run that does not execute (queued, suspended) it
gets no hub: it waits on the replica's run change feed (serve/run_feed.py;
the Store reports a new stream of a run, a closed one and every status
change) until the stream exists, the run executes or the run has finished
(and looks again every RECHECK_S, should a notification be lost). Made-up
keys of such runs cost no reader and one Store look per RECHECK_S; of a
live run, a reader like any stream's, and nothing on the RunActor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rayflow._runtime.serving import (
    ChunkReader,
    current,
    hops,
    shared_task,
)
from rayflow._status import RunStatus
from rayflow.errors import RunNotFound
from rayflow.store.base import StreamInfo
from serve import run_feed
from serve.sse import Batch, Record

log = logging.getLogger("rayflow.serve")

#: at most this many records in one SSE event
BATCH_LIMIT = 1000
#: records a hub keeps for its clients; older ones are read from the Store
WINDOW = 4096
#: and at most about this many bytes of chunk data (chunks may be large)
WINDOW_BYTES = 8 << 20
#: longest wait for a hub's tasks to end when its last client leaves
STOP_WAIT_S = 1.0
#: a reader of a key that does not exist yet looks at the Store at least this
#: often, so a lost change notification costs seconds, not the idle timeout
RECHECK_S = 5.0


class StreamHub:
    """The live tail of one stream in this replica, shared by its readers."""

    def __init__(self, run_id: str, key: str, start: int) -> None:
        self.run_id, self.key = run_id, key
        self.records: list[Record] = []
        #: bytes of chunk data in `records`
        self.bytes = 0
        #: seq of records[0] (== the next seq expected while records is empty)
        self.window_start = start
        self.closed = False
        self.error: BaseException | None = None
        self.clients = 0
        self._stopped = False
        self._changed = asyncio.Event()
        # outside writers push their commits here too: one crossing, not two
        pushed = current().settings.push_rows
        self._reader = ChunkReader(
            run_id, key, start, timeout_s=None, batch=BATCH_LIMIT, pushed=pushed
        )
        # in no request's context: the hub outlives the client that made it
        self._task = shared_task(self._follow())
        self._watch = shared_task(self._wake_on_changes())

    @property
    def next_seq(self) -> int:
        return self.window_start + len(self.records)

    async def _follow(self) -> None:
        try:
            async for rows in self._reader.batches():
                self.records.extend(Record(*row) for row in rows)
                self.bytes += sum(len(row[1]) for row in rows)
                if len(self.records) > 2 * WINDOW or self.bytes > 2 * WINDOW_BYTES:
                    self._trim()
                self._notify()
            self.closed = True
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every client hears it and reconnects
            log.warning("stream %r of run %s: reader failed: %s", self.key, self.run_id, e)
            self.error = e
        self._notify()

    def _trim(self) -> None:
        """Down to WINDOW records and WINDOW_BYTES (the clients behind read the Store)."""
        drop = max(0, len(self.records) - WINDOW)
        kept = self.bytes - sum(len(r.data) for r in self.records[:drop])
        while drop < len(self.records) and kept > WINDOW_BYTES:
            kept -= len(self.records[drop].data)
            drop += 1
        self.records = self.records[drop:]
        self.window_start += drop
        self.bytes = kept

    async def _wake_on_changes(self) -> None:
        """The run changed (revived, moved, finished): the reader looks again
        at once instead of after its idle pause (it polls slowly while the
        run has no live actor)."""
        feed = run_feed.feed()
        while not self._stopped:
            since = await feed.changes()
            if await feed.wait_for(since, {self.run_id}, 60.0):
                self._reader.wake()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def records_from(self, seq: int) -> list[Record]:
        offset = seq - self.window_start
        return self.records[offset : offset + BATCH_LIMIT]

    async def wait_changed(self, timeout_s: float) -> None:
        changed = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)

    async def stop(self) -> None:
        """Stop following the stream. Bounded: the last client's SSE body
        ends after this, so it must never wait on a task that goes on (on
        Python 3.11 `asyncio.wait_for` can swallow a cancellation that meets
        its result; the loops also stop on `_stopped`)."""
        self._stopped = True
        self._reader.stop()
        tasks = (self._task, self._watch)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_WAIT_S)


_hubs: dict[tuple[str, str], StreamHub] = {}


def _hub_for(run_id: str, key: str, start: int) -> StreamHub:
    hub = _hubs.get((run_id, key))
    if hub is None or hub.error is not None:
        hub = StreamHub(run_id, key, start)
        _hubs[(run_id, key)] = hub
    hub.clients += 1
    return hub


async def _release(hub: StreamHub) -> None:
    hub.clients -= 1
    if hub.clients <= 0:
        if _hubs.get((hub.run_id, hub.key)) is hub:
            del _hubs[(hub.run_id, hub.key)]
        await hub.stop()


class HubSource:
    """One client's position in a stream, served from its replica's hub."""

    def __init__(self, run_id: str, key: str, start: int) -> None:
        self.run_id, self.key = run_id, key
        self.position = start
        self._hub: StreamHub | None = None
        #: the stream's length when the hub was made (0: it did not exist yet)
        self._length = 0

    async def _from_store(self, until: int) -> list[Record]:
        store = current().store
        limit = min(BATCH_LIMIT, until - self.position)
        chunks = await asyncio.to_thread(
            store.read_chunks, self.run_id, self.key, self.position, limit
        )
        return [Record(c.seq, c.data, c.created_at, c.record_id) for c in chunks]

    async def _followable(self, deadline: float) -> bool | None:
        """True once the stream exists or its run executes (its hub then
        follows the key at the run's RunActor, which hands it the stream's
        first commit), False when the run finished without it, None at the
        deadline. Waits on the change feed, not the Store."""
        store = current().store
        feed = run_feed.feed()
        loop = asyncio.get_running_loop()

        def look() -> tuple[StreamInfo | None, bool, bool]:
            run = store.get_run(self.run_id)
            if run is None:
                raise RunNotFound(
                    f"run {self.run_id} does not exist", run_id=self.run_id, stream=self.key
                )
            info = store.stream_info(self.run_id, self.key)
            return info, run.finished, run.status == RunStatus.EXECUTING

        while True:
            since = await feed.changes()  # before the look: no change is missed
            info, finished, executing = await asyncio.to_thread(look)
            if info is not None:
                self._length = info.length
                return True
            if finished:
                return False
            if executing:
                self._length = 0
                return True
            left = deadline - loop.time()
            if left <= 0:
                return None
            await feed.wait_for(since, {self.run_id}, min(left, RECHECK_S))

    async def next_batch(self, timeout_s: float) -> Batch:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._hub is None:
            followable = await self._followable(deadline)
            if followable is None:
                return Batch([])
            if not followable:
                return Batch([], closed=True)
            # never past the stream's end: a far-future position must not
            # hold back the hub of the stream's other clients
            self._hub = _hub_for(self.run_id, self.key, min(self.position, self._length))
        hub = self._hub
        while True:
            if self.position < hub.window_start:
                records = await self._from_store(hub.window_start)
            else:
                records = hub.records_from(self.position)
            if records:
                self.position = records[-1].seq + 1
                if hops.enabled():  # not a string per record when tracing is off
                    hops.mark(
                        "sse_out", [hops.stream_id(self.run_id, self.key, r.seq) for r in records]
                    )
                return Batch(records)
            if hub.error is not None:
                raise hub.error
            if hub.closed and self.position >= hub.next_seq:
                return Batch([], closed=True)
            left = deadline - loop.time()
            if left <= 0:
                return Batch([])
            await hub.wait_changed(left)

    async def aclose(self) -> None:
        if self._hub is not None:
            hub, self._hub = self._hub, None
            await _release(hub)
