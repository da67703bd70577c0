"""Inbox actors: a fixed set of shards (`RAYFLOW_INBOX_SHARDS`), the way in.

Every send of one (run, input stream) goes to the same shard, picked by a
hash of both, so its messages keep their order; the set never grows with
the ids callers choose (a caller naming a million stream ids starts no
actor: the shards exist once, on first use).

A send is acknowledged only once the message is durable in the Store (the
append also checks, atomically, that the run exists and is still running).
In the same transaction a run waiting on this stream has its waitpoint
resolved and is queued; then (behind the acknowledgement) the Inbox asks the
Controller to revive it, or pokes the live RunActor. The Inbox
keeps nothing of its own: one that dies and restarts loses no acknowledged
message, and a sender's retry is recognised by its message id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections import OrderedDict
from typing import Any

import ray

from rayflow._config import Settings
from rayflow._runtime import connection
from rayflow._runtime.batching import GroupCommit
from rayflow._runtime.bootstrap import on_head_node
from rayflow._runtime.calls import call
from rayflow.errors import PayloadTooLarge

log = logging.getLogger("rayflow")

_ACTOR_CACHE = 10_000
#: how often a send that woke its run asks the Controller to revive it
_REVIVE_TRIES = 5


@ray.remote
class InboxActor:
    def __init__(self, settings_json: str) -> None:
        self.settings = Settings.model_validate_json(settings_json)
        self.conn = connection.connect(self.settings)
        self._actors: OrderedDict[str, Any] = OrderedDict()
        self._deliveries: set[asyncio.Task[None]] = set()
        #: sends arriving together are stored in one transaction
        self._sends = GroupCommit(self.conn.store.inbox_send_many)

    async def send(self, run_id: str, stream_id: str, data: str, message_id: str) -> int:
        size = len(data.encode())
        if size > self.settings.max_input_bytes:
            raise PayloadTooLarge(
                f"message for input stream {stream_id!r} of run {run_id} is {size} bytes;"
                f" the limit is {self.settings.max_input_bytes}",
                run_id=run_id,
                stream=stream_id,
            )
        # one transaction: the message, and when the run waits on this
        # stream, its waitpoint resolved and the run queued
        result = await self._sends.submit((run_id, stream_id, data, message_id))
        if isinstance(result, Exception):
            raise result  # RunNotFound, RunFinished: this send stored nothing
        message, woke = result
        # acknowledged = stored: what follows happens behind the ack, and a
        # failure there never fails a send whose message is durable
        if woke:
            self._behind_ack(self._revive(run_id))
        else:
            self._behind_ack(self._deliver(run_id, stream_id, message))
        return message.seq

    def _behind_ack(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _revive(self, run_id: str) -> None:
        for attempt in range(_REVIVE_TRIES):
            try:
                await call(self.conn.controller.revive.remote(run_id))
                return
            except Exception as e:
                log.warning("run %s: asking the Controller to revive it failed: %r", run_id, e)
                await asyncio.sleep(0.2 * 2**attempt)
        # the run is QUEUED in the Store: the Controller's sweep launches it
        log.error("run %s: gave up asking for its revival; the Controller's sweep will", run_id)

    async def _deliver(self, run_id: str, stream_id: str, message: Any) -> None:
        """Poke the run's live RunActor. A cached actor may have moved on to
        another run (recycled): then look the run up once more. A run that
        is not live reads the message from the Store when it next pulls."""
        for _ in range(2):
            try:
                actor = await self._actor_for(run_id)
                if actor is None or await actor.deliver.remote(run_id, stream_id, message):
                    return
            except ray.exceptions.RayActorError:
                pass
            except Exception:
                log.exception(
                    "run %s: message %d of %r is stored but was not handed to the live run;"
                    " the run reads it from the Store when it next pulls",
                    run_id,
                    message.seq,
                    stream_id,
                )
                return
            self._actors.pop(run_id, None)

    async def _actor_for(self, run_id: str) -> Any:
        actor = self._actors.get(run_id)
        if actor is not None:
            self._actors.move_to_end(run_id)
            return actor
        _, actor = await call(self.conn.controller.locate.remote(run_id))
        if actor is not None:
            self._actors[run_id] = actor
            if len(self._actors) > _ACTOR_CACHE:
                self._actors.popitem(last=False)
        return actor

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        """This actor's process id (the chaos soak kills it by pid)."""
        return os.getpid()


#: one handle per (namespace, shard): bounded by the shards of each namespace
_handles: dict[tuple[str, int], Any] = {}


def shard_of(stream_id: str, run_id: str, shards: int) -> int:
    """The shard taking sends to this run's input stream (stable across processes)."""
    return zlib.crc32(f"{run_id}\x00{stream_id}".encode()) % max(1, shards)


def actor_name(stream_id: str, run_id: str) -> str:
    """The name of the Inbox actor taking sends to this run's input stream."""
    shards = connection.current().settings.inbox_shards
    return f"rayflow-inbox-{shard_of(stream_id, run_id, shards)}"


def inbox_for(stream_id: str, run_id: str) -> Any:
    """The Inbox actor for this stream and run (its shard started on first use)."""
    conn = connection.current()
    shard = shard_of(stream_id, run_id, conn.settings.inbox_shards)
    key = (conn.settings.namespace, shard)
    handle = _handles.get(key)
    if handle is None:
        handle = InboxActor.options(  # type: ignore[attr-defined]
            name=f"rayflow-inbox-{shard}",
            namespace=conn.settings.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=1000,
            **on_head_node(),
        ).remote(conn.settings.model_dump_json())
        _handles[key] = handle
    return handle


def forget(stream_id: str, run_id: str) -> None:
    conn = connection.current()
    shard = shard_of(stream_id, run_id, conn.settings.inbox_shards)
    _handles.pop((conn.settings.namespace, shard), None)
