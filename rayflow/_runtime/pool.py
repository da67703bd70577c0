"""The elastic pool of RunActors: runs are placed on actors' capacity.

An actor executes up to its capacity of runs at once: `runs_per_actor` runs
of `async def` tasks share one process's event loop (default:
`Settings.runs_per_actor`); a task with `runs_per_actor=1`, or one that
declares resources (`num_cpus`, `num_gpus`, `memory`, custom: they are per
run), gets actors of capacity 1 — a process per run, recycled. There is one
pool per shape (resources + capacity), elastic: a new run goes to the
least-loaded actor of its shape that takes runs (ties: the one used last,
so sequential runs stay on one warm process), and an actor takes no run
while it is full, retiring, or its event loop lags (`loop_lag_s`, watched
every WATCH_S: `RunActor.loop_lag`) — then the run waits for capacity and
the pool starts another actor.

Starting an actor costs ~0.3–0.4 s and Ray starts only a few a second on
these machines; an idle one costs ~50 MB. For capacity 1 the pool starts a
new actor only when a run would otherwise wait longer for a returning actor
than a start takes; for shared actors, when the capacity there is (and that
starting) is taken. The default shape keeps `pool_size` actors ready; idle
actors beyond the minimum (0 for other shapes) stop after `pool_idle_s`. A
retired actor (its run left something running, `max_runs_per_actor`, or it
died) takes no new run and is stopped once its last run has left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray

from rayflow._config import Settings
from rayflow._runtime.run_actor import RunActor

log = logging.getLogger("rayflow")

#: actor starts in flight at once per shape (Ray starts ~2–3 workers at a time)
MAX_STARTING = 2
#: a start takes about this long until a better estimate is measured
COLD_START_S = 0.5
#: how often the event loops of busy shared actors are looked at
WATCH_S = 0.25
#: an actor that does not say how its loop is within this long lags
WATCH_TIMEOUT_S = 1.0
#: what in a task's resources asks for a process per run by default
PER_RUN_RESOURCES = ("num_cpus", "num_gpus", "memory", "resources")


def actor_options(namespace: str, resources: dict[str, Any] | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": f"rayflow-run-{uuid.uuid4().hex[:16]}",
        "namespace": namespace,
        # detached: a run outlives a Controller restart
        "lifetime": "detached",
        "max_restarts": 0,
        "max_concurrency": 10_000,
    }
    for key in ("num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy"):
        if resources and resources.get(key) is not None:
            options[key] = resources[key]
    return options


def shape_of(resources: dict[str, Any] | None) -> str:
    return json.dumps(resources or {}, sort_keys=True)


def capacity_of(resources: dict[str, Any] | None, default: int) -> int:
    """Runs one actor of this shape executes at once: the task's
    `runs_per_actor`; else 1 when it declares resources (they are per run);
    else `default` (`Settings.runs_per_actor`)."""
    if resources and resources.get("runs_per_actor") is not None:
        return max(1, int(resources["runs_per_actor"]))
    if resources and any(resources.get(k) is not None for k in PER_RUN_RESOURCES):
        return 1
    return max(1, default)


@dataclass
class _Actor:
    name: str
    handle: Any
    #: runs placed on it and not yet left
    runs: int = 0
    #: its event loop is late: no new run until it recovers
    lagging: bool = False
    #: no new run; stopped once `runs` is 0
    retiring: bool = False
    #: when a run last left it (or it started): the most recent is preferred
    #: among equals, and an idle one is stopped `pool_idle_s` after this
    last_used: float = field(default_factory=time.monotonic)
    #: when its latest run was placed (capacity 1: how long runs hold it)
    taken_at: float = field(default_factory=time.monotonic)

    def add_run(self) -> None:
        self.runs += 1
        self.taken_at = time.monotonic()


@dataclass
class _Shape:
    resources: dict[str, Any] | None
    capacity: int
    actors: dict[str, _Actor] = field(default_factory=dict)
    waiters: deque[tuple[asyncio.Future[tuple[str, Any]], float]] = field(default_factory=deque)
    starting: int = 0
    #: moving averages: how long a run holds an actor, how long a start takes
    hold_s: float = 0.05
    start_s: float = COLD_START_S
    #: when a run last left an actor (or one finished starting)
    last_return: float = field(default_factory=time.monotonic)
    grower: asyncio.Task[None] | None = None

    @property
    def busy(self) -> int:
        return sum(1 for a in self.actors.values() if a.runs > 0)

    def place(self) -> _Actor | None:
        """The least-loaded actor that takes a run now (ties: used last)."""
        best: _Actor | None = None
        for a in self.actors.values():
            if a.retiring or a.lagging or a.runs >= self.capacity:
                continue
            if best is None or (a.runs, -a.last_used) < (best.runs, -best.last_used):
                best = a
        return best

    def waiting(self) -> int:
        return sum(1 for f, _ in self.waiters if not f.done())


class RunActorPool:
    def __init__(self, settings: Settings, settings_json: str) -> None:
        self.settings, self.settings_json = settings, settings_json
        self.min_size = settings.pool_size
        self.max_size = settings.pool_max_size
        self._shapes: dict[str, _Shape] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = 0
        self._shrinker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    def _shape(self, resources: dict[str, Any] | None) -> _Shape:
        key = shape_of(resources)
        shape = self._shapes.get(key)
        if shape is None:
            capacity = capacity_of(resources, self.settings.runs_per_actor)
            shape = self._shapes[key] = _Shape(resources or None, capacity)
        return shape

    @property
    def total(self) -> int:
        """Actor processes, all shapes: running and starting."""
        return sum(len(s.actors) + s.starting for s in self._shapes.values())

    def stats(self) -> dict[str, int]:
        """Idle, busy, lagging and starting actors, runs placed, runs
        waiting for capacity, and how many actors were ever started."""
        actors = [a for s in self._shapes.values() for a in s.actors.values()]
        return {
            "idle": sum(1 for a in actors if a.runs == 0 and not a.retiring),
            "busy": sum(1 for a in actors if a.runs > 0),
            "lagging": sum(1 for a in actors if a.lagging),
            "starting": sum(s.starting for s in self._shapes.values()),
            "runs": sum(a.runs for a in actors),
            "waiting_runs": sum(s.waiting() for s in self._shapes.values()),
            "started": self._started,
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle -------------------------------------------------------------
    def fill_soon(self) -> None:
        """Bring the default shape up to its minimum (in parallel), start
        stopping idle actors past their time and watching event loops."""
        shape = self._shape(None)
        missing = self.min_size - len(shape.actors) - shape.starting
        for _ in range(max(0, missing)):
            self._start_soon(shape)
        if self._shrinker is None or self._shrinker.done():
            self._shrinker = asyncio.get_running_loop().create_task(self._shrink_loop())
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_loop())

    def _start_soon(self, shape: _Shape) -> None:
        # counted before the task runs, so a loop deciding to start more sees it
        shape.starting += 1
        self._started += 1
        self._spawn(self._start(shape))

    async def _start(self, shape: _Shape) -> None:
        began = time.monotonic()
        options = actor_options(self.settings.namespace, shape.resources)
        actor = RunActor.options(**options).remote(self.settings_json)  # type: ignore[attr-defined]
        try:
            await actor.ready.remote()
        except Exception:
            log.exception("a RunActor failed to start")
            ray.kill(actor, no_restart=True)
            return
        finally:
            shape.starting -= 1
        shape.start_s = 0.8 * shape.start_s + 0.2 * (time.monotonic() - began)
        shape.actors[options["name"]] = _Actor(options["name"], actor)
        shape.last_return = time.monotonic()
        self._serve_waiters(shape)

    def _serve_waiters(self, shape: _Shape) -> None:
        """Hand capacity that freed up (or appeared) to the runs waiting."""
        while shape.waiters:
            future, _ = shape.waiters[0]
            if future.done():
                shape.waiters.popleft()
                continue
            actor = shape.place()
            if actor is None:
                return
            shape.waiters.popleft()
            actor.add_run()
            future.set_result((actor.name, actor.handle))

    async def take(self, resources: dict[str, Any] | None) -> tuple[str, Any]:
        """An actor for a run of this shape: the least-loaded one with room,
        else the first to have room (a run leaves, an actor starts or its
        loop recovers). The run counts on the actor until `give_back` or
        `retire`."""
        shape = self._shape(resources)
        actor = shape.place() if not shape.waiting() else None
        if actor is not None:
            actor.add_run()
            name, handle = actor.name, actor.handle
        else:
            future: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
            shape.waiters.append((future, time.monotonic()))
            self._grow_soon(shape)
            try:
                name, handle = await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self.give_back(future.result()[0], future.result()[1], resources)
                raise
        return name, handle

    def take_now(self, resources: dict[str, Any] | None) -> tuple[str, Any] | None:
        """`take` when an actor of this shape has room now and no run waits
        for one; else None (the run then waits in `take`)."""
        shape = self._shape(resources)
        actor = shape.place() if not shape.waiting() else None
        if actor is None:
            return None
        actor.add_run()
        return actor.name, actor.handle

    def _grow_soon(self, shape: _Shape) -> None:
        if shape.grower is None or shape.grower.done():
            shape.grower = asyncio.get_running_loop().create_task(self._grow(shape))

    def _left(self, name: str, resources: dict[str, Any] | None) -> tuple[_Shape, _Actor | None]:
        """A run left actor `name`: count it off (and learn how long runs hold actors)."""
        shape = self._shape(resources)
        actor = shape.actors.get(name)
        now = time.monotonic()
        shape.last_return = now
        if actor is not None:
            actor.runs = max(0, actor.runs - 1)
            shape.hold_s = 0.9 * shape.hold_s + 0.1 * (now - actor.taken_at)
            actor.last_used = now
        return shape, actor

    def give_back(self, name: str, actor: Any, resources: dict[str, Any] | None) -> None:
        """A run left `actor` and left it clean: its place goes to the next run."""
        shape, entry = self._left(name, resources)
        if entry is not None and entry.retiring and entry.runs == 0:
            self._stop(shape, entry)
        self._serve_waiters(shape)

    def adopt(self, name: str, actor: Any, resources: dict[str, Any] | None) -> None:
        """Count a run found executing on `actor` (a restarted Controller)."""
        shape = self._shape(resources)
        entry = shape.actors.get(name)
        if entry is None:
            entry = shape.actors[name] = _Actor(name, actor)
        entry.runs += 1

    def retire(
        self, name: str, actor: Any, resources: dict[str, Any] | None, *, dead: bool = False
    ) -> None:
        """A run left `actor` unfit for more runs (or it died): it takes no
        new run and is stopped once its other runs have left (at once when
        dead: they are lost with it and resume elsewhere)."""
        shape, entry = self._left(name, resources)
        if entry is None:
            ray.kill(actor, no_restart=True)
        else:
            entry.retiring = True
            if dead or entry.runs == 0:
                self._stop(shape, entry)
        if shape.waiters:
            self._grow_soon(shape)

    def _stop(self, shape: _Shape, entry: _Actor) -> None:
        shape.actors.pop(entry.name, None)
        ray.kill(entry.handle, no_restart=True)

    async def _grow(self, shape: _Shape) -> None:
        """Start actors while runs wait. Capacity 1: only when waiting for
        a returning actor is expected to take longer than a start — no actor
        of the shape is busy, the runs queued ahead would keep the busy ones
        longer than a start takes, or none has come back for that long (its
        runs hold them: they stream, or wait in `.once()`). Shared actors:
        when the runs waiting exceed what the actors starting will take."""
        while shape.waiting():
            waiting = shape.waiting()
            busy = shape.busy
            if shape.capacity > 1:
                needed = waiting > shape.starting * shape.capacity
            else:
                # runs ahead of the newest waiter, served by the actors there are
                expected_s = shape.hold_s * waiting / max(1, busy + shape.starting)
                needed = shape.starting < waiting and (
                    busy == 0
                    or expected_s > shape.start_s
                    or time.monotonic() - shape.last_return > shape.start_s
                )
            if needed and shape.starting < MAX_STARTING and self.total < self.max_size:
                self._start_soon(shape)
                continue
            await asyncio.sleep(0.02)

    async def _watch_loop(self) -> None:
        """Every WATCH_S, ask the shared actors with runs how late their
        event loop is: past `loop_lag_s` an actor takes no new run until it
        is back under half that (or answers at all)."""
        while True:
            await asyncio.sleep(WATCH_S)
            watched = [
                (shape, a)
                for shape in self._shapes.values()
                if shape.capacity > 1
                for a in shape.actors.values()
                if (a.runs > 0 or a.lagging) and not a.retiring
            ]
            if not watched:
                continue
            lags = await asyncio.gather(*(self._lag(a) for _, a in watched), return_exceptions=True)
            limit = self.settings.loop_lag_s
            for (shape, a), lag in zip(watched, lags, strict=True):
                if isinstance(lag, BaseException):
                    continue  # a dead actor: its runs' supervision retires it
                if not a.lagging and lag > limit:
                    a.lagging = True
                    log.info("RunActor %s: event loop %.0f ms late; no new runs", a.name, lag * 1e3)
                elif a.lagging and lag < limit / 2:
                    a.lagging = False
                    self._serve_waiters(shape)
            for shape in {id(s): s for s, _ in watched}.values():
                if shape.waiting():
                    self._grow_soon(shape)

    async def _lag(self, actor: _Actor) -> float:
        try:
            return float(await asyncio.wait_for(actor.handle.loop_lag.remote(), WATCH_TIMEOUT_S))
        except asyncio.TimeoutError:
            return WATCH_TIMEOUT_S  # its loop cannot even answer

    async def _shrink_loop(self) -> None:
        idle_s = self.settings.pool_idle_s
        while True:
            await asyncio.sleep(max(0.1, min(5.0, idle_s / 4)))
            now = time.monotonic()
            for key, shape in self._shapes.items():
                keep = self.min_size if key == shape_of(None) else 0
                # oldest idle first; never below the minimum
                idle = sorted(
                    (a for a in shape.actors.values() if a.runs == 0 and not a.retiring),
                    key=lambda a: a.last_used,
                )
                while len(idle) > keep and now - idle[0].last_used >= idle_s:
                    self._stop(shape, idle.pop(0))
            self.fill_soon()

    def drain(self) -> list[Any]:
        """Every idle actor, now belonging to the caller (shutdown)."""
        actors = []
        for shape in self._shapes.values():
            for a in [a for a in shape.actors.values() if a.runs == 0]:
                shape.actors.pop(a.name)
                actors.append(a.handle)
        return actors
