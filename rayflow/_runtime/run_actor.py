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
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import ray
from pydantic_core import to_jsonable_python

from rayflow._config import Settings
from rayflow._runtime import connection
from rayflow._runtime.calls import RunMoved
from rayflow._runtime.context import RunContext, run_of, set_run
from rayflow._runtime.journal import Journal
from rayflow._runtime.run_inputs import RunInputs
from rayflow._runtime.stream_buffer import ReadReply, StreamBuffers
from rayflow._status import RunStatus, WaitpointStatus
from rayflow.store.base import ChunkWrite, InboxMessage, Waitpoint

log = logging.getLogger("rayflow")

#: what `execute` returns besides a run status: the claim was lost (another
#: actor executes the run, or it is not queued any more)
SKIPPED = "SKIPPED"
#: `join` for a run this actor does not execute
LOST = "LOST"


class Suspended(BaseException):
    """Raised inside a task by `.wait()` to unwind it; carries the waitpoint
    the run waits on. A BaseException so that user code cannot catch it."""

    def __init__(self, waitpoint: Waitpoint) -> None:
        super().__init__(f"run {waitpoint.run_id} suspended on {waitpoint.stream_id!r}")
        self.waitpoint = waitpoint


def error_json(e: BaseException) -> str:
    return json.dumps(
        {
            "name": type(e).__name__,
            "message": str(e),
            "stackTrace": "".join(traceback.format_exception(e))[-8000:],
        }
    )


def backoff_s(retry: dict[str, Any], attempt: int) -> float:
    """Exponential backoff before attempt `attempt + 1`."""
    delay = float(retry.get("min_delay_s", 1.0)) * float(retry.get("factor", 2.0)) ** (attempt - 1)
    return min(delay, float(retry.get("max_delay_s", 30.0)))


def _pool_worker(thread: threading.Thread) -> bool:
    """A worker of a thread pool (the event loop's executor behind
    asyncio.to_thread, a store's connection pool): it outlives runs by design."""
    target = getattr(thread, "_target", None)
    module = getattr(target, "__module__", "") or ""
    return module.startswith(("concurrent.futures", "psycopg_pool"))


