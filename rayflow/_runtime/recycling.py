"""Recycling: whether a RunActor may take more runs after one left it.

An actor executes many runs at once (or one, `runs_per_actor=1`). When a run
leaves it, the actor stays in the pool only if nothing of that run is left
running there: no asyncio task the run's code created is still pending
(those are canceled) and no non-daemon thread the run's code started is
alive (thread-pool workers outlive runs by design and do not count). Tasks
and threads are told apart per run — a task by the run context it was
created in, a thread by the run whose code started it — so a run that
leaves cleanly is not blamed for another run's thread. Otherwise — or when
recycling is switched off, or the actor has served `max_runs_per_actor`
runs — the actor is retired: it takes no new run, and it is stopped once its
other runs have left.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable
from typing import Any

from rayflow._config import Settings
from rayflow._runtime.attempts import Execution
from rayflow._runtime.context import current_run, run_of

log = logging.getLogger("rayflow")

#: the attribute a thread started by a run's code carries: the run's id
_RUN_ATTR = "_rayflow_run_id"


def _pool_worker(thread: threading.Thread) -> bool:
    """A worker of a thread pool (the event loop's executor behind
    asyncio.to_thread, a store's connection pool): it outlives runs by design."""
    target = getattr(thread, "_target", None)
    module = getattr(target, "__module__", "") or ""
    return module.startswith(("concurrent.futures", "psycopg_pool"))


def clean_after(
    settings: Settings, served: int, actor_name: str, run_id: str, execution: Execution | None
) -> bool:
    """Whether nothing of the run is left running here (and the actor may
    take more runs); cancels the asyncio tasks the run left."""
    pending = [t for t in (execution.tasks if execution else ()) if not t.done()]
    for t in pending:
        t.cancel()
    if not settings.pool_recycle or served >= settings.max_runs_per_actor:
        return False
    stray = [
        t.name
        for t in threading.enumerate()
        if getattr(t, _RUN_ATTR, None) == run_id
        and t.is_alive()
        and not t.daemon
        and not _pool_worker(t)
    ]
    if pending or stray:
        log.warning(
            "run %s left %d asyncio task(s) and threads %s running; its actor %s is"
            " retired (it takes no new run and stops once its other runs have left)",
            run_id,
            len(pending),
            stray,
            actor_name,
        )
        return False
    return True


def track_threads() -> None:
    """Mark every thread started from a run's code with the run's id (once
    per process; `clean_after` looks for them)."""
    start = threading.Thread.start
    if getattr(start, "_rayflow_tracks", False):
        return

    def tracked_start(self: threading.Thread) -> None:
        ctx = current_run()
        if ctx is not None:
            setattr(self, _RUN_ATTR, ctx.run_id)
        start(self)

    tracked_start._rayflow_tracks = True  # type: ignore[attr-defined]
    threading.Thread.start = tracked_start  # type: ignore[method-assign]


def track_tasks(executing: Callable[[str], Execution | None]) -> None:
    """Record every asyncio task created by a run's code in that run's
    `Execution.tasks` (`executing(run_id)`). Install once per event loop."""
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
        if ctx is not None:
            execution = executing(ctx.run_id)
            if execution is not None:
                execution.tasks.add(task)
        return task

    loop.set_task_factory(factory)
