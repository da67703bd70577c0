"""RunActor: a pooled Ray actor that executes one run at a time.

The Controller hands a RunActor a run id (`execute`); the actor claims the
run in the Store (one transaction: QUEUED -> EXECUTING on this actor) and
loads everything else from there (payload, the pickled task, the journal),
so a run can be started, resumed after a crash or revived after a wait on
any node and on any actor. `execute` returns when the run has finished or
suspended. Then nothing of the run is left in the actor — its streams,
inputs, journal, task object and context belong to an `Execution` that is
dropped — and the Controller puts the actor back into the pool for the next
run (recycling), unless the run's code left something running (a pending
asyncio task, a non-daemon thread), the actor has served
`max_runs_per_actor` runs, or recycling is switched off: then it is killed.

A cached RunActor handle (a reader's, a writer's, the Inbox's) may point at
an actor that now executes another run, so every method that concerns a run
takes its id and answers only for that run.

This module is the actor's interface (the methods called with `.remote`);
executing a run lives in `attempts`, the recycling check in `recycling`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator

import ray

from rayflow._config import Settings
from rayflow._runtime import attempts, connection, hops, recycling
from rayflow._runtime.attempts import Execution
from rayflow._runtime.calls import RunMoved
from rayflow._runtime.stream_buffer import ReadReply, Row
from rayflow.store.base import InboxMessage

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
        #: the run being executed, from the call to `execute` on
        self.run_id: str | None = None
        self.current: Execution | None = None
        self._outcome: asyncio.Future[tuple[str, bool]] | None = None
        #: a cancel that came while the run was being claimed
        self._cancel_pending: str | None = None
        self._tracking = False
        #: multiplexed polls in progress (`_poll`, under `follow_many`), by poll id
        self._polls: dict[str, asyncio.Event] = {}
        #: kicks that came before their poll's call (the call answers at once)
        self._kicked: set[str] = set()
        #: `_poll`s answered (tests and benchmarks count them)
        self.polls_served = 0

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def current_run_id(self) -> str | None:
        return self.run_id

    # -- executing a run -------------------------------------------------------
    async def execute(self, run_id: str) -> tuple[str, bool]:
        """Run (or resume) `run_id` to its end or its next suspension.

        Returns (status, recyclable): the run's status (or SKIPPED when it
        could not be claimed, QUEUED when a message woke it while it
        suspended) and whether this actor is clean enough to serve another run.
        """
        if self.run_id is not None:
            raise RuntimeError(f"RunActor {self.name} is executing {self.run_id}, not {run_id}")
        if not self._tracking:
            self._tracking = True
            recycling.track_tasks(lambda: self.current)
        self.run_id = run_id
        self.served += 1
        self._outcome = asyncio.ensure_future(self._execute_and_reset(run_id))
        return await asyncio.shield(self._outcome)

    async def join(self, run_id: str) -> tuple[str, bool]:
        """Wait for the run being executed (a restarted Controller re-attaching)."""
        if self.run_id != run_id or self._outcome is None:
            return LOST, self.run_id is None
        return await asyncio.shield(self._outcome)

    async def _execute_and_reset(self, run_id: str) -> tuple[str, bool]:
        threads = set(threading.enumerate())
        try:
            status = await attempts.execute(
                self.conn.store, self.settings, run_id, self.name, self._started
            )
        finally:
            execution, self.current = self.current, None
            if execution is not None:
                execution.buffers.release()
                await execution.inputs.close()
        recyclable = recycling.clean_after(
            self.settings, self.served, self.name, run_id, execution, threads
        )
        self.run_id = self._cancel_pending = None
        return status, recyclable

    def _started(self, execution: Execution) -> None:
        """The run was claimed: it is this actor's current run from now on."""
        self.current = execution
        if self._cancel_pending == execution.run_id:
            execution.canceled.set()

    def _executing(self, run_id: str) -> Execution | None:
        execution = self.current
        return execution if execution is not None and execution.run_id == run_id else None

    def deliver(self, run_id: str, stream_id: str, message: InboxMessage) -> bool:
        """The Inbox made a message durable for this run: take it in. False
        when this actor does not execute the run (it reads the Store instead)."""
        execution = self._executing(run_id)
        if execution is None:
            return False
        execution.inputs.poke(stream_id, message)
        return True

    async def cancel(self, run_id: str) -> None:
        """Stop the run's code (the Controller has already marked it CANCELED)."""
        execution = self._executing(run_id)
        if execution is None:
            if self.run_id == run_id:
                self._cancel_pending = run_id  # still claiming it
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
        streaming generator, `actor_polls`; each step is `_poll`): yields, by
        position in `polls`, what readers have something new as
        soon as they have it, with no call to wait for in between — under a
        flood a commit's rows leave at once instead of after the reader's
        next call has arrived (measured: ~3.5 ms of a chunk's ~8 ms). A
        reader's position moves past the rows it was sent; a reader sent
        anything else (segment, closed, from_store) leaves the stream. Ends
        at `kick(poll_id)` and after `wait_s` in all (the caller follows
        again: a stream whose caller is gone cannot go on for long)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        following = dict(enumerate(polls))
        while following and loop.time() < deadline:
            order = list(following)
            replies, kicked = await self._poll(
                [following[i] for i in order], limit, deadline - loop.time(), poll_id
            )
            out: dict[int, ReadReply] = {}
            for j, reply in replies.items():
                i = order[j]
                out[i] = reply
                run_id, key, _ = following[i]
                if reply.rows:
                    following[i] = (run_id, key, reply.rows[-1][0] + 1)
                    if hops.enabled():
                        hops.mark("reply", [hops.stream_id(run_id, key, r[0]) for r in reply.rows])
                else:
                    del following[i]
            if out:
                yield out
            if kicked or not out:
                return

    async def _poll(
        self, polls: list[tuple[str, str, int]], limit: int, wait_s: float, poll_id: str
    ) -> tuple[dict[int, ReadReply], bool]:
        """One look-and-wait for many readers in one process: `polls` are (run
        id, key, next index). Returns, by position in `polls`, what each
        reader that has something new gets — rows, a sealed segment,
        `closed`, or `from_store` when this actor does not execute that run
        — as soon as one has, or {} after `wait_s`; and whether
        `kick(poll_id)` ended the wait early. A key nobody wrote allocates
        nothing here; its reader waits like the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        self.polls_served += 1
        kicked = self._polls[poll_id] = asyncio.Event()
        if poll_id in self._kicked:
            self._kicked.discard(poll_id)
            kicked.set()  # the kick came before this call: answer at once
        checked: set[int] = set()
        try:
            while True:
                execution = self.current
                activity = execution.buffers.activity if execution is not None else None
                out: dict[int, ReadReply] = {}
                for i, (run_id, key, start) in enumerate(polls):
                    reply = await self._peek(run_id, key, start, limit, look=i not in checked)
                    checked.add(i)
                    if reply is not None:
                        out[i] = reply
                left = deadline - loop.time()
                if out or left <= 0 or kicked.is_set() or activity is None:
                    return out, kicked.is_set()
                # wait on the run's activity itself, not on a task that waits
                # for it: then this poll answers first once a commit is
                # published, ahead of the writers the commit resolves (under a
                # flood a writer's next burst ran first: ~1 ms). A kick and the
                # deadline wake it through the activity too (the run's other
                # polls look once and wait again).
                assert execution is not None
                timer = loop.call_later(left, execution.buffers.poke)
                try:
                    await activity.wait()
                finally:
                    timer.cancel()
        finally:
            if self._polls.get(poll_id) is kicked:
                del self._polls[poll_id]

    async def _peek(
        self, run_id: str, key: str, start: int, limit: int, *, look: bool
    ) -> ReadReply | None:
        execution = self._executing(run_id)
        if execution is None:
            return ReadReply(rows=[], from_store=True)
        buffers = execution.buffers
        # the Store is asked about a key this actor has no buffer for once
        # per poll; after that only a write through this actor creates it
        buf = await buffers.find(key) if look else buffers.streams.get(key)
        if buf is None:
            return ReadReply(rows=[], closed=True) if buffers.closed else None
        return await buf.peek(start, limit)

    def poll_count(self) -> int:
        """How many polls (`_poll`, the steps of `follow_many`) this actor has answered."""
        return self.polls_served

    def kick(self, poll_id: str) -> None:
        """End the long poll `poll_id` now (its process has a new reader)."""
        event = self._polls.get(poll_id)
        if event is not None:
            event.set()
            if self.current is not None:
                self.current.buffers.poke()  # what the poll waits on
        else:  # it may overtake its call: the call finds it
            if len(self._kicked) > 1000:
                self._kicked.clear()
            self._kicked.add(poll_id)

    #: calls to `published` answered by this actor, for every run it served
    #: (how many Ray calls outside writers cost; read through `published_calls`)
    published_count = 0

    async def published(self, run_id: str, news: list[tuple[str, list[Row]]]) -> None:
        """An outside writer committed `news` — (key, rows) — to the run's
        streams in the Store (`run_appender`): take the rows into the
        streams' tails and wake their readers. Raises RunMoved when this
        actor does not execute the run (the writer locates it again); while
        the run is being claimed or released here there is nothing to do
        (streams opened later load their length from the Store, and a
        released run's readers read the Store)."""
        self.published_count += 1
        if self.run_id != run_id:
            raise RunMoved(f"run {run_id} is not executing on {self.name}")
        execution = self._executing(run_id)
        if execution is None or execution.buffers.closed:
            return
        for key, rows in news:
            await execution.buffers.get(key).learn(rows)

    def published_calls(self) -> int:
        """Calls to `published` this actor has answered (all runs)."""
        return self.published_count

    def stream_stats(self) -> dict[str, dict[str, int]]:
        """Per stream of the current run: committed length, chunks in the heap
        tail, sealed segments."""
        if self.current is None:
            return {}
        return {
            key: {"length": b.length, "tail": len(b.tail), "segments": len(b.segments)}
            for key, b in self.current.buffers.streams.items()
        }

    async def close_stream(self, run_id: str, key: str) -> None:
        execution = self._executing(run_id)
        if execution is None:
            raise RunMoved(f"run {run_id} is not executing on {self.name}")
        buf = execution.buffers.get(key)
        await buf.drain()
        await asyncio.to_thread(self.conn.store.close_stream, run_id, key)
        buf.close()