@dataclass
class Execution:
    """Everything of the run an actor executes; dropped when it ends."""

    run_id: str
    buffers: StreamBuffers
    inputs: RunInputs
    task: asyncio.Task[Any] | None = None
    canceled: asyncio.Event = field(default_factory=asyncio.Event)
    #: asyncio tasks the run's code created (to find any it leaves running)
    tasks: weakref.WeakSet[asyncio.Task[Any]] = field(default_factory=weakref.WeakSet)


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
        self._track_tasks()
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
            status = await self._execute(run_id)
        finally:
            execution, self.current = self.current, None
            if execution is not None:
                execution.buffers.release()
                await execution.inputs.close()
        recyclable = self._clean_after(run_id, execution, threads)
        self.run_id = self._cancel_pending = None
        return status, recyclable

    def _clean_after(
        self, run_id: str, execution: Execution | None, threads: set[threading.Thread]
    ) -> bool:
        """Whether nothing of the run is left running here."""
        if not self.settings.pool_recycle or self.served >= self.settings.max_runs_per_actor:
            return False
        pending = [t for t in (execution.tasks if execution else ()) if not t.done()]
        for t in pending:
            t.cancel()
        stray = [
            t.name
            for t in threading.enumerate()
            if t not in threads and t.is_alive() and not t.daemon and not _pool_worker(t)
        ]
        if pending or stray:
            log.warning(
                "run %s left %d asyncio task(s) and threads %s running; its actor %s is"
                " retired instead of recycled",
                run_id,
                len(pending),
                stray,
                self.name,
            )
            return False
        return True

    def _track_tasks(self) -> None:
        """Record every asyncio task created by the current run's code."""
        if self._tracking:
            return
        self._tracking = True
        loop = asyncio.get_running_loop()
        previous = loop.get_task_factory()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task: asyncio.Task[Any] = (
                previous(loop, coro, **kwargs)  # type: ignore[assignment]
                if previous is not None
                else asyncio.Task(coro, loop=loop, **kwargs)
            )
            context: contextvars.Context | None = kwargs.get("context")
            ctx = run_of(context)
            execution = self.current
            if ctx is not None and execution is not None and ctx.run_id == execution.run_id:
                execution.tasks.add(task)
            return task

        loop.set_task_factory(factory)

    async def _execute(self, run_id: str) -> str:
        store = self.conn.store
        claim = await asyncio.to_thread(store.claim_run, run_id, self.name)
        run = claim.run
        if run is None:
            return SKIPPED
        if not claim.claimed:
            return run.status if run.finished else SKIPPED
        execution = self.current = Execution(
            run_id,
            StreamBuffers(run_id, store, self.settings),
            RunInputs(store, run_id, resolved=claim.waitpoint),
        )
        if self._cancel_pending == run_id:
            execution.canceled.set()
        blob = await asyncio.to_thread(store.get_task, run.task_id)
        if blob is None:
            error = {"name": "TaskNotFound", "message": f"task {run.task_id!r} is not registered"}
            await asyncio.to_thread(
                store.finish_run, run_id, RunStatus.FAILED, None, json.dumps(error)
            )
            return RunStatus.FAILED
        # unpickled per run: module globals of one run's code are not the next one's
        task = cloudpickle.loads(blob)
        options = json.loads(run.options)
        retry = options.get("retry") or {}
        max_attempts = int(retry.get("max_attempts", 1))
        attempt = run.attempt
        # max_duration counts execution, not time spent suspended in .wait()
        started = time.time()
        max_duration = options.get("max_duration_s")
        payload = json.loads(run.payload)
        status: str
        output: str | None = None
        error_text: str | None = None
        while True:
            journal = await asyncio.to_thread(Journal, store, run_id, attempt)
            if execution.canceled.is_set():
                return RunStatus.CANCELED
            ctx = RunContext(
                run_id=run_id,
                task_id=run.task_id,
                attempt=attempt,
                parent_id=run.parent_id,
                root_id=run.root_id or run_id,
                journal=journal,
                buffers=execution.buffers,
            )
            ctx.inputs = execution.inputs
            await execution.inputs.prepare(journal)
            execution.inputs.bind(ctx)
            execution.task = asyncio.get_running_loop().create_task(self._call(task, payload, ctx))
            try:
                if max_duration is not None:
                    remaining = max(0.0, started + float(max_duration) - time.time())
                    result = await asyncio.wait_for(execution.task, remaining)
                else:
                    result = await execution.task
                status, output = RunStatus.COMPLETED, json.dumps(to_jsonable_python(result))
            except Suspended as s:
                return await self._suspend(execution, s.waitpoint)
            except asyncio.TimeoutError:
                status = RunStatus.TIMED_OUT
                error_text = json.dumps(
                    {
                        "name": "MaxDurationExceeded",
                        "message": f"run {run_id} exceeded max_duration of {max_duration} s",
                    }
                )
            except asyncio.CancelledError:
                if not execution.canceled.is_set():
                    raise
                status = RunStatus.CANCELED
            except Exception as e:
                if attempt < max_attempts and not execution.canceled.is_set():
                    log.warning("run %s attempt %d failed: %r; retrying", run_id, attempt, e)
                    if await self._backoff(execution, backoff_s(retry, attempt)):
                        return RunStatus.CANCELED
                    attempt += 1
                    if not await asyncio.to_thread(
                        store.set_active_status, run_id, RunStatus.EXECUTING, attempt=attempt
                    ):
                        return RunStatus.CANCELED  # canceled while it backed off
                    continue
                status, error_text = RunStatus.FAILED, error_json(e)
            break
        await execution.buffers.drain()
        await asyncio.to_thread(store.finish_run, run_id, status, output, error_text)
        execution.buffers.close_all()
        return status

    @staticmethod
    async def _backoff(execution: Execution, delay_s: float) -> bool:
        """Sleep before a retry; True when the run was canceled meanwhile."""
        try:
            await asyncio.wait_for(execution.canceled.wait(), delay_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def _suspend(self, execution: Execution, waitpoint: Waitpoint) -> str:
        """Everything written is durable, then WAITING + its waitpoint in one
        transaction. A message stored before the waitpoint existed woke
        nobody: the run then resolves its own waitpoint and is queued again."""
        store = self.conn.store
        await execution.inputs.flush_records()
        await execution.buffers.drain()
        if not await asyncio.to_thread(store.suspend_run, waitpoint):
            run = await asyncio.to_thread(store.get_run, execution.run_id)
            return run.status if run is not None else SKIPPED
        raced = await asyncio.to_thread(execution.inputs.oldest_unconsumed, waitpoint.stream_id)
        if raced is not None and await asyncio.to_thread(
            store.resolve_waitpoint, execution.run_id, WaitpointStatus.RESOLVED, raced.seq
        ):
            return RunStatus.QUEUED
        return RunStatus.WAITING

    async def _call(self, task: Any, payload: Any, ctx: RunContext) -> Any:
        set_run(ctx)
        return await task.invoke(payload)

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
    async def read(self, run_id: str, key: str, start: int, limit: int, wait_s: float) -> ReadReply:
        execution = self._executing(run_id)
        if execution is None:
            return ReadReply(rows=[], from_store=True)
        buf = await execution.buffers.find(key)
        if buf is None:
            # nobody wrote this key (yet): no buffer for it, just wait until
            # some stream of the run is created (or the run ends or leaves)
            await execution.buffers.wait_created(wait_s)
            if self._executing(run_id) is not execution:
                return ReadReply(rows=[], from_store=True)
            buf = execution.buffers.streams.get(key)
            if buf is None:
                return ReadReply(rows=[], closed=execution.buffers.closed)
        return await buf.read(start, limit, wait_s)

    async def append(self, run_id: str, key: str, writes: list[ChunkWrite]) -> list[int | None]:
        execution = self._executing(run_id)
        if execution is None:
            raise RunMoved(f"run {run_id} is not executing on {self.name}")
        return await execution.buffers.get(key).submit_many(writes)

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
