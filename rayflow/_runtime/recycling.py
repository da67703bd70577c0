"""Recycling: whether a RunActor may serve another run.

After a run the actor goes back to the pool only if nothing of the run is
left running there: no asyncio task the run's code created is still pending
and no non-daemon thread it started is alive (thread-pool workers outlive
runs by design and do not count). Otherwise — or when recycling is switched
off, or the actor has served `max_runs_per_actor` runs — it is retired.
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
from rayflow._runtime.context import run_of

log = logging.getLogger("rayflow")


def _pool_worker(thread: threading.Thread) -> bool:
    """A worker of a thread pool (the event loop's executor behind
    asyncio.to_thread, a store's connection pool): it outlives runs by design."""
    target = getattr(thread, "_target", None)
    module = getattr(target, "__module__", "") or ""
    return module.startswith(("concurrent.futures", "psycopg_pool"))


def clean_after(
    settings: Settings,
    served: int,
    actor_name: str,
    run_id: str,
    execution: Execution | None,
    threads: set[threading.Thread],
) -> bool:
    """Whether nothing of the run is left running here (and the actor may be
    recycled); cancels the asyncio tasks the run left. `threads` are the
    threads that were alive before the run started."""
    if not settings.pool_recycle or served >= settings.max_runs_per_actor:
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
            actor_name,
        )
        return False
    return True


def track_tasks(current: Callable[[], Execution | None]) -> None:
    """Record every asyncio task created by the current run's code (in its
    `Execution.tasks`). Install once per event loop."""
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
        execution = current()
        if ctx is not None and execution is not None and ctx.run_id == execution.run_id:
            execution.tasks.add(task)
        return task

    loop.set_task_factory(factory)
