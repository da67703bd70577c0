"""RunActor: a pooled Ray actor that executes runs — many at once.

The Controller hands a RunActor a run id (`execute`); the actor claims the
run in the Store (one transaction: QUEUED -> EXECUTING on this actor) and
loads everything else from there (payload, the pickled task, the journal),
so a run can be started, resumed after a crash or revived after a wait on
any node and on any actor. `execute` returns when the run has finished or
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
the actor's side of readers' polls in `follows`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray

from rayflow._config import Settings
from rayflow._runtime import attempts, connection, hops, named_signals, recycling
from rayflow._runtime.attempts import Execution
from rayflow._runtime.calls import RunMoved
from rayflow._runtime.follows import Follow
from rayflow._runtime.loop_watch import LoopWatch
from rayflow._runtime.stream_commit import loop_committer
from rayflow._runtime.stream_rows import ReadReply, Row
from rayflow.store.base import InboxMessage

log = logging.getLogger("rayflow")

#: `join` for a run this actor does not execute
LOST = "LOST"


@ray.remote
class RunActor:
    def __init__(self, settings_json: str) -> None:
        settings = Settings.model_validate_json(settings_json)
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

    def run_ids(self) -> list[str]:
        """The runs handed to this actor that have not left it."""
        return list(self._outcomes)

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
        self, run_ids: list[str]
    ) -> AsyncIterator[dict[str, tuple[str, bool] | Exception]]:
        """`execute` for the runs the Controller placed here together, in one
        call (a Ray streaming generator, `execute_calls`): yields their
        outcomes by run id as they come (runs that end together in one
        reply) until every run has one; a run that could not be executed
        gets the error instead."""
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
            outcome = asyncio.ensure_future(self._execute_and_reset(run_id))
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

    async def _execute_and_reset(self, run_id: str) -> tuple[str, bool]:
        try:
            try:
                status = await attempts.execute(
                    self.conn.store, self.settings, run_id, self.name, self._started
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
            self._look_at(run_id)  # a reader that waited for a failed claim moves on

    def _started(self, execution: Execution) -> None:
        """The run was claimed: it executes here from now on (readers that
        came while it was being claimed are woken to watch it)."""
        self.executions[execution.run_id] = execution
        if execution.run_id in self._cancel_pending:
            execution.canceled.set()
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
            return False
        execution.inputs.poke(stream_id, message)
        return True

    def session_changed(self, run_id: str, paths: list[str]) -> bool:
        """Records were stored on these session streams: wake the run's
        readers of them (they read the Store). False when this actor does
        not execute the run."""
        if self._executing(run_id) is None:
            return False
        named_signals.signals().notify(paths)
        return True

    async def cancel(self, run_id: str) -> None:
        """Stop the run's code (the Controller has already marked it
        CANCELED); the other runs here go on."""
        execution = self._executing(run_id)
        if execution is None:
            if run_id in self._outcomes:
                self._cancel_pending.add(run_id)  # still claiming it
            return
        execution.canceled.set()
        if execution.task is not None and not execution.task.done():
            execution.task.cancel()
        await execution.buffers.drain()
        execution.buffers.close_all()

    # -- output streams, for readers and writers in other processes -----------
    async def follow_many(
        self, polls: list[tuple[str, str, int]], limit: int, wait_s: float, poll_id: str
    ) -> AsyncIterator[dict[int, ReadReply]]:
        """Replies to many readers in one process as a stream (a Ray
        streaming generator, `actor_polls`): `polls` are (run id, key, next
        index), of any runs this actor executes. Yields, by position in
        `polls`, what readers have something new — rows, a sealed segment,
        `closed`, or `from_store` when this actor does not execute that run —
        as soon as they have it, with no call to wait for in between: under
        a flood a commit's rows leave at once instead of after the reader's
        next call has arrived (measured: ~3.5 ms of a chunk's ~8 ms). A
        reader's position moves past the rows it was sent; a reader sent
        anything else leaves the stream. After the first look only the
        readers of runs with news are looked at again (`follows`). Ends at
        `kick(poll_id)`, after `wait_s` in all (the caller follows again: a
        stream whose caller is gone cannot go on for long), or when no run
        it follows executes here. A key nobody wrote allocates nothing here;
        its reader waits like the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        follow = self._follows[poll_id] = Follow(self._executing, polls, self._claiming)
        if poll_id in self._kicked:
            self._kicked.discard(poll_id)
            follow.kick()  # the kick came before this call: answer at once
        first = True
        try:
            while follow.polls:
                # watch before looking: a commit while looking is not missed
                follow.watch()
                follow.wake.clear()
                runs = None if first else follow.take_changed()
                self.polls_served += 1
                out: dict[int, ReadReply] = {}
                for i, (run_id, key, start) in list(follow.polls.items()):
                    if runs is not None and run_id not in runs:
                        continue
                    reply = await self._peek(run_id, key, start, limit, look=first)
                    if reply is None:
                        continue
                    out[i] = reply
                    if reply.rows:
                        follow.polls[i] = (run_id, key, reply.rows[-1][0] + 1)
                        if hops.enabled():
                            ids = [hops.stream_id(run_id, key, r[0]) for r in reply.rows]
                            hops.mark("reply", ids)
                    else:
                        del follow.polls[i]
                first = False
                if out:
                    yield out
                if follow.kicked or not follow.polls:
                    return
                left = deadline - loop.time()
                if left <= 0 or not follow.watching:
                    return
                if follow.changed:
                    continue
                # wait on the watched runs' news itself, not on a task that
                # waits for it: then this poll answers first once a commit is
                # published, ahead of the writers the commit resolves (under
                # a flood a writer's next burst ran first: ~1 ms)
                timer = loop.call_later(left, follow.wake.set)
                try:
                    await follow.wake.wait()
                finally:
                    timer.cancel()
        finally:
            follow.close()
            if self._follows.get(poll_id) is follow:
                del self._follows[poll_id]

    async def _peek(
        self, run_id: str, key: str, start: int, limit: int, *, look: bool
    ) -> ReadReply | None:
        execution = self._executing(run_id)
        if execution is None:
            if self._claiming(run_id):
                return None  # its reader waits here: the claim wakes it (`_started`)
            return ReadReply(rows=[], from_store=True)
        buffers = execution.buffers
        # the Store is asked about a key this actor has no buffer for once
        # per poll; after that only a write through this actor creates it
        buf = await buffers.find(key) if look else buffers.streams.get(key)
        if buf is None:
            return ReadReply(rows=[], closed=True) if buffers.closed else None
        return await buf.peek(start, limit)

    def poll_count(self) -> int:
        """How many looks (steps of `follow_many`) this actor has answered."""
        return self.polls_served

    def kick(self, poll_id: str) -> None:
        """End the `follow_many` stream `poll_id` now (its process has a new reader)."""
        follow = self._follows.get(poll_id)
        if follow is not None:
            follow.kick()
        else:  # it may overtake its call: the call finds it
            if len(self._kicked) > 1000:
                self._kicked.clear()
            self._kicked.add(poll_id)

    #: calls to `published` answered by this actor, for every run it served
    #: (how many Ray calls outside writers cost; read through `published_calls`)
    published_count = 0

    async def published(self, news: list[tuple[str, list[tuple[str, list[Row]]]]]) -> list[str]:
        """Outside writers of one process committed `news` — per run, (key,
        rows) — to the streams of runs this actor executes (`run_appender`:
        one call per actor, however many of its runs were written): take the
        rows into the streams' tails and wake their readers. Answers the runs
        this actor does not execute (the writer locates them again); while a
        run is being claimed or released here there is nothing to do for it
        (streams opened later load their length from the Store, and a
        released run's readers read the Store)."""
        self.published_count += 1
        moved: list[str] = []
        learning = []
        for run_id, run_news in news:
            if run_id not in self._outcomes:
                moved.append(run_id)
                continue
            execution = self._executing(run_id)
            if execution is None or execution.buffers.closed:
                continue
            buffers = execution.buffers
            learning += [buffers.get(key).learn(rows) for key, rows in run_news]
        if len(learning) == 1:
            await learning[0]
        elif learning:  # one stream waiting for its length holds up no other
            await asyncio.gather(*learning)
        return moved

    def published_calls(self) -> int:
        """Calls to `published` this actor has answered (all runs)."""
        return self.published_count

    async def stream_commits(self) -> int:
        """Transactions this actor's group commit made for the output streams
        of all its runs (tests and benchmarks count them)."""
        return loop_committer(self.conn.store, self.settings.max_stream_bytes).commits

    def stream_stats(self, run_id: str) -> dict[str, dict[str, int]]:
        """Per stream of the run (when it executes here): committed length,
        chunks in the heap tail, sealed segments."""
        execution = self._executing(run_id)
        if execution is None:
            return {}
        return {
            key: {"length": b.length, "tail": len(b.tail), "segments": len(b.segments)}
            for key, b in execution.buffers.streams.items()
        }

    async def close_stream(self, run_id: str, key: str) -> None:
        execution = self._executing(run_id)
        if execution is None:
            raise RunMoved(f"run {run_id} is not executing on {self.name}")
        buf = execution.buffers.get(key)
        await buf.drain()
        await asyncio.to_thread(self.conn.store.close_stream, run_id, key)
        buf.close()
