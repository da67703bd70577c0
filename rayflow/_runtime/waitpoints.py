"""The waitpoint protocol of `.wait()` on the task's side: a journaled outcome
(replay), a keyed result kept across attempts, a buffered message, the message
or timeout the run was revived for — or else `Suspended`, after which the
RunActor drains the run's streams and registers the waitpoint (docs/
architecture.md, "Suspension and revival").
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rayflow._runtime import connection
from rayflow._runtime.attempts import Suspended
from rayflow._runtime.context import RunContext
from rayflow._runtime.journal import MISSING
from rayflow._status import WaitpointStatus
from rayflow.store.base import JournalEntry, Waitpoint, now_ms


async def wait_outcome(
    ctx: RunContext, stream_id: str, timeout_s: float | None, idempotency_key: str | None
) -> dict[str, Any]:
    """The outcome of a `.wait()` on `stream_id` — `{"seq": n}` or
    `{"timeout": True}`, journaled; raises
    `Suspended` when the run must wait without a process."""
    store = connection.current().store
    # the journal first: a replay must move its cursor past this wait, or the
    # next durable operation meets this wait's entry (NonDeterminism)
    recorded = ctx.journal.replay("wait", stream_id)
    if recorded is not MISSING:
        journaled: dict[str, Any] = recorded
        return journaled
    if idempotency_key is not None:
        earlier = await asyncio.to_thread(_keyed_result, store, ctx.run_id, idempotency_key)
        if earlier is not None:
            # an earlier attempt's result, journaled in this attempt like any
            # outcome (its replays then read it at this point of the journal)
            await ctx.journal.record("wait", stream_id, earlier)
            return earlier
    message = ctx.inputs.take_buffered(stream_id)
    outcome: dict[str, Any] | None
    if message is not None:
        outcome = {"seq": message.seq}
    else:
        outcome = (
            await asyncio.to_thread(ctx.inputs.settle_wait, stream_id)
            if ctx.inputs.revived_for(stream_id)
            else None
        )
    if outcome is None:
        deadline = None if timeout_s is None else now_ms() + int(timeout_s * 1000)
        # the RunActor drains the run's streams, then registers this
        # waitpoint and marks the run WAITING in one transaction
        pending = WaitpointStatus.PENDING.value
        raise Suspended(Waitpoint(ctx.run_id, stream_id, deadline, idempotency_key, pending, None))
    await ctx.journal.record("wait", stream_id, outcome)
    if idempotency_key is not None:
        await asyncio.to_thread(_keep_keyed_result, store, ctx.run_id, idempotency_key, outcome)
    return outcome


def _keyed_result(store: Any, run_id: str, key: str) -> dict[str, Any] | None:
    for entry in store.journal_load(run_id, 0):
        if entry.kind == "wait-key" and entry.name == key:
            value: dict[str, Any] = json.loads(entry.value)
            return value
    return None


def _keep_keyed_result(store: Any, run_id: str, key: str, outcome: dict[str, Any]) -> None:
    """Keep `outcome` under `key` in attempt 0 (what outlives attempts). The
    first result kept under a key stays. Two keyed waits of a run kept at
    once may pick the same seq, and the Store keeps the first row at a seq
    (journal writes are idempotent): the one that lost takes the next seq."""
    while True:
        entries = store.journal_load(run_id, 0)
        if any(e.kind == "wait-key" and e.name == key for e in entries):
            return
        seq = max((e.seq for e in entries), default=-1) + 1
        entry = JournalEntry(seq=seq, kind="wait-key", name=key, value=json.dumps(outcome))
        store.journal_append(run_id, 0, [entry])
