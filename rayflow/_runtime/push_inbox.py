"""Where writers outside a run push its committed rows to the process that
reads it: one process crossing after the commit, not two.

An outside writer commits to the Store itself and then tells the run's
RunActor (`run_appender`), which hands the rows to every process following
the run (`actor_polls`): writer → RunActor → reader, two Ray calls, each a
process that must be scheduled (measured: ~8 ms of a 10-stream SSE
chunk's ~10 ms on 2 busy cores, benchmarks/README.md, issue 23). A process
whose readers take pushes — a Serve replica's hubs (`ChunkReader(...,
pushed=True)`) — listens on a loopback port of its own (`Inbox`, one per
event loop) and says where in every `follow_many` call; the RunActor
answers each writer's `published` call with the inboxes following the
run, and the writer's commit thread sends its next commits' rows straight
there (`push_outbox`) as well as telling the actor.

Invariants:
- Pushed rows are a shortcut, never the only way: the RunActor is still
  told of every commit and still sends the rows, and a reader's
  subscription takes rows from either source only where they continue
  exactly from its position (`Subscription.offer`; rows it holds are
  skipped, rows after a gap — another writer's commit not seen yet — are
  left to the actor). So each reader gets every chunk once, in order,
  whichever source is first; a lost or refused push costs latency only.
- Only committed rows are pushed (acknowledged = durable = visible): the
  writer pushes after its commit returns, from the commit thread.
- Only a writer that learned the inbox through Ray (a RunActor's answer)
  can push: the first frame of a connection is the inbox's random token,
  compared in constant time; a connection that fails it, or sends a frame
  that is not what a writer sends, is closed (nothing of that frame is
  delivered). The
  inbox listens on 127.0.0.1 only; a writer on another node never pushes
  (the address names its node) and keeps the RunActor path.
- Frames are JSON (never pickle): `[[run id, key, [[seq, data, created_at,
  record id], ...]], ...]`, 4-byte big-endian length first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import struct
import weakref
from collections.abc import Callable
from typing import Any

import ray

from rayflow._runtime.calls import shared_task
from rayflow._runtime.stream_rows import Row

log = logging.getLogger("rayflow")

#: where a writer pushes: (node id, port, token)
Address = tuple[str, int, str]

#: largest frame accepted (a commit is at most `run_appender.MAX_BATCH`
#: writes; each chunk is at most the Store's chunk limit)
MAX_FRAME = 64 << 20
HEADER = struct.Struct(">I")
TOKEN_BYTES = 16

#: rows pushed to this process's inboxes that a subscription took (tests count them)
taken = 0


class Inbox:
    """One event loop's loopback listener; `deliver` hands each pushed
    stream's rows to that loop's subscriptions."""

    def __init__(self, deliver: Callable[[str, str, list[Row]], int]) -> None:
        self._deliver = deliver
        self.token = secrets.token_hex(TOKEN_BYTES)
        self.address: Address | None = None
        self._server: asyncio.Server | None = None
        self._started: asyncio.Task[None] | None = None

    async def start(self) -> Address | None:
        """Listen (once); the address to give the RunActors, None when this
        process cannot take pushes (no Ray node id, no port)."""
        if self._started is None:
            self._started = shared_task(self._listen())
        await asyncio.shield(self._started)
        return self.address

    async def _listen(self) -> None:
        try:
            node_id = ray.get_runtime_context().get_node_id()
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        except Exception as e:  # the actor path is enough
            log.warning("rayflow: readers here take no pushed rows (%s)", e)
            return
        port = self._server.sockets[0].getsockname()[1]
        self.address = (node_id, port, self.token)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        global taken
        try:
            token = await reader.readexactly(len(self.token))
            if not hmac.compare_digest(token, self.token.encode()):
                return
            while True:
                (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if n > MAX_FRAME:
                    return
                # the whole frame is checked before any of it is delivered
                for run_id, key, rows in check_frame(json.loads(await reader.readexactly(n))):
                    taken += self._deliver(run_id, key, rows)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the writer went away (or cut a frame short: dropped)
        except asyncio.CancelledError:
            # the loop is closing (the process exits): this connection ends
            # here. Not re-raised: Python 3.11's stream server logs a
            # cancelled handler as an unhandled error
            pass
        except (ValueError, TypeError) as e:
            log.warning("rayflow: a malformed push was dropped (%s)", e)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inbox] = weakref.WeakKeyDictionary()


def inbox(deliver: Callable[[str, str, list[Row]], int]) -> Inbox:
    """The running loop's inbox (made on first use; `deliver` is its loop's)."""
    loop = asyncio.get_running_loop()
    found = _inboxes.get(loop)
    if found is None:
        found = _inboxes[loop] = Inbox(deliver)
    return found


def address() -> Address | None:
    """The running loop's inbox address, if it listens."""
    found = _inboxes.get(asyncio.get_running_loop())
    return found.address if found is not None else None


def check_frame(frame: Any) -> list[tuple[str, str, list[Row]]]:
    """A pushed frame as (run id, key, rows) whose rows a reader takes, or ValueError."""
    if not isinstance(frame, list):
        raise ValueError("a frame is a list")
    out = []
    for run_id, key, rows in frame:
        if not (isinstance(run_id, str) and isinstance(key, str) and isinstance(rows, list)):
            raise ValueError(f"not a stream's rows: {run_id!r}, {key!r}")
        if rows:
            out.append((run_id, key, [_check_row(r) for r in rows]))
    return out


def _check_row(row: Any) -> Row:
    seq, data, created_at, record_id = row
    if not (
        isinstance(seq, int)
        and isinstance(data, str)
        and isinstance(created_at, int)
        and (record_id is None or isinstance(record_id, str))
    ):
        raise ValueError(f"not a row: {row!r}")
    return (seq, data, created_at, record_id)
