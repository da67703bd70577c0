"""Where live runs execute, as this process last heard: no Controller call per write.

A writer or reader outside a run needs the RunActor executing it. Asking the
Controller costs a Ray call and a Store read each time; this cache asks once
per run and keeps the answer until it is found stale. Staleness is always
detected by the actor itself, never assumed away: RunActors are recycled, so
a cached handle may execute another run later, and every RunActor method
takes the run id and answers `RunMoved` (writes) or `from_store` (reads)
when it does not execute that run; a dead actor raises `RayActorError`.
The caller then `forget`s the entry and locates again.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import OrderedDict
from typing import Any

from rayflow._runtime import connection
from rayflow._runtime.batching import CallGroup
from rayflow._runtime.calls import call

#: runs remembered per process (a replica serves many); oldest forgotten first
MAX_ENTRIES = 10_000

_actors: OrderedDict[str, Any] = OrderedDict()
#: the process's telling thread (`run_appender`) uses it beside the event loops
_lock = threading.Lock()


def cached(run_id: str) -> Any:
    """The RunActor last seen executing `run_id`, or None."""
    with _lock:
        actor = _actors.get(run_id)
        if actor is not None:
            _actors.move_to_end(run_id)
        return actor


async def locate(run_id: str) -> tuple[str | None, Any]:
    """(status, RunActor or None). A cache hit returns status None (unknown,
    but the run was live); a miss asks the Controller, which raises
    RunNotFound for an unknown run. The misses of this event loop made
    together share one Controller call (1,000 readers starting at once)."""
    actor = cached(run_id)
    if actor is not None:
        return None, actor
    status, actor = await _group(connection.current()).submit(run_id)
    if actor is not None:
        remember(run_id, actor)
    return status, actor


#: per event loop, per connection: the locates waiting for the call in flight
_groups: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[int, CallGroup[str, tuple[str, Any]]]
] = weakref.WeakKeyDictionary()


def _group(conn: connection.Connection) -> CallGroup[str, tuple[str, Any]]:
    groups = _groups.setdefault(asyncio.get_running_loop(), {})
    group = groups.get(id(conn))
    if group is None:
        groups.clear()  # an earlier connection's (rayflow.init after shutdown)

        async def locate_many(run_ids: list[str]) -> list[Any]:
            return list(await call(conn.controller.locate_many.remote(run_ids)))

        group = groups[id(conn)] = CallGroup(locate_many)
    return group


def remember(run_id: str, actor: Any) -> None:
    with _lock:
        _actors[run_id] = actor
        _actors.move_to_end(run_id)
        while len(_actors) > MAX_ENTRIES:
            _actors.popitem(last=False)


def forget(run_id: str, actor: Any = None) -> None:
    """Drop the entry (only if it still is `actor`, when given: a newer
    location found meanwhile stays)."""
    with _lock:
        if actor is None or _actors.get(run_id) is actor:
            _actors.pop(run_id, None)
