"""The elastic pool of RunActors: runs go into and come out of processes.

Starting an actor costs ~0.3–0.4 s and Ray starts only a few a second on
these machines; an idle one costs ~50 MB. So a run never waits for a
process start when it can be avoided: the pool keeps `pool_size` idle
actors of the default resource shape ready, takes back every actor whose
run suspended or ended (recycling), and starts new actors only when a run
would otherwise wait longer for a returning actor than a start takes.
There is one pool per resource shape (`num_gpus=1`, custom resources), so
a GPU task, too, skips the start once one has run. Idle actors beyond the
minimum (0 for shapes other than the default) stop after `pool_idle_s`.
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


@dataclass
class _Shape:
    resources: dict[str, Any] | None
    idle: list[tuple[str, Any, float]] = field(default_factory=list)
    waiters: deque[tuple[asyncio.Future[tuple[str, Any]], float]] = field(default_factory=deque)
    busy: int = 0
    starting: int = 0
    #: moving averages: how long a run holds an actor, how long a start takes
    hold_s: float = 0.05
    start_s: float = COLD_START_S
    #: when an actor last came back (or finished starting)
    last_return: float = field(default_factory=time.monotonic)
    grower: asyncio.Task[None] | None = None


class RunActorPool:
    def __init__(self, settings: Settings, settings_json: str) -> None:
        self.settings, self.settings_json = settings, settings_json
        self.min_size = settings.pool_size
        self.max_size = settings.pool_max_size or settings.max_live_runs
        self._shapes: dict[str, _Shape] = {}
        self._taken_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = 0
        self._shrinker: asyncio.Task[None] | None = None

    def _shape(self, resources: dict[str, Any] | None) -> tuple[str, _Shape]:
        key = shape_of(resources)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _Shape(resources or None)
        return key, shape

    @property
    def total(self) -> int:
        return sum(len(s.idle) + s.busy + s.starting for s in self._shapes.values())

    def stats(self) -> dict[str, int]:
        """Idle, busy and starting actors, and how many were ever started."""
        shapes = self._shapes.values()
        return {
            "idle": sum(len(s.idle) for s in shapes),
            "busy": sum(s.busy for s in shapes),
            "starting": sum(s.starting for s in shapes),
            "waiting_runs": sum(len(s.waiters) for s in shapes),
            "started": self._started,
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle -------------------------------------------------------------
    def fill_soon(self) -> None:
        """Bring the default shape up to its minimum (in parallel) and start
        stopping idle actors past their time."""
        _, shape = self._shape(None)
        missing = self.min_size - len(shape.idle) - shape.busy - shape.starting
        for _ in range(max(0, missing)):
            self._start_soon(shape)
        if self._shrinker is None or self._shrinker.done():
            self._shrinker = asyncio.get_running_loop().create_task(self._shrink_loop())

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
        shape.busy += 1  # give_back counts it down again
        self.give_back(options["name"], actor, shape.resources, fresh=True)

    async def take(self, resources: dict[str, Any] | None) -> tuple[str, Any]:
        """An actor for a run of this shape: an idle one, the next one to
        come back, or a newly started one, whichever is first."""
        _, shape = self._shape(resources)
        if shape.idle:
            name, actor, _ = shape.idle.pop()
        else:
            future: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
            shape.waiters.append((future, time.monotonic()))
            if shape.grower is None or shape.grower.done():
                shape.grower = asyncio.get_running_loop().create_task(self._grow(shape))
            name, actor = await future
        shape.busy += 1
        self._taken_at[name] = time.monotonic()
        return name, actor

    def give_back(
        self, name: str, actor: Any, resources: dict[str, Any] | None, *, fresh: bool = False
    ) -> None:
        """A run left `actor` and it is clean: hand it to the next waiting run."""
        _, shape = self._shape(resources)
        shape.busy -= 1
        shape.last_return = time.monotonic()
        taken = self._taken_at.pop(name, None)
        if taken is not None and not fresh:
            shape.hold_s = 0.9 * shape.hold_s + 0.1 * (time.monotonic() - taken)
        while shape.waiters:
            future, _ = shape.waiters.popleft()
            if not future.done():
                future.set_result((name, actor))  # take() counts it busy
                return
        shape.idle.append((name, actor, time.monotonic()))

    def adopt(self, resources: dict[str, Any] | None) -> None:
        """Count an actor found executing a run (a restarted Controller)."""
        self._shape(resources)[1].busy += 1

    def retire(self, name: str, actor: Any, resources: dict[str, Any] | None) -> None:
        """A run left `actor` unfit for another run (or it died): stop it."""
        _, shape = self._shape(resources)
        shape.busy -= 1
        self._taken_at.pop(name, None)
        ray.kill(actor, no_restart=True)
        if shape.waiters and (shape.grower is None or shape.grower.done()):
            shape.grower = asyncio.get_running_loop().create_task(self._grow(shape))

    async def _grow(self, shape: _Shape) -> None:
        """Start actors while runs wait, but only when waiting for a
        returning actor is expected to take longer than a start: no actor
        of the shape is busy, the runs queued ahead would keep the busy ones
        longer than a start takes, or none has come back for that long (its
        runs hold them: they stream, or wait in `.once()`)."""
        while any(not f.done() for f, _ in shape.waiters):
            waiting = sum(1 for f, _ in shape.waiters if not f.done())
            # runs ahead of the newest waiter, served by the actors there are
            expected_s = shape.hold_s * waiting / max(1, shape.busy + shape.starting)
            if (
                shape.starting < min(MAX_STARTING, waiting)
                and self.total < self.max_size
                and (
                    shape.busy == 0
                    or expected_s > shape.start_s
                    or time.monotonic() - shape.last_return > shape.start_s
                )
            ):
                self._start_soon(shape)
                continue
            await asyncio.sleep(0.02)

    async def _shrink_loop(self) -> None:
        idle_s = self.settings.pool_idle_s
        while True:
            await asyncio.sleep(max(0.1, min(5.0, idle_s / 4)))
            now = time.monotonic()
            for key, shape in self._shapes.items():
                keep = self.min_size if key == shape_of(None) else 0
                # oldest idle first; never below the minimum
                shape.idle.sort(key=lambda entry: entry[2])
                while len(shape.idle) > keep and now - shape.idle[0][2] >= idle_s:
                    _, actor, _ = shape.idle.pop(0)
                    ray.kill(actor, no_restart=True)
            self.fill_soon()

    def drain(self) -> list[Any]:
        """Every idle actor, now belonging to the caller (shutdown)."""
        actors = [a for s in self._shapes.values() for _, a, _ in s.idle]
        for s in self._shapes.values():
            s.idle.clear()
        return actors
