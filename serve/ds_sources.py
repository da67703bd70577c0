"""What a Durable Streams read reads: a named stream (`NamedSource`, the
Store's streams owned by no run) or a run's output stream in JSON mode
(`RunSource`, read-only; the run's end closes it).

Both answer `look()` (the stream's state, None when it does not exist),
`read(start)` (what is there from a position, at once) and `wait(start,
timeout)` (the same, waiting up to `timeout` for something new when there
is nothing yet). A read always shows the stream's state as of the read, so
`Stream-Up-To-Date` and `Stream-Closed` are never ahead of the data.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from rayflow._runtime.serving import current, feed_key, named_signals, signals
from rayflow.store.named import NamedStreamInfo
from serve import run_feed
from serve.fanout import HubSource

#: rows per response at most, and about this many bytes
READ_ROWS = 1000
READ_BYTES = 1024 * 1024


@dataclass
class Tail:
    """A stream's state as of one read."""

    length: int
    closed: bool
    content_type: str
    #: an id of this incarnation of the stream (ETags)
    stream_id: str
    info: NamedStreamInfo | None = None  # named streams: TTL, expiry, tombstone

    @property
    def json(self) -> bool:
        return self.content_type.split(";", 1)[0].strip().lower() == "application/json"

    @property
    def gone(self) -> bool:
        return self.info is not None and self.info.deleted


@dataclass
class Slice:
    """Data from `start` to `end` (JSON messages, or byte pieces)."""

    start: int
    end: int
    tail: Tail
    chunks: list[bytes] = field(default_factory=list)

    @property
    def at_tail(self) -> bool:
        return self.end >= self.tail.length


class NamedSource:
    def __init__(self, path: str) -> None:
        self.path = path

    def _tail(self, info: NamedStreamInfo) -> Tail:
        return Tail(info.length, info.closed, info.content_type, info.stream_id, info)

    async def look(self) -> Tail | None:
        info = await asyncio.to_thread(current().store.named_info, self.path)
        return None if info is None else self._tail(info)

    async def read(self, start: int) -> Slice | None:
        read = await asyncio.to_thread(
            current().store.named_read, self.path, start, READ_ROWS, READ_BYTES
        )
        if read.stream is None:
            return None
        tail = self._tail(read.stream)
        end = read.end if read.end is not None else max(start, 0)
        return Slice(start, end, tail, [c.data for c in read.chunks])

    async def wait(self, start: int, timeout_s: float) -> Slice | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        feed = run_feed.feed()
        while True:
            # both taken before the read: a commit after it wakes the wait
            event = signals().event(self.path)
            since = await feed.changes()
            got = await self.read(start)
            left = deadline - loop.time()
            if got is None or got.chunks or got.tail.closed or got.tail.gone or left <= 0:
                return got
            info = got.tail.info
            if info is not None and named_signals.unleased(info.followed_until):
                # commits in other processes tell this one from now on; read again
                await named_signals.follow(current().store, self.path)
                continue
            left = named_signals.wait_s(left)
            waits = [
                asyncio.ensure_future(event.wait()),
                asyncio.ensure_future(feed.wait_for(since, {feed_key(self.path)}, left)),
            ]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                await asyncio.wait(waits)  # never raises what the waits raised


class RunSource:
    """A run's output stream `key`, its chunks (JSON text) as messages."""

    def __init__(self, run_id: str, key: str) -> None:
        self.run_id, self.key = run_id, key
        self._hub: HubSource | None = None

    async def look(self) -> Tail | None:
        return await asyncio.to_thread(self._look_sync)

    async def read(self, start: int) -> Slice | None:
        store = current().store

        def read() -> Slice | None:
            tail = self._look_sync()
            if tail is None:
                return None
            chunks = store.read_chunks(self.run_id, self.key, start, READ_ROWS)
            chunks = [c for c in chunks if c.seq < tail.length]  # not past the state read
            end = chunks[-1].seq + 1 if chunks else start
            return Slice(start, end, tail, [c.data.encode() for c in chunks])

        return await asyncio.to_thread(read)

    def _look_sync(self) -> Tail | None:
        store = current().store
        run = store.get_run(self.run_id)
        if run is None:
            return None
        # the stream's row after the run's: a run that finished has closed it
        info = store.stream_info(self.run_id, self.key)
        length = info.length if info else 0
        closed = run.finished or bool(info and info.closed)
        return Tail(length, closed, "application/json", f"{self.run_id}/{self.key}")

    async def wait(self, start: int, timeout_s: float) -> Slice | None:
        """Live: follows the run's RunActor through the replica's hub (one
        upstream reader per stream and replica), the Store behind it."""
        got = await self.read(start)
        if got is None or got.chunks or got.tail.closed:
            return got
        if self._hub is None or self._hub.position != start:
            await self.aclose()
            self._hub = HubSource(self.run_id, self.key, start)
        batch = await self._hub.next_batch(timeout_s)
        if batch.records:
            return await self.read(start)  # the Store has them: acknowledged = durable
        tail = await self.look()
        if tail is None:
            return None
        if batch.closed:
            tail.closed = True
        return Slice(start, start, tail)

    async def aclose(self) -> None:
        if self._hub is not None:
            hub, self._hub = self._hub, None
            await hub.aclose()
