"""A send to an input stream, from any process: the message id that makes a
retried send a no-op (a fresh uuid outside a task; `<run>:<attempt>:<journal
position>` inside one, where the send is journaled so a replay does not send
again), and the retries when the stream's Inbox actor dies mid-call.
"""

from __future__ import annotations

import asyncio
import uuid

import ray

from rayflow._runtime import inbox
from rayflow._runtime.calls import call
from rayflow._runtime.context import current_run
from rayflow._runtime.journal import MISSING
from rayflow.errors import Unavailable

#: a send is retried this often when its Inbox actor dies mid-call
_SEND_TRIES = 5


async def send(
    stream_id: str, run_id: str, data: str, *, idempotency_key: str | None = None
) -> None:
    """Store `data` (validated JSON text) as the next message of the run's
    input stream; returns once it is durable. Raises what the Inbox raises
    (`RunNotFound`, `RunFinished`, `PayloadTooLarge`) or `Unavailable`.
    `idempotency_key` names the message: the Inbox stores an id once per run
    and stream, so a send retried with the same key is stored once."""
    ctx = current_run()
    name = f"{run_id}/{stream_id}"
    if ctx is not None:
        if ctx.journal.replay("send", name) is not MISSING:
            return
        message_id = f"{ctx.run_id}:{ctx.attempt}:{ctx.journal.cursor}"
    else:
        message_id = uuid.uuid4().hex
    if idempotency_key is not None:
        message_id = keyed_message_id(idempotency_key)
    await _send(stream_id, run_id, data, message_id)
    if ctx is not None:
        await ctx.journal.record("send", name, None)


def keyed_message_id(idempotency_key: str) -> str:
    """The message id a send with this idempotency key is stored under."""
    return "key:" + idempotency_key


async def _send(stream_id: str, run_id: str, data: str, message_id: str) -> None:
    for attempt in range(_SEND_TRIES):
        actor = inbox.inbox_for(stream_id, run_id)
        try:
            await call(actor.send.remote(run_id, stream_id, data, message_id))
            return
        except ray.exceptions.RayActorError:
            # the Inbox died; its restart (or a new one) dedupes by message id
            inbox.forget(stream_id, run_id)
            await asyncio.sleep(0.1 * (attempt + 1))
    raise Unavailable(
        f"could not reach the Inbox actor of input stream {stream_id!r} for run {run_id} after"
        f" {_SEND_TRIES} tries; nothing was sent twice, so sending again is safe",
        run_id=run_id,
        stream=stream_id,
    )
