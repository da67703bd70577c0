"""Executing one run on a RunActor: the claim, the attempt loop, suspension.

The actor claims the run in the Store (one transaction: QUEUED -> EXECUTING
on this actor) and loads everything else from there — payload, the pickled
task, the journal — so a run can start, resume after a crash or be revived
after a wait on any actor. A new run the Controller created on this actor
comes with its row and task instead (`fresh`): its creation claimed it.
Each attempt gets a fresh journal and context; a failed attempt is retried
with exponential backoff while `retry.max_attempts` allows and the run is
not canceled. `.wait()` unwinds the task with
`Suspended`: then everything written is made durable before the run goes
WAITING, so a revived run reads back all it wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic_core import to_jsonable_python

from rayflow._config import Settings
from rayflow._runtime import registry, run_batches, session_inputs, stream_journal
from rayflow._runtime.context import RunContext, set_run
from rayflow._runtime.journal import Journal
from rayflow._runtime.run_inputs import RunInputs
from rayflow._runtime.stream_buffers import StreamBuffers
from rayflow._status import RunStatus, WaitpointStatus
from rayflow.errors import Unavailable
from rayflow.store.base import SESSION_WAIT_PREFIX, TOKEN_WAIT_PREFIX, Store, Waitpoint

log = logging.getLogger("rayflow")
T = TypeVar("T")

#: what `execute` returns besides a run status: the claim was lost (another
#: actor executes the run, or it is not queued any more)
SKIPPED = "SKIPPED"
#: ... or the Store (or another part of rayflow) stayed unreachable past its
#: retries: the attempt is abandoned, not failed, and the run resumes from its
#: journal once the Store answers again (the task's code did nothing wrong)
UNAVAILABLE = "UNAVAILABLE"


class Suspended(BaseException):
    """Raised inside a task by `.wait()` to unwind it; carries the waitpoint
    the run waits on. A BaseException so that user code cannot catch it."""

    def __init__(self, waitpoint: Waitpoint) -> None:
        super().__init__(f"run {waitpoint.run_id} suspended on {waitpoint.stream_id!r}")
        self.waitpoint = waitpoint


@dataclass
class Execution:
    """Everything of one run an actor executes (beside other runs); dropped
    when the run leaves the actor."""

    run_id: str
    buffers: StreamBuffers
    inputs: RunInputs
    task: asyncio.Task[Any] | None = None
    canceled: asyncio.Event = field(default_factory=asyncio.Event)
    #: asyncio tasks the run's code created (to find any it leaves running)
    tasks: weakref.WeakSet[asyncio.Task[Any]] = field(default_factory=weakref.WeakSet)
    #: the longest the run's code held its actor's event loop (`loop_watch`), ms
    loop_blocked_ms: int = 0
    task_id: str = ""


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


async def execute(
    store: Store,
    settings: Settings,
    run_id: str,
    actor_name: str,
    started: Callable[[Execution], None],
    fresh: run_batches.Start | None = None,
) -> str:
    """`_execute`, or UNAVAILABLE when rayflow's own infrastructure (the
    Store, an Inbox) stayed unreachable past its retries on the way."""
    try:
        return await _execute(store, settings, run_id, actor_name, started, fresh)
    except Unavailable as e:
        log.warning("run %s: %s; it resumes from its journal when the Store answers", run_id, e)
        return UNAVAILABLE


async def _execute(
    store: Store,
    settings: Settings,
    run_id: str,
    actor_name: str,
    started: Callable[[Execution], None],
    fresh: run_batches.Start | None,
) -> str:
    """Claim `run_id` and run it to its end or its next suspension; returns
    its status (SKIPPED when it could not be claimed, QUEUED when a message
    woke it while it suspended). `started` is handed the run's `Execution`
    as soon as the claim succeeded (the actor keeps it as its current run).
    `fresh`: a new run the Controller created on this actor — claimed by
    its creation, it starts with what it holds, no Store round."""
    start = fresh if fresh is not None else await run_batches.start(store, run_id, actor_name)
    claim = start.claim
    run = claim.run
    if run is None:
        return SKIPPED
    if not claim.claimed:
        return run.status if run.finished else SKIPPED
    execution = Execution(
        run_id,
        StreamBuffers(run_id, store, settings, known=start.streams),
        RunInputs(store, run_id, resolved=claim.waitpoint, with_messages=start.inbox_streams),
        task_id=run.task_id,
    )
    started(execution)
    blob = start.blob
    if blob is None:
        error = {"name": "TaskNotFound", "message": f"task {run.task_id!r} is not registered"}
        await run_batches.finish(store, run_id, RunStatus.FAILED, None, json.dumps(error))
        return RunStatus.FAILED
    try:
        # unpickled per run: module globals of one run's code are not the next one's
        task = registry.load(blob)
    except Unavailable:
        raise
    except Exception as e:
        # not a crash: another actor would fail to load it the same way
        failure = _load_error(run_id, run.task_id, e)
        await asyncio.to_thread(store.finish_run, run_id, RunStatus.FAILED, None, failure)
        return RunStatus.FAILED
    options = json.loads(run.options)
    retry = options.get("retry") or {}
    max_attempts = int(retry.get("max_attempts", 1))
    attempt = run.attempt
    # max_duration counts execution, not time spent suspended in .wait()
    started_at = time.time()
    max_duration = options.get("max_duration_s")
    payload = json.loads(run.payload)
    status: str
    output: str | None = None
    error_text: str | None = None
    while True:
        if attempt == run.attempt:
            # the claimed attempt's, read with the claim
            journal = Journal(store, run_id, attempt, start.journal)
        else:
            journal = await run_batches.journal(store, run_id, attempt)
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
            trigger_metadata=_trigger_metadata(options),
            session=_session(options),
        )
        ctx.inputs = execution.inputs
        await execution.inputs.prepare(journal)
        await session_inputs.prepare(ctx)
        execution.inputs.bind(ctx)
        execution.task = asyncio.get_running_loop().create_task(_call(task, payload, ctx))
        try:
            if max_duration is not None:
                remaining = max(0.0, started_at + float(max_duration) - time.time())
                result = await asyncio.wait_for(execution.task, remaining)
            else:
                result = await execution.task
            status, output = RunStatus.COMPLETED, json.dumps(to_jsonable_python(result))
        except Suspended as s:
            return await _suspend(store, execution, s.waitpoint)
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
        except Unavailable:
            raise  # rayflow's outage, not the task's failure: see `execute`
        except Exception as e:
            if attempt < max_attempts and not execution.canceled.is_set():
                log.warning("run %s attempt %d failed: %r; retrying", run_id, attempt, e)
                if await _backoff(execution, backoff_s(retry, attempt)):
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
    await run_batches.finish(store, run_id, status, output, error_text)
    execution.buffers.close_all()
    return status


def _load_error(run_id: str, task_id: str, e: Exception) -> str:
    error = json.loads(error_json(e))
    error["name"] = "TaskLoadError"
    error["message"] = (
        f"run {run_id}: the code of task {task_id!r} cannot be loaded in its RunActor:"
        f" {type(e).__name__}: {e}. Something the task's code names failed to unpickle or"
        " to build there (a stream's type, a global); fix it and trigger the run again."
    )
    return json.dumps(error)


def _session(options: dict[str, Any]) -> dict[str, Any] | None:
    if options.get("session_id") is None:
        return None
    return {
        "id": options["session_id"],
        "continuation": bool(options.get("session_continuation")),
        "previous_run_id": options.get("session_previous_run_id"),
        "idle_timeout_s": options.get("session_idle_timeout_s"),
    }


def _trigger_metadata(options: dict[str, Any]) -> dict[str, Any]:
    given = options.get("metadata")
    return dict(given) if isinstance(given, dict) else {}


async def _backoff(execution: Execution, delay_s: float) -> bool:
    """Sleep before a retry; True when the run was canceled meanwhile."""
    try:
        await asyncio.wait_for(execution.canceled.wait(), delay_s)
    except asyncio.TimeoutError:
        return False
    return True


async def _suspend(store: Store, execution: Execution, waitpoint: Waitpoint) -> str:
    """Everything written is durable, then WAITING + its waitpoint in one
    transaction. A message stored before the waitpoint existed woke
    nobody: the run then resolves its own waitpoint and is queued again."""
    await execution.inputs.flush_records()
    if execution.inputs.ctx is not None:
        await session_inputs.settle(execution.inputs.ctx)
    await execution.buffers.drain()
    if execution.inputs.ctx is not None:
        # each writer's position, so a replay never writes past it (stream_journal)
        await stream_journal.mark_suspension(execution.inputs.ctx.journal, waitpoint.stream_id)
    if not await asyncio.to_thread(store.suspend_run, waitpoint):
        run = await asyncio.to_thread(store.get_run, execution.run_id)
        return run.status if run is not None else SKIPPED
    # the run is WAITING now: an outage here must not end the attempt before
    # this look (nobody else looks, and the run would wait with its message there)
    if waitpoint.stream_id.startswith(TOKEN_WAIT_PREFIX):
        # a wait token completed before the waitpoint existed woke nobody
        token_id = waitpoint.stream_id.removeprefix(TOKEN_WAIT_PREFIX)
        if await _answered(store.settle_token_wait, execution.run_id, token_id):
            return RunStatus.QUEUED
        return RunStatus.WAITING
    if waitpoint.stream_id.startswith(SESSION_WAIT_PREFIX):
        # a record sent to the session before the waitpoint existed woke nobody
        session_id = waitpoint.stream_id.removeprefix(SESSION_WAIT_PREFIX)
        if await _answered(store.settle_session_wait, execution.run_id, session_id):
            return RunStatus.QUEUED
        return RunStatus.WAITING
    raced = await _answered(execution.inputs.oldest_unconsumed, waitpoint.stream_id)
    if raced is not None and await _answered(
        store.resolve_waitpoint, execution.run_id, WaitpointStatus.RESOLVED, raced.seq
    ):
        return RunStatus.QUEUED
    return RunStatus.WAITING


#: the longest pause between two tries of a Store call that must be answered
ANSWER_POLL_MAX_S = 5.0


async def _answered(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a thread, tried again while the Store is unreachable."""
    pause = 0.05
    while True:
        try:
            return await asyncio.to_thread(fn, *args)
        except Unavailable as e:
            log.warning("the Store is unreachable (%s); trying again in %.2f s", e, pause)
        await asyncio.sleep(pause)
        pause = min(2 * pause, ANSWER_POLL_MAX_S)


async def _call(task: Any, payload: Any, ctx: RunContext) -> Any:
    set_run(ctx)
    return await task.invoke(payload)
