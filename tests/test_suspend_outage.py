"""Suspending a run whose message came before its waitpoint: the RunActor
looks for such a message once the run is WAITING. An outage of the Store at
that moment is waited out, not the end of the attempt: nobody else looks,
and the run would wait on with its message already there."""

from __future__ import annotations

from typing import Any

from test_store_off_the_loop import new_run

from rayflow._config import Settings
from rayflow._runtime import attempts
from rayflow._runtime.attempts import Execution
from rayflow._runtime.run_inputs import RunInputs
from rayflow._runtime.stream_buffers import StreamBuffers
from rayflow._status import RunStatus, WaitpointStatus
from rayflow.errors import Unavailable
from rayflow.store import Store
from rayflow.store.base import Waitpoint


class OutageOnce:
    """A real Store whose first `inbox_read` meets an outage (as PostgreSQL
    past its reconnect window raises it)."""

    def __init__(self, inner: Store) -> None:
        self._inner, self.failed = inner, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != "inbox_read":
            return attr

        def once_unavailable(*args: Any) -> Any:
            if not self.failed:
                self.failed += 1
                raise Unavailable("PostgreSQL did not answer inbox_read (played)")
            return attr(*args)

        return once_unavailable


async def test_a_message_before_the_waitpoint_wakes_the_run_across_an_outage(
    store: Store,
) -> None:
    run_id = new_run(store)
    # sent while the run was still executing: it woke no waitpoint
    sent = store.inbox_send_many([(run_id, "approval", '{"ok": true}', None)])[0]
    assert isinstance(sent, tuple), sent
    flaky = OutageOnce(store)
    execution = Execution(
        run_id,
        StreamBuffers(run_id, store, Settings()),
        RunInputs(flaky, run_id),  # type: ignore[arg-type]
    )
    waitpoint = Waitpoint(run_id, "approval", None, None, WaitpointStatus.PENDING.value, None)
    status = await attempts._suspend(store, execution, waitpoint)
    assert flaky.failed == 1, "the outage was not met"
    assert status == RunStatus.QUEUED
    run = store.get_run(run_id)
    assert run is not None and run.status == RunStatus.QUEUED
