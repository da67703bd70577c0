"""RunActor: a pooled Ray actor that executes runs — many at once.

The Controller hands a RunActor a run id (`execute`); the actor claims the
run in the Store (one transaction: QUEUED -> EXECUTING on this actor) and
loads everything else from there (payload, the pickled task, the journal),
so a run can be started, resumed after a crash or revived after a wait on
any node and on any actor. A new run placed as it was created comes
already EXECUTING here, with its row and task (`execute_many`'s `fresh`):
it starts without a Store round. `execute` returns when the run has finished or
suspended. Then nothing of the run is left in the actor — its streams,
inputs, journal, task object and context belong to an `Execution` that is
dropped.

An actor is a Ray async actor: the runs of `async def` tasks share its event
loop, each in its own `Execution` (by run id) and its own run context (a
context variable), so up to `runs_per_actor` of them execute in one process
at once — an I/O-bound run costs a coroutine, not a process. A task with
`runs_per_actor=1` (or one that declares resources) gets actors that execute
one run at a time, as a process of its own. The pool decides how many runs
an actor takes (`pool`); the actor watches its event loop (`loop_watch`)
for the pool's placement and to name a run that blocks it.

When a run leaves, the actor takes more runs (recycling) unless the run's
code left something running (a pending asyncio task, a non-daemon thread),
the actor has served `max_runs_per_actor` runs, or recycling is switched
off: then the pool retires it — no new run, stopped once its other runs left.

A cached RunActor handle (a reader's, a writer's, the Inbox's) may point at
an actor that no longer executes the run it looked for, so every method
that concerns a run takes its id and answers only for that run.

This module is the actor's interface (the methods called with `.remote`);
executing a run lives in `attempts`, the recycling check in `recycling`,
the methods readers and writers of its runs' streams call in
`run_actor_streams`, the actor's side of readers' polls in `follows`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import ray

from rayflow._config import Settings
from rayflow._runtime import attempts, connection, hops, named_signals, recycling, run_batches
from rayflow._runtime.arrivals import Arrivals
from rayflow._runtime.attempts import Execution
from rayflow._runtime.follows import Follow
from rayflow._runtime.loop_watch import LoopWatch
from rayflow._runtime.run_actor_streams import StreamService
from rayflow._runtime.stream_commit import SWITCH_INTERVAL_S
from rayflow.store.base import Claim, InboxMessage, RunRecord

log = logging.getLogger("rayflow")

#: `join` for a run this actor does not execute
LOST = "LOST"
#: the cyclic GC's young-generation threshold in a RunActor (Python's
#: default is 700). Its runs allocate a few objects per chunk that die young
#: (futures, coroutines, rows in flight): with 1,000 runs streaming on 2
#: actors the default made ~50 young collections a second per actor and a
#: full one every ~2.5 s (20-50 ms with 500 runs' tasks), ~65 ms of each
#: actor's loop per second; at 10,000, ~0.6 young ones (3-5 ms) a second and
#: hardly a full one. Runs starting together, whose objects all live on:
#: at 700, ~150 collections in the first second of 500 runs starting on an
#: actor, 90-115 ms of its loop (gen-1 passes over the runs' young objects);
#: at 10,000, ~7 young ones, 20-38 ms (benchmarks/README.md, "Density")
GC_YOUNG_OBJECTS = 10_000


@ray.remote
class RunActor(StreamService):
    def __init__(self, settings_json: str) -> None:
        settings = Settings.model_validate_json(settings_json)
        # the runs' group commit works on its own thread beside the busy loop
        # (`stream_commit`): hand the GIL over sooner than every 5 ms
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # a young collection every GC_YOUNG_OBJECTS, not every 700: see there
        gc.set_threshold(GC_YOUNG_OBJECTS, *gc.get_threshold()[1:])
        self.conn = connection.connect(settings, run_actor=True)
        self.settings = settings
        self.name = ray.get_runtime_context().get_actor_name() or ""
        self.served = 0
        #: the runs claimed here, by id (from the claim to the run leaving)
        self.executions: dict[str, Execution] = {}
        #: every run handed to `execute` and not yet left: its outcome
        self._outcomes: dict[str, asyncio.Future[tuple[str, bool]]] = {}
        #: cancels that came while their run was being claimed
        self._cancel_pending: set[str] = set()
        #: per run being claimed: (input streams poked, output streams written
        #: from outside) meanwhile — maybe after the claim's reads (`Start`),
        #: so the run reads them from the Store when it starts
        self._claim_news: dict[str, tuple[set[str], set[str]]] = {}
        #: what came for runs not here yet, and the runs that left (`arrivals`)
        self._arrivals = Arrivals()
        #: the newest Controller incarnation heard of: a fresh start from an
        #: older one (a stale call of a dead Controller, whose runs a new
        #: one may have relaunched elsewhere) is claimed in the Store instead
        self._controller_at = 0
        self._watch: LoopWatch | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: `follow_many` calls in progress, by poll id
        self._follows: dict[str, Follow] = {}
        #: kicks that came before their poll's call (the call answers at once)
        self._kicked: set[str] = set()
        #: steps of `follow_many` answered (tests and benchmarks count them)
        self.polls_served = 0

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def run_ids(self, incarnation: int = 0) -> list[str]:
        """The runs handed to this actor that have not left it. A restarted
        Controller passes its `incarnation`: fresh starts from an older one
        are refused from now on (their runs may be relaunched elsewhere)."""
        self._controller_at = max(self._controller_at, incarnation)
        return list(self._outcomes)

    def claim_rounds(self) -> int:
        """Claim transactions this actor made (`run_batches.claim_rounds`)."""
        return run_batches.claim_rounds

    def loop_lag(self) -> float:
        """How late (seconds) the event loop ran its timer at worst since the
        last call: the pool places no new run here while it is too late."""
        return self._watch.take_lag() if self._watch is not None else 0.0

    # -- executing runs --------------------------------------------------------
    def _start_watching(self) -> None:
        if self._watch is None:
            recycling.track_threads()
            recycling.track_tasks(self._executing)
            self._watch = LoopWatch(
                asyncio.get_running_loop(), self.settings.loop_lag_s, self._whose, self._blocked
            )

    async def execute(self, run_id: str) -> tuple[str, bool]:
        """Run (or resume) `run_id` to its end or its next suspension, beside
        whatever other runs this actor executes.

        Returns (status, recyclable): the run's status (or SKIPPED when it
        could not be claimed, QUEUED when a message woke it while it
        suspended) and whether the run left this actor clean enough to take
        more runs.
        """
        if run_id in self._outcomes:
            raise RuntimeError(f"RunActor {self.name} is already executing {run_id}")
        self._start_watching()
        self.served += 1
        outcome = asyncio.ensure_future(self._execute_and_reset(run_id))
        self._outcomes[run_id] = outcome
        return await asyncio.shield(outcome)

    async def execute_many(
        self,
        run_ids: list[str],
        fresh: dict[str, RunRecord] | None = None,
        blobs: dict[str, bytes | None] | None = None,
        incarnation: int = 0,
    ) -> AsyncIterator[dict[str, tuple[str, bool] | Exception]]:
        """`execute` for the runs the Controller placed here together, in one
        call (a Ray streaming generator, `execute_calls`): yields their
        outcomes by run id as they come (runs that end together in one
        reply) until every run has one; a run that could not be executed
        gets the error instead.

        `fresh`: runs the Controller created already EXECUTING on this
        actor (their rows as inserted), with their tasks' pickles in
        `blobs`: they start without a claim or a Store read — a new run has
        no journal, no streams and no inputs but what came here meanwhile
        (`arrivals`). From a Controller older than one heard of since
        (`incarnation`), they are claimed instead (and found taken)."""
        starts: dict[str, run_batches.Start] = {}
        if fresh and incarnation >= self._controller_at:
            self._controller_at = incarnation
            starts = {
                run_id: self._fresh(run, (blobs or {}).get(run.task_id))
                for run_id, run in fresh.items()
            }
        outcomes: asyncio.Queue[tuple[str, tuple[str, bool] | Exception]] = asyncio.Queue()

        def report(run_id: str, outcome: asyncio.Future[tuple[str, bool]]) -> None:
            if outcome.cancelled():
                outcomes.put_nowait((run_id, RuntimeError(f"run {run_id} was cancelled")))
            elif (e := outcome.exception()) is not None:
                log.error("run %s: its actor failed outside the task: %r", run_id, e)
                # its own type may not unpickle in the Controller
                outcomes.put_nowait((run_id, RuntimeError(f"{type(e).__name__}: {e}")))
            else:
                outcomes.put_nowait((run_id, outcome.result()))

        for run_id in run_ids:
            if run_id in self._outcomes:
                error = RuntimeError(f"RunActor {self.name} is already executing {run_id}")
                outcomes.put_nowait((run_id, error))
                continue
            self._start_watching()
            self.served += 1
            outcome = asyncio.ensure_future(self._execute_and_reset(run_id, starts.get(run_id)))
            self._outcomes[run_id] = outcome
            outcome.add_done_callback(lambda f, r=run_id: report(r, f))  # type: ignore[misc]
        left = len(run_ids)
        while left:
            first = await outcomes.get()
            reply = dict([first])
            while not outcomes.empty():
                run_id, out = outcomes.get_nowait()
                reply[run_id] = out
            left -= len(reply)
            yield reply

    async def join(self, run_id: str) -> tuple[str, bool]:
        """Wait for a run being executed (a restarted Controller re-attaching)."""
        outcome = self._outcomes.get(run_id)
        if outcome is None:
            return LOST, True
        return await asyncio.shield(outcome)

    def _fresh(self, run: RunRecord, blob: bytes | None) -> run_batches.Start:
        """The `Start` of a run created on this actor: what a claim would
        have read of a new run (nothing), and what came for it before it
        got here (`arrivals`: taken as if it came while it was claimed)."""
        early = self._arrivals.take(run.id)
        if early is not None:
            _, inputs, outputs, canceled = early
            if inputs or outputs:
                self._news_while_claiming(run.id, tuple(inputs), tuple(outputs))
            if canceled:
                self._cancel_pending.add(run.id)
        return run_batches.Start(Claim(run, claimed=True), blob)

    async def _execute_and_reset(
        self, run_id: str, fresh: run_batches.Start | None = None
    ) -> tuple[str, bool]:
        try:
            try:
                status = await attempts.execute(
                    self.conn.store, self.settings, run_id, self.name, self._started, fresh
                )
            finally:
                execution = self.executions.pop(run_id, None)
                if execution is not None:
                    execution.buffers.release()
                    await execution.inputs.close()
            recyclable = recycling.clean_after(
                self.settings, self.served, self.name, run_id, execution
            )
            return status, recyclable
        finally:
            self._outcomes.pop(run_id, None)
            self._cancel_pending.discard(run_id)
            self._claim_news.pop(run_id, None)
            self._arrivals.gone(run_id)
            self._look_at(run_id)  # a reader that waited for a failed claim moves on

    def _started(self, execution: Execution) -> None:
        """The run was claimed: it executes here from now on (readers that
        came while it was being claimed are woken to watch it)."""
        self.executions[execution.run_id] = execution
        if execution.run_id in self._cancel_pending:
            execution.canceled.set()
        news = self._claim_news.pop(execution.run_id, None)
        if news is not None:
            execution.inputs.poked(news[0])
            execution.buffers.forget(news[1])
        self._look_at(execution.run_id)

    def _look_at(self, run_id: str) -> None:
        for follow in list(self._follows.values()):
            follow.look_at(run_id)

    def _executing(self, run_id: str) -> Execution | None:
        return self.executions.get(run_id)

    def _claiming(self, run_id: str) -> bool:
        """Whether the run was handed to this actor and is being claimed (a
        reader that found it through the Controller may come before the claim)."""
        return run_id in self._outcomes and run_id not in self.executions

    def _expected(self, run_id: str) -> bool:
        """A run not here that a reader's poll should wait for (`arrivals`)."""
        return run_id not in self._outcomes and self._arrivals.expected(run_id, self._look_at)

    def _arriving(self, run_id: str) -> bool:
        """Being claimed here, or expected (`_expected`): a reader waits."""
        return self._claiming(run_id) or self._expected(run_id)

    def _news_while_claiming(
        self, run_id: str, inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ()
    ) -> None:
        """Streams of a run being claimed that changed meanwhile (see `_claim_news`)."""
        news = self._claim_news.setdefault(run_id, (set(), set()))
        news[0].update(inputs)
        news[1].update(outputs)

    def _whose(self, task: Any) -> tuple[str, str] | None:
        """The run an asyncio task belongs to (on `loop_watch`'s thread: reads only)."""
        for execution in list(self.executions.values()):
            try:
                if execution.task is task or task in execution.tasks:
                    return execution.run_id, execution.task_id
            except RuntimeError:  # its tasks changed while looking
                continue
        return None

    def _blocked(self, run_id: str, task_id: str, seconds: float) -> None:
        """A run held the event loop for `seconds`: every other run here
        waited that long. Warn, and mark the run (its longest hold)."""
        log.warning(
            "run %s (task %r) blocked the event loop of RunActor %s for %.0f ms: every"
            " run there waited. Move blocking work off the loop (asyncio.to_thread)"
            " or give the task runs_per_actor=1",
            run_id,
            task_id,
            self.name,
            seconds * 1000,
        )
        execution = self.executions.get(run_id)
        ms = int(seconds * 1000)
        if execution is None or ms <= execution.loop_blocked_ms:
            return
        execution.loop_blocked_ms = ms
        store = self.conn.store

        async def mark() -> None:
            try:
                await asyncio.to_thread(store.update_run, run_id, loop_blocked_ms=ms)
            except Exception:
                log.exception("run %s: could not record that it blocked the event loop", run_id)

        task = asyncio.get_running_loop().create_task(mark())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def deliver(self, run_id: str, stream_id: str, message: InboxMessage) -> bool:
        """The Inbox made a message durable for this run: take it in. False
        when this actor does not execute the run (it reads the Store instead)."""
        execution = self._executing(run_id)
        if execution is None:
            if self._claiming(run_id):
                self._news_while_claiming(run_id, inputs=(stream_id,))
            elif run_id not in self._outcomes:
                self._arrivals.came(run_id, inputs=(stream_id,))
            return False
        execution.inputs.poke(stream_id, message)
        return True

    def session_changed(self, run_id: str, paths: list[str]) -> bool:
        """Records were stored on these session streams: wake the run's
        readers of them (they read the Store). False when this actor does
        not execute the run."""
        if self._executing(run_id) is None:
            return False
        if hops.enabled():
            hops.mark("changed", paths)
        named_signals.signals().notify(paths)
        return True

    async def cancel(self, run_id: str) -> None:
        """Stop the run's code (the Controller has already marked it
        CANCELED); the other runs here go on."""
        execution = self._executing(run_id)
        if execution is None:
            if run_id in self._outcomes:
                self._cancel_pending.add(run_id)  # still claiming it
            else:
                self._arrivals.came(run_id, canceled=True)
            return
        execution.canceled.set()
        if execution.task is not None and not execution.task.done():
            execution.task.cancel()
        await execution.buffers.drain()
        execution.buffers.close_all()
