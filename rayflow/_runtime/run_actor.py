"""RunActor: one Ray actor per run. Executes the task, owns its output streams.

The Controller hands a warm RunActor a run id (`execute`); the actor loads
everything else from the Store (payload, the pickled task, the journal), so
a run can be started, resumed after a crash or revived after a wait on any
node. `execute` returns when the run has finished or suspended; the
Controller then retires the actor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from typing import Any

import cloudpickle
import ray
from pydantic_core import to_jsonable_python

from rayflow._config import Settings
from rayflow._runtime import connection
from rayflow._runtime.context import RunContext, set_run
from rayflow._runtime.inputs import RunInputs
from rayflow._runtime.journal import Journal
from rayflow._runtime.output import ReadReply, StreamBuffers
from rayflow.errors import RunFinished
from rayflow.store.base import ChunkWrite, InboxMessage, now_ms

log = logging.getLogger("rayflow")


class Suspended(BaseException):
    """Raised inside a task by `.wait()` to unwind it; the run is WAITING."""


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


@ray.remote
class RunActor:
    def __init__(self, settings_json: str) -> None:
        settings = Settings.model_validate_json(settings_json)
        self.conn = connection.connect(settings)
        self.settings = settings
        self.run_id: str | None = None
        self.buffers: StreamBuffers | None = None
        self.inputs: RunInputs | None = None
        self._task: asyncio.Task[Any] | None = None
        self._canceled = False
        self._execution: asyncio.Future[str] | None = None

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        import os

        return os.getpid()

    # -- executing a run -------------------------------------------------------
    async def execute(self, run_id: str) -> str:
        """Run (or resume) `run_id` to its end or its next suspension."""
        self._execution = asyncio.ensure_future(self._execute(run_id))
        return await asyncio.shield(self._execution)

    async def join(self) -> str:
        """Wait for the run being executed (a restarted Controller re-attaching)."""
        while self._execution is None:
            await asyncio.sleep(0.05)
        return await asyncio.shield(self._execution)

    async def _execute(self, run_id: str) -> str:
        store = self.conn.store
        run = store.get_run(run_id)
        if run is None:
            raise RunFinished(f"run {run_id} does not exist")
        if run.finished:
            return run.status
        self.run_id = run_id
        self.buffers = StreamBuffers(run_id, store, self.settings)
        self.inputs = RunInputs(store, run_id)
        blob = store.get_task(run.task_id)
        if blob is None:
            store.finish_run(
                run_id,
                "FAILED",
                None,
                json.dumps(
                    {"name": "TaskNotFound", "message": f"task {run.task_id!r} is not registered"}
                ),
            )
            return "FAILED"
        task = cloudpickle.loads(blob)
        options = json.loads(run.options)
        retry = options.get("retry") or {}
        max_attempts = int(retry.get("max_attempts", 1))
        attempt = max(run.attempt, 1)
        if not store.set_active_status(
            run_id, "EXECUTING", attempt=attempt, started_at=run.started_at or now_ms()
        ):
            return "CANCELED"  # canceled before it started
        # max_duration counts execution, not time spent suspended in .wait()
        started = now_ms()
        max_duration = options.get("max_duration_s")
        payload = json.loads(run.payload)
        status: str
        output: str | None = None
        error: str | None = None
        while True:
            ctx = RunContext(
                run_id=run_id,
                task_id=run.task_id,
                attempt=attempt,
                parent_id=run.parent_id,
                root_id=run.root_id or run_id,
                journal=await asyncio.to_thread(Journal, store, run_id, attempt),
                buffers=self.buffers,
            )
            ctx.inputs = self.inputs
            self.inputs.bind(ctx)
            self._task = asyncio.get_running_loop().create_task(self._call(task, payload, ctx))
            try:
                if max_duration is not None:
                    remaining = max(0.0, started / 1000 + float(max_duration) - time.time())
                    result = await asyncio.wait_for(self._task, remaining)
                else:
                    result = await self._task
                status, output = "COMPLETED", json.dumps(to_jsonable_python(result))
            except Suspended:
                await self.buffers.drain()
                await asyncio.to_thread(store.set_active_status, run_id, "WAITING", actor_name=None)
                return "WAITING"
            except asyncio.TimeoutError:
                status = "TIMED_OUT"
                error = json.dumps(
                    {
                        "name": "MaxDurationExceeded",
                        "message": f"run {run_id} exceeded max_duration of {max_duration} s",
                    }
                )
            except asyncio.CancelledError:
                if not self._canceled:
                    raise
                status = "CANCELED"
            except Exception as e:
                if attempt < max_attempts and not self._canceled:
                    log.warning("run %s attempt %d failed: %r; retrying", run_id, attempt, e)
                    await asyncio.sleep(backoff_s(retry, attempt))
                    attempt += 1
                    store.update_run(run_id, attempt=attempt)
                    continue
                status, error = "FAILED", error_json(e)
            break
        await self.buffers.drain()
        await asyncio.to_thread(store.finish_run, run_id, status, output, error)
        self.buffers.close_all()
        return status

    async def _call(self, task: Any, payload: Any, ctx: RunContext) -> Any:
        set_run(ctx)
        return await task.invoke(payload)

    def deliver(self, stream_id: str, message: InboxMessage) -> None:
        """The Inbox made a message durable for this run: take it in."""
        if self.inputs is not None:
            self.inputs.poke(stream_id, message)

    async def cancel(self) -> None:
        """Stop the run's code (the Controller has already marked it CANCELED)."""
        self._canceled = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.buffers is not None:
            await self.buffers.drain()
            self.buffers.close_all()

    # -- output streams, for readers and writers in other processes -----------
    async def read(self, key: str, start: int, limit: int, wait_s: float) -> ReadReply:
        if self.buffers is None:
            return ReadReply(rows=[], from_store=True)
        return await self.buffers.get(key).read(start, limit, wait_s)

    async def append(self, key: str, writes: list[ChunkWrite]) -> list[int | None]:
        if self.buffers is None:
            raise RunFinished(f"run actor is not executing a run; write to the store for {key!r}")
        return await self.buffers.get(key).submit_many(writes)

    def stream_stats(self) -> dict[str, dict[str, int]]:
        """Per stream: committed length, chunks in the heap tail, sealed segments."""
        if self.buffers is None:
            return {}
        return {
            key: {"length": b.length, "tail": len(b.tail), "segments": len(b.segments)}
            for key, b in self.buffers.streams.items()
        }

    async def close_stream(self, key: str) -> None:
        if self.buffers is None:
            return
        buf = self.buffers.get(key)
        await buf.drain()
        await asyncio.to_thread(self.conn.store.close_stream, buf.run_id, key)
        buf.close()
