"""The runtime's one door for the HTTP app: serve/ imports what it uses of
`rayflow._runtime` from here and from nowhere else (tests/test_layout.py
holds it to that), so what the app depends on is this module's `__all__`.

Beyond the re-exports (the connection, the chunk reader, the run change
feed and the named streams' signals and group commit, control-plane start, direct
ingress, durations, hop tracing, tasks
that outlive the request that made them, a run location asked ahead, the
session entry points of `session_io` / `session_runs`), two
entry points the public API lacks: writes with a writer id and per-writer
sequence numbers (the SDK's v1 NDJSON writer resends chunks after a
reconnect; they must be stored once), and the writer's last stored
position for its `HEAD` probe.

Concurrent requests to one (run, stream) in a replica share one
`StreamAppender`, and every stream of every run shares the replica's
`ProcessAppender` (`run_appender`): the replica commits HTTP appends to the
Store itself, and whatever arrives while a commit is in flight leaves in the
next one together, so a burst of HTTP appends to any streams of any runs
costs one commit per round, not one per request or per stream, and no Ray
call before the acknowledgement (the run's RunActor is told afterwards; its
location is cached, `locations`, so no request asks the Controller).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from typing import Any

from rayflow._runtime import (
    hops,
    ingress,
    locations,
    named_appender,
    named_signals,
    run_events,
    wait_tokens,
)
from rayflow._runtime.bootstrap import start_control_plane
from rayflow._runtime.calls import shared_task
from rayflow._runtime.connection import Connection, current, secret_key_for
from rayflow._runtime.durations import parse_duration
from rayflow._runtime.named_signals import FEED_PREFIX, feed_key, signals
from rayflow._runtime.reader import ChunkReader
from rayflow._runtime.sends import keyed_message_id
from rayflow._runtime.session_follow_waits import Armed, Waiter
from rayflow._runtime.session_io import (
    CHANNEL_TTL_S,
    RecordPage,
    S2Record,
    SentRecord,
    append_control,
    append_output,
    check_channel,
    send_input,
    session_stream_path,
    trim_output,
)
from rayflow._runtime.session_reads import RecordFollower, read_records, wait_records
from rayflow._runtime.session_runs import (
    check_external_id,
    close_session,
    end_and_continue,
    get_session,
    normalize_config,
    start_session,
)
from rayflow._runtime.stream_refusals import closed_error
from rayflow._runtime.writer import StreamAppender
from rayflow.store.base import ChunkWrite

log = logging.getLogger("rayflow.serve")

#: idle appenders kept per replica before the oldest are dropped
MAX_IDLE_APPENDERS = 1_000


class _Appender:
    """The replica's way into one (run, stream): a `StreamAppender`, and one
    writer id numbering the single-chunk appends (`/append`), so they cost one
    `stream_writers` row per replica and stream, not one per request."""

    def __init__(self, run_id: str, key: str) -> None:
        self.appender = StreamAppender(run_id, key)
        self.writer_id = f"http-append:{uuid.uuid4().hex}"
        self._seq = 0

    def chunk(self, data: str, record_id: str | None) -> ChunkWrite:
        # numbered in submission order, and the appender sends (and retries)
        # its batches in that order: a retry after a lost RunActor is
        # recognised as the same write, and no later number is stored first
        write = ChunkWrite(
            data, record_id=record_id, writer_id=self.writer_id, writer_seq=self._seq
        )
        self._seq += 1
        return write


_appenders: OrderedDict[tuple[str, str], _Appender] = OrderedDict()


def _appender(run_id: str, key: str) -> _Appender:
    entry = _appenders.get((run_id, key))
    if entry is None:
        entry = _Appender(run_id, key)
        _appenders[(run_id, key)] = entry
        if len(_appenders) > MAX_IDLE_APPENDERS:
            idle = [k for k, a in _appenders.items() if a.appender.idle]
            for k in idle[: len(_appenders) // 2]:
                if _appenders[k] is not entry:
                    del _appenders[k]
    _appenders.move_to_end((run_id, key))
    return entry


async def append_writes(run_id: str, key: str, writes: list[ChunkWrite]) -> list[int | None]:
    """Append to a run's output stream from outside the run; returns the
    index of each write (None for a duplicate `(writer_id, writer_seq)`).

    Committed to the Store by this replica (with every other append queued
    meanwhile), then the run's live RunActor, if any, is told.
    Raises RunNotFound, RunFinished, StreamClosed, StreamTooLarge.
    """
    return await _appender(run_id, key).appender.append(writes)


async def append_chunk(run_id: str, key: str, data: str, record_id: str | None) -> int | None:
    """Append one chunk (JSON text) as this replica's writer of the stream;
    its index once durable. Raises like `append_writes`."""
    entry = _appender(run_id, key)
    return await entry.appender.submit(entry.chunk(data, record_id))


#: runs whose location is being asked for in the background (`prefetch_location`)
_locating: set[str] = set()


def prefetch_location(run_id: str) -> None:
    """Ask, in the background, which RunActor executes the live run `run_id`,
    unless this process knows or is asking already. An SSE reader that
    arrived before its stream exists calls it while it waits: when the
    stream appears its hub's reader finds the answer cached instead of
    asking the Controller then (~7 ms on the first chunk's path under a
    writer flood, measured). A run that is not live any more answers
    nothing; the reader looks for itself."""
    if run_id in _locating or locations.cached(run_id) is not None:
        return

    async def ask() -> None:
        try:
            await locations.locate(run_id)
        except Exception as e:  # the reader locates for itself and hears it
            log.debug("prefetching the location of %s: %s", run_id, e)
        finally:
            _locating.discard(run_id)

    _locating.add(run_id)
    shared_task(ask())


async def writer_position(run_id: str, key: str, writer_id: str) -> int:
    """The last `writer_seq` stored for `writer_id` on the stream, -1 if none."""
    conn = current()
    positions: dict[Any, int] = await asyncio.to_thread(conn.store.writer_positions, run_id)
    return positions.get((key, writer_id), -1)


__all__ = [
    "Armed",
    "CHANNEL_TTL_S",
    "FEED_PREFIX",
    "RecordFollower",
    "RecordPage",
    "S2Record",
    "SentRecord",
    "append_control",
    "trim_output",
    "append_output",
    "check_channel",
    "check_external_id",
    "close_session",
    "end_and_continue",
    "get_session",
    "normalize_config",
    "read_records",
    "send_input",
    "session_stream_path",
    "start_session",
    "wait_records",
    "Waiter",
    "ChunkReader",
    "Connection",
    "append_writes",
    "closed_error",
    "current",
    "feed_key",
    "hops",
    "ingress",
    "keyed_message_id",
    "named_appender",
    "named_signals",
    "parse_duration",
    "prefetch_location",
    "run_events",
    "secret_key_for",
    "shared_task",
    "signals",
    "start_control_plane",
    "wait_tokens",
    "writer_position",
]
