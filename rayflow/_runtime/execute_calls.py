"""The Controller's `execute` calls, one per RunActor for the runs placed on
it together.

A Ray call costs ~1 ms of CPU on each side however little it carries
(docs/scaling.md), and a burst of 1,000 triggers places 1,000 runs at once:
one `execute` call each kept the Controller busy submitting them for ~0.5 s
before it answered anything else (the triggers' replies included), and each
run's claim waited its turn. Here the runs placed in one step of the event
loop leave in one `RunActor.execute_many` call per actor, a Ray streaming
generator that sends back each run's outcome `(status, recyclable)` as soon
as it has one (runs that end together share a reply). Each run still has
its own future: its supervision (`Supervisor.supervise`) awaits it as it
awaited its own call, and hears the actor's death (`RayActorError`) the same
way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rayflow.store.base import RunRecord

log = logging.getLogger("rayflow")

#: a run's outcome on its actor: (status, recyclable)
Outcome = tuple[str, bool]


class _Call:
    """The runs placed on one actor since the last flush."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.runs: list[tuple[str, asyncio.Future[Outcome]]] = []
        #: runs created on the actor (`RunActor.execute_many`'s `fresh`)
        self.fresh: dict[str, RunRecord] = {}
        self.blobs: dict[str, bytes | None] = {}


class ExecuteCalls:
    def __init__(self, incarnation: int = 0) -> None:
        #: the Controller's (`RunActor.execute_many`'s `incarnation`)
        self.incarnation = incarnation
        #: runs placed since the last flush, per actor name
        self._pending: dict[str, _Call] = {}
        self._flush_soon: asyncio.Handle | None = None
        self._streams: set[asyncio.Task[None]] = set()
        #: `execute_many` calls made (tests count them)
        self.calls = 0

    def execute(
        self,
        name: str,
        actor: Any,
        run_id: str,
        fresh: RunRecord | None = None,
        blob: bytes | None = None,
    ) -> asyncio.Future[Outcome]:
        """Have `actor` execute `run_id` (in the call of this loop step's
        runs on it); the future gives its outcome, or raises what the call
        raised (`RayActorError` when the actor died). `fresh`: the run's row
        as created on this actor, and `blob` its task's pickle: it starts
        there without a claim."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        call = self._pending.get(name)
        if call is None:
            call = self._pending[name] = _Call(actor)
        call.runs.append((run_id, future))
        if fresh is not None:
            call.fresh[run_id] = fresh
            call.blobs[fresh.task_id] = blob
        if self._flush_soon is None:
            # after every task made ready in this step has placed its run
            self._flush_soon = loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_soon = None
        pending, self._pending = self._pending, {}
        for call in pending.values():
            task = asyncio.get_running_loop().create_task(self._follow(call))
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)

    async def _follow(self, call: _Call) -> None:
        self.calls += 1
        futures = dict(call.runs)
        if call.fresh:
            gen = call.actor.execute_many.remote(
                list(futures), call.fresh, call.blobs, self.incarnation
            )
        else:
            gen = call.actor.execute_many.remote(list(futures))
        try:
            async for ref in gen:
                outcomes: dict[str, Outcome | BaseException] = await ref
                for run_id, outcome in outcomes.items():
                    future = futures.pop(run_id, None)
                    if future is None or future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except Exception as e:
            for future in futures.values():
                if not future.done():
                    future.set_exception(e)
            return
        for run_id, future in futures.items():
            if not future.done():
                future.set_exception(RuntimeError(f"no outcome for run {run_id} from its actor"))
