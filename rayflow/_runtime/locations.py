"""Where live runs execute, as this process last heard: no Controller call per write.

A writer or reader outside a run needs the RunActor executing it. Asking the
Controller costs a Ray call and a Store read each time; this cache asks once
per run and keeps the answer until it is found stale. Staleness is always
detected by the actor itself, never assumed away: RunActors are recycled, so
a cached handle may execute another run later, and every RunActor method
takes the run id and answers `RunMoved` (writes) or `from_store` (reads)
when it does not execute that run; a dead actor raises `RayActorError`.
The caller then `forget`s the entry and locates again.

A reader's first look at the Store names the RunActor too: an EXECUTING
run's row carries its actor's Ray name (`RunRecord.actor_name`), and `named`
turns names into handles once per actor per process — a burst of readers of
runs on two actors asks Ray twice, not the Controller once per batch of runs
(its `locate_many` reads every run again). A row's name is as stale-prone as
a cached entry and found stale the same way.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import ray

from rayflow._runtime import connection
from rayflow._runtime.batching import CallGroup
from rayflow._runtime.calls import call

#: runs remembered per process (a replica serves many); oldest forgotten first
MAX_ENTRIES = 10_000

_actors: OrderedDict[str, Any] = OrderedDict()
#: RunActors by Ray name, as looked up (`named`); oldest forgotten first
_named: OrderedDict[str, Any] = OrderedDict()
#: actors remembered by name per process (a pool rarely holds more)
MAX_NAMED = 1000
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
            global locate_calls
            locate_calls += 1
            return list(await call(conn.controller.locate_many.remote(run_ids)))

        group = groups[id(conn)] = CallGroup(locate_many)
    return group


#: `locate_many` calls this process made (tests count them)
locate_calls = 0


def named(names: Iterable[str], namespace: str) -> dict[str, Any]:
    """The RunActors called `names` (run rows' `actor_name`) that Ray knows:
    each looked up once per process (a blocking Ray call: call this in a
    thread), the same handle after that. A name Ray does not know (its
    actor is gone) is left out; the caller locates that run instead."""
    found: dict[str, Any] = {}
    missing = []
    with _lock:
        for name in names:
            actor = _named.get(name)
            if actor is None:
                missing.append(name)
            else:
                found[name] = actor
    for name in missing:
        try:
            actor = ray.get_actor(name, namespace=namespace)
        except ValueError:
            continue
        found[name] = actor
        with _lock:
            _named[name] = actor
            while len(_named) > MAX_NAMED:
                _named.popitem(last=False)
    return found


def named_now(name: str) -> Any:
    """The RunActor called `name` if `named` looked it up before, else None
    (no Ray call)."""
    with _lock:
        return _named.get(name)


def dead(actor: Any) -> None:
    """`actor` is gone (a call raised `RayActorError`): no run row's name
    leads to it any more."""
    with _lock:
        for name in [n for n, a in _named.items() if a._actor_id == actor._actor_id]:
            del _named[name]


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
