"""Supervision: a run on its RunActor, from the pool to its end.

`run_on_actor` takes a place on an actor from the pool (an actor executes
many runs at once) and awaits `execute(run_id)`; `supervise` gets back
`(status, recyclable)`, gives the place back to the pool or retires the
actor (it takes no new run and stops once its other runs left; at once when
it died), frees the run's slot, and then: tells the run's waiters when it
finished, relaunches it when a message woke it while it suspended, or resumes
it from its journal when its actor was lost or when the Store stayed
unreachable during the attempt (`UNAVAILABLE`: once the Store answers again;
at most `MAX_OUTAGE_RESUMES` times, so that an outage never fails a run but a
run that meets one at every attempt still ends).

A lost actor takes every run it hosted, so a loss says little about any one
of them. Losses count in a row only while the run gets nowhere in between
(no journal entry, no chunk, no new attempt — `Progress`): a run that
progresses between losses, beside a run that kills actors or through node
losses over its life, is resumed every time. After `MAX_CRASH_RESUMES` + 1
losses without progress on actors it shared, the run gets an actor of its
own (`runs_per_actor=1`), where a loss is its own doing: one more there,
without progress, and it is CRASHED (it dies where it died before).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import ray

from rayflow._runtime.admission import Admission, Resources
from rayflow._runtime.attempts import UNAVAILABLE
from rayflow._runtime.execute_calls import ExecuteCalls
from rayflow._runtime.pool import RunActorPool, capacity_of
from rayflow._runtime.run_actor import LOST
from rayflow._status import RunStatus
from rayflow.errors import Unavailable
from rayflow.store.base import FINISHED_STATUSES, RunRecord, Store

log = logging.getLogger("rayflow")
T = TypeVar("T")
#: how far a run got, as the Store holds it: (attempt, journal entries of that
#: attempt, chunks on its streams) — it only grows while the run gets anywhere
Progress = tuple[int, int, int]

#: how often in a row a run may lose its actor (node death, OOM kill) without
#: progress in between and be resumed (`Progress`)
MAX_CRASH_RESUMES = 3
#: how often a run may be resumed after the Store was unreachable mid-attempt
MAX_OUTAGE_RESUMES = 10
#: the longest pause between two looks at a Store that does not answer
STORE_POLL_MAX_S = 5.0


class Supervisor:
    def __init__(
        self,
        store: Store,
        pool: RunActorPool,
        admission: Admission,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        incarnation: int = 0,
    ) -> None:
        self.store = store
        self.pool = pool
        self.admission = admission
        self._spawn = spawn
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        #: run id -> losses in a row without progress, and its progress at the last
        self._crashes: dict[str, tuple[int, Progress]] = {}
        self._outages: dict[str, int] = {}
        #: runs placed together leave in one call per actor
        self.execute_calls = ExecuteCalls(incarnation)

    async def run_on_actor(self, run_id: str, resources: Resources) -> None:
        try:
            name, actor = await self.pool.take(resources)
        finally:
            self.admission.pending.discard(run_id)
        self.admission.live[run_id] = (name, actor)
        outcome = self.execute_calls.execute(name, actor, run_id)
        await self.supervise(run_id, name, actor, resources, outcome)

    def place_now(self, run_id: str, resources: Resources, *, child: bool) -> str | None:
        """Place a run being created on an actor with room now, if a slot
        is free and an actor has room (`Admission.take_slot`,
        `RunActorPool.take_now`): the run is live there from now on (a
        `locate` that finds its row finds its actor) and its row is created
        EXECUTING on it (`start_placed`, or `unplace` if it is not created).
        Returns the actor's name, or None (the run is created QUEUED)."""
        if not self.admission.take_slot(child=child):
            return None
        taken = self.pool.take_now(resources)
        if taken is None:
            self.admission.release_slot()
            return None
        self.admission.live[run_id] = taken
        return taken[0]

    def start_placed(self, run: RunRecord, resources: Resources, blob: bytes | None) -> None:
        """Start a run created on the actor `place_now` chose: it starts
        there without a claim (`RunActor.execute_many`'s `fresh`), and is
        supervised as any run."""
        name, actor = self.admission.live[run.id]
        outcome = self.execute_calls.execute(name, actor, run.id, run, blob)
        self._spawn(self.supervise(run.id, name, actor, resources, outcome))

    def unplace(self, run_id: str, resources: Resources) -> None:
        """A run `place_now` placed was not created (its idempotency key
        named another run, or the insert failed): its place goes back."""
        name, actor = self.admission.live.pop(run_id)
        self.pool.give_back(name, actor, resources)
        self.admission.release_slot()

    def adopt(self, run_id: str, name: str, actor: Any, resources: Resources) -> None:
        """Supervise a RunActor an earlier Controller started (recovery)."""
        self.admission.live[run_id] = (name, actor)
        self.admission.slots += 1
        self.pool.adopt(name, actor, resources)
        self._spawn(self.supervise(run_id, name, actor, resources, actor.join.remote(run_id)))

    async def supervise(
        self, run_id: str, name: str, actor: Any, resources: Resources, ref: Any
    ) -> None:
        status: str | None = None
        recyclable = False
        live = self.admission.live
        dead = False
        try:
            status, recyclable = await ref
        except ray.exceptions.RayActorError:
            log.warning("run %s lost its actor", run_id)
            dead = True
        except Exception:
            log.exception("run %s: its actor failed outside the task", run_id)
        finally:
            if live.get(run_id, (None, None))[1] is actor:
                del live[run_id]
            if recyclable:
                self.pool.give_back(name, actor, resources)
            else:
                self.pool.retire(name, actor, resources, dead=dead)
            self.admission.release_slot()
        if status is None or status == LOST:
            await self._resume(run_id, resources, outage=False)
        elif status == UNAVAILABLE:
            await self._resume(run_id, resources, outage=True)
        elif status in FINISHED_STATUSES:
            self.notify(run_id, status)
        elif status == RunStatus.QUEUED:
            # a message woke it while it suspended
            self.admission.launch(run_id, resources, front=True)

    async def _resume(self, run_id: str, resources: Resources, *, outage: bool) -> None:
        """Launch the run again from its journal after it lost its actor (or,
        `outage`, the Store) — unless it already needed MAX_CRASH_RESUMES
        such resumes in a row without progress (MAX_OUTAGE_RESUMES in all);
        then it is CRASHED — or, when it lost an actor other runs shared,
        resumed once more on an actor of its own."""
        run = await self._store_call(self.store.get_run, run_id)
        if run is None or run.status == RunStatus.WAITING:
            return
        if run.finished:
            self.notify(run_id, run.status)
            return
        if outage:
            most, what, step = MAX_OUTAGE_RESUMES, "lost the Store", 0.1
            n = self._outages[run_id] = self._outages.get(run_id, 0) + 1
        else:
            most, what, step = MAX_CRASH_RESUMES, "lost its actor", 0.5
            n = await self._count_crash(run)
            what += " without progress"
        if n > most and not outage and self._shared(resources):
            # any run on an actor it shared may have killed it: the run gets
            # an actor of its own for its last try, where a loss is its own
            log.warning("run %s lost its actor %d times without progress; alone now", run_id, n)
            resources = {**(resources or {}), "runs_per_actor": 1}
        elif n > most:
            await self._store_call(
                self.store.finish_run,
                run_id,
                RunStatus.CRASHED,
                None,
                json.dumps({"name": "Crashed", "message": f"run {run_id} {what} {n} times"}),
            )
            self.notify(run_id, RunStatus.CRASHED)
            return
        # give Ray time to notice a lost node before it places the run again:
        # a resume onto the dying node would spend another of its crashes.
        # After an outage the Store answered get_run already: a short pause.
        await asyncio.sleep(min(5.0, step * (n - 1)))
        if run.status == RunStatus.EXECUTING and not await self._store_call(
            self.store.set_active_status, run_id, RunStatus.QUEUED, actor_name=None
        ):
            return
        self.admission.launch(run_id, resources, front=True)

    def _shared(self, resources: Resources) -> bool:
        """Whether runs of this shape share their actors."""
        return capacity_of(resources, self.pool.settings.runs_per_actor) > 1

    async def _count_crash(self, run: RunRecord) -> int:
        """The run's losses in a row without progress, this one included."""
        progress = await self._store_call(progress_of, self.store, run)
        n, before = self._crashes.get(run.id, (0, None))
        n = n + 1 if progress == before else 1
        self._crashes[run.id] = (n, progress)
        return n

    async def _store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args)` on a thread, tried again until the Store answers: a
        run's supervision outlives any outage of its Store."""
        pause = 0.5
        while True:
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except Unavailable as e:
                log.warning("the Store is unreachable (%s); trying again in %.1f s", e, pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, STORE_POLL_MAX_S)

    def waiter(self, run_id: str) -> asyncio.Future[str]:
        """A future set to the run's status when it finishes (`notify`)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(fut)
        return fut

    def notify(self, run_id: str, status: str) -> None:
        self._crashes.pop(run_id, None)
        self._outages.pop(run_id, None)
        for fut in self._waiters.pop(run_id, []):
            if not fut.done():
                fut.set_result(status)


def progress_of(store: Store, run: RunRecord) -> Progress:
    """How far `run` got (`Progress`), read from the Store."""
    journal = store.journal_load(run.id, run.attempt)
    chunks = sum(stream.length for stream in store.list_streams(run.id))
    return run.attempt, len(journal), chunks
