"""`.once(timeout_s=)` inside a RunActor: a message that arrives in the loop
turn its timeout fires is taken, never consumed and lost.

`once` used `asyncio.wait_for`, which from Python 3.12 cancels the waiting
task when the timeout fires even if the awaited future got its result in
that turn: the message, already taken off the stream, was dropped. On 3.11
(this repository's CI) wait_for looks at the future after the timeout, so
the old code passes here; on 3.12 and later it fails."""

from __future__ import annotations

import asyncio
import time

from test_store_off_the_loop import new_run

from rayflow._config import Settings
from rayflow._runtime.context import RunContext, reset_run, set_run
from rayflow._runtime.journal import Journal
from rayflow._runtime.run_inputs import RunInputs
from rayflow._runtime.stream_buffers import StreamBuffers
from rayflow.inputs import InputStream
from rayflow.store import Store

nudge = InputStream("once-nudge", int)


async def test_a_message_arriving_as_the_timeout_fires_is_taken(store: Store) -> None:
    run_id = new_run(store)
    journal = await asyncio.to_thread(Journal, store, run_id, 1)
    inputs = RunInputs(store, run_id)
    ctx = RunContext(
        run_id, "once", 1, None, run_id, journal, StreamBuffers(run_id, store, Settings())
    )
    ctx.inputs = inputs
    await inputs.prepare(journal)
    inputs.bind(ctx)  # nothing to replay: live
    inputs.stream(nudge.id)
    while inputs._pulling:  # the first look at the Store (empty) is over
        await asyncio.sleep(0.01)
    token = set_run(ctx)
    try:
        once = asyncio.ensure_future(nudge.once(timeout_s=0.05))
    finally:
        reset_run(token)
    await asyncio.sleep(0.01)  # `once` waits on its waiter
    sent = store.inbox_send_many([(run_id, nudge.id, "7", None)])[0]
    assert isinstance(sent, tuple), sent
    message = sent[0]
    # the loop is held past the deadline; the Inbox's poke and the timeout
    # are then both due in one turn, before `once` resumes
    time.sleep(0.1)
    inputs.poke(nudge.id, message)
    result = await once
    assert result.ok and result.output == 7, result
    assert [(e.kind, e.value) for e in journal.entries] == [("once", '{"seq": 0}')]
    await inputs.close()
