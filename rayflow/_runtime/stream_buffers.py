"""All output streams of one run on its RunActor (`StreamBuffers`): each
stream's `StreamBuffer` created on first use, and the run's `activity`
event that the actor's long polls (`follows`) wait on."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from rayflow._runtime import run_batches
from rayflow._runtime.stream_buffer import StreamBuffer
from rayflow.store import Store
from rayflow.store.base import StreamInfo


class StreamBuffers:
    """All output streams of one run, created on first use."""

    def __init__(
        self,
        run_id: str,
        store: Store,
        settings: Any,
        known: dict[str, StreamInfo] | None = None,
    ) -> None:
        self.run_id, self.store, self.settings = run_id, store, settings
        self.streams: dict[str, StreamBuffer] = {}
        #: the run's streams in the Store when it was claimed (read with the
        #: claim, `run_batches.Start`): a stream opened here takes its length
        #: and closed flag from them, and a key not among them has no rows —
        #: no read, no thread hop before a new run's first commit. None: not
        #: known, each stream reads its own. Keys in `unsure` were written
        #: from outside after the claim, before the run executed here: read.
        self.known = known
        self.unsure: set[str] = set()
        self.closed = False
        #: set (and replaced) whenever any stream of the run has something
        #: new for readers, a stream gets its buffer, the run ends or leaves:
        #: what a RunActor's multiplexed long poll waits on
        self.activity = asyncio.Event()
        #: called with the run id at every `activity` (a RunActor's
        #: `follow_many` watching many runs: it looks again at this run only)
        self.watchers: set[Callable[[str], None]] = set()

    def _wake(self) -> None:
        self.activity.set()
        self.activity = asyncio.Event()
        for watcher in tuple(self.watchers):
            watcher(self.run_id)

    def poke(self) -> None:
        """Wake every long poll waiting on `activity` to look again, though
        nothing need have changed (a poll was kicked or reached its deadline)."""
        self._wake()

    async def find(self, key: str) -> StreamBuffer | None:
        """The buffer of stream `key` when the stream exists (this run wrote
        it, or it is in the Store); None for a key nobody wrote, so that a
        reader naming any key it likes allocates nothing here."""
        buf = self.streams.get(key)
        if buf is None:
            if self.known is not None and key not in self.unsure:
                info = self.known.get(key)
            else:
                info = await run_batches.stream_info(self.store, self.run_id, key)
            if info is not None:
                buf = self.get(key)
        return buf

    def forget(self, keys: set[str]) -> None:
        """Streams written from outside since the claim (`known` may not
        have them): their buffers read the Store."""
        self.unsure |= keys

    def get(self, key: str) -> StreamBuffer:
        """The buffer of stream `key`, created on first use; its length and
        closed flag are `known`'s, or arrive from the Store in a thread
        (`StreamBuffer.ready`)."""
        buf = self.streams.get(key)
        if buf is None or buf.load_error is not None:
            known = self.known is not None and key not in self.unsure
            info = self.known.get(key) if self.known is not None and known else None
            buf = StreamBuffer(
                self.run_id,
                key,
                self.store,
                length=info.length if info is not None else 0,
                tail_chunks=self.settings.tail_chunks,
                segments=self.settings.object_store_segments,
                max_bytes=self.settings.max_stream_bytes,
            )
            buf.closed = self.closed or (info is not None and info.closed)
            buf.on_change = self._wake
            if not known:
                # one read with the streams of the other runs starting now
                buf.load(functools.partial(run_batches.stream_info, self.store, self.run_id, key))
            self.streams[key] = buf
            self._wake()
        return buf

    async def drain(self) -> None:
        for buf in list(self.streams.values()):
            await buf.drain()

    def release(self) -> None:
        """The run left this actor: wake every long poll, so that its reader
        asks again and is sent to the Store (or the run's next actor)."""
        for buf in self.streams.values():
            buf._notify()
        self._wake()

    def close_all(self) -> None:
        self.closed = True
        for buf in self.streams.values():
            buf.close()
        self._wake()
