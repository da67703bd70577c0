"""The Controller: run registry, lifecycle, supervision, revival, retention.

One named, detached actor per deployment. It keeps nothing that matters in
memory: runs, waitpoints and deadlines live in the Store, so a restarted
Controller (`_recover`) re-attaches to the RunActors still running and
resumes the runs whose actors are gone.

A run is created QUEUED (triggers arriving together share one transaction),
then handed to a RunActor from the elastic pool, which claims it in the
Store (QUEUED -> EXECUTING, one claimant only) — so a run launched twice by
a race or a recovery still executes once. Whoever resolves a waitpoint (a
send, the deadline timer) queues the run in the same transaction and asks
the Controller to revive it; a periodic sweep launches any queued run that
such a request never reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
import warnings
from collections import deque
from typing import Any

import ray

from rayflow._config import Settings
from rayflow._runtime import connection
from rayflow._runtime.batching import GroupCommit
from rayflow._runtime.pool import RunActorPool
from rayflow._runtime.run_actor import LOST
from rayflow._status import RunStatus, WaitpointStatus
from rayflow.errors import IdempotencyConflict, RunNotFound, TaskNotFound
from rayflow.store.base import ACTIVE_STATUSES, FINISHED_STATUSES, RunRecord, now_ms

log = logging.getLogger("rayflow")

#: how often a run may lose its actor (node death, OOM kill) and be resumed
MAX_CRASH_RESUMES = 3
#: runs read from the Store per page when a Controller recovers
RECOVERY_PAGE = 500
#: a QUEUED run nobody launched for this long is launched by the sweep
STRAY_QUEUED_MS = 2000


def new_run_id() -> str:
    return "run_" + secrets.token_hex(10)


@ray.remote
class Controller:
    def __init__(self, settings_json: str) -> None:
        self.settings = Settings.model_validate_json(settings_json)
        self.conn = connection.connect(self.settings)
        self.store = self.conn.store
        self.pool = RunActorPool(self.settings, settings_json)
        #: runs on a RunActor: run id -> (actor name, actor)
        self.live: dict[str, tuple[str, Any]] = {}
        #: runs queued here or waiting for an actor from the pool
        self._pending: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._crashes: dict[str, int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._defaults: dict[str, str] = {}
        self._creates: GroupCommit[RunRecord, tuple[RunRecord, bool]] = GroupCommit(
            self.store.create_runs
        )
        #: revivals arriving together read their runs in one query
        self._reads: GroupCommit[str, RunRecord | None] = GroupCommit(self.store.get_runs)
        #: runs holding a slot (on an actor or getting one); past
        #: max_live_runs the rest wait in `_queue`
        self._slots = 0
        self._queue: deque[tuple[str, dict[str, Any] | None]] = deque()
        self._started = False
        #: set once `_recover` has re-attached the RunActors still executing
        #: runs: until then `live` is incomplete and `locate` must not answer
        #: "no actor" for a run that has one (the Inbox would skip its poke)
        self._attached = asyncio.Event()
        with warnings.catch_warnings():
            # Ray 2.60's own property reads its deprecated actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            # Ray restarted this Controller (its process or node died): start
            # recovery, supervision and the deadline timer now, not when some
            # client next happens to call start() — until then live runs have
            # no supervisor, waiters are never told and deadlines never fire
            ray.get_runtime_context().current_actor.start.remote()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> str:
        """Start the control plane's work once (fill the pool, recover runs
        left by an earlier Controller, start retention and the timers); later
        calls only answer. Returns the Store URL, so a joining process can
        check it uses the same Store."""
        if not self._started:
            self._started = True
            self.pool.fill_soon()
            await self._recover()
            self._spawn(self._retention_loop())
            self._spawn(self._timer_loop())
        return self.store.url

    # -- tasks -----------------------------------------------------------------
    async def register_task(self, task_id: str, blob: bytes, defaults_json: str) -> None:
        await asyncio.to_thread(self.store.put_task, task_id, blob, defaults_json)
        self._defaults[task_id] = defaults_json

    async def task_ids(self) -> list[str]:
        return await asyncio.to_thread(self.store.list_task_ids)

    async def _task_defaults(self, task_id: str) -> dict[str, Any]:
        defaults = self._defaults.get(task_id)
        if defaults is None:
            defaults = await asyncio.to_thread(self.store.get_task_defaults, task_id)
            if defaults is None:
                raise TaskNotFound(
                    f"no task {task_id!r} is registered; define it with @task and trigger it"
                    " once from Python (or load its module with `rayflow dev`)"
                )
            self._defaults[task_id] = defaults
        result: dict[str, Any] = json.loads(defaults)
        return result

    # -- runs ------------------------------------------------------------------
    @ray.method(max_task_retries=0)
    async def trigger(
        self,
        task_id: str,
        payload_json: str,
        options: dict[str, Any],
        parent_id: str | None = None,
        idempotency_key: str | None = None,
        tags: list[str] | None = None,
    ) -> tuple[str, bool]:
        """Create a run and start it; returns (run id, newly created)."""
        item = (payload_json, options, idempotency_key, tags)
        created: list[tuple[str, bool]] = await self.trigger_batch(task_id, [item], parent_id)
        return created[0]

    @ray.method(max_task_retries=0)
    async def trigger_batch(
        self,
        task_id: str,
        items: list[tuple[str, dict[str, Any], str | None, list[str] | None]],
        parent_id: str | None = None,
    ) -> list[tuple[str, bool]]:
        """Create runs of one task, each item (payload JSON, options,
        idempotency key, tags), in one transaction, and start them; returns
        (run id, newly created) per item."""
        defaults = await self._task_defaults(task_id)
        root_id = None
        if parent_id is not None:
            parent = await asyncio.to_thread(self.store.get_run, parent_id)
            if parent is None:
                raise RunNotFound(f"parent run {parent_id} does not exist")
            root_id = parent.root_id or parent.id
        records: list[RunRecord] = []
        resources: list[dict[str, Any] | None] = []
        for payload_json, options, idempotency_key, tags in items:
            run_options = {**defaults, **options}
            run_id = new_run_id()
            resources.append(run_options.get("resources"))
            records.append(
                RunRecord(
                    id=run_id,
                    task_id=task_id,
                    payload=payload_json,
                    options=json.dumps(run_options),
                    tags=json.dumps(tags or []),
                    parent_id=parent_id,
                    root_id=root_id or run_id,
                    idempotency_key=idempotency_key,
                )
            )
        created = await self._creates.submit_many(records)
        for (run, new), needs in zip(created, resources, strict=True):
            if new:
                self._launch(run.id, needs, child=parent_id is not None)
        # a key names one trigger: reused with another payload it is a mistake
        # (or someone else's key), never a retry; the new runs above still start
        conflicts = [
            f"item {n}: idempotency key {rec.idempotency_key!r} was used for run {run.id}"
            for n, ((run, new), rec) in enumerate(zip(created, records, strict=True))
            if not new and run.payload != rec.payload
        ]
        if conflicts:
            raise IdempotencyConflict(
                "an idempotency key was reused with a different payload: " + "; ".join(conflicts)
            )
        return [(run.id, new) for run, new in created]

    def _launch(
        self,
        run_id: str,
        resources: dict[str, Any] | None,
        *,
        child: bool = False,
        front: bool = False,
    ) -> bool:
        """Hand the run to a RunActor, or queue it (QUEUED) while
        `max_live_runs` runs already hold one: a box holds ~100–150 live
        actors (docs/scaling.md), so the rest wait their turn. A child run skips
        the queue: its parent holds a slot while it waits for it, and
        queueing children behind parents could deadlock. A revival goes to
        the front: it continues work already under way. False when the run
        is already live or on its way."""
        if run_id in self.live or run_id in self._pending:
            return False
        self._pending.add(run_id)
        if self._slots >= self.settings.max_live_runs and not child:
            if front:
                self._queue.appendleft((run_id, resources))
            else:
                self._queue.append((run_id, resources))
            return True
        self._slots += 1
        self._spawn(self._run_on_actor(run_id, resources))
        return True

    async def _run_on_actor(self, run_id: str, resources: dict[str, Any] | None) -> None:
        try:
            name, actor = await self.pool.take(resources)
        finally:
            self._pending.discard(run_id)
        self.live[run_id] = (name, actor)
        await self._supervise(run_id, name, actor, resources, actor.execute.remote(run_id))

    def _release_slot(self) -> None:
        self._slots -= 1
        while self._queue and self._slots < self.settings.max_live_runs:
            run_id, resources = self._queue.popleft()
            self._slots += 1
            self._spawn(self._run_on_actor(run_id, resources))

    async def queue_length(self) -> int:
        return len(self._queue)

    async def pool_stats(self) -> dict[str, int]:
        """The pool's idle, busy and starting actors; live and queued runs."""
        return {**self.pool.stats(), "live_runs": len(self.live), "queued": len(self._queue)}

    async def _supervise(
        self, run_id: str, name: str, actor: Any, resources: dict[str, Any] | None, ref: Any
    ) -> None:
        status: str | None = None
        recyclable = False
        try:
            status, recyclable = await ref
        except ray.exceptions.RayActorError:
            log.warning("run %s lost its actor", run_id)
        except Exception:
            log.exception("run %s: its actor failed outside the task", run_id)
        finally:
            if self.live.get(run_id, (None, None))[1] is actor:
                del self.live[run_id]
            if recyclable:
                self.pool.give_back(name, actor, resources)
            else:
                self.pool.retire(name, actor, resources)
            self._release_slot()
        if status is None or status == LOST:
            await self._resume_after_crash(run_id, resources)
        elif status in FINISHED_STATUSES:
            self._notify(run_id, status)
        elif status == RunStatus.QUEUED:
            # a message woke it while it suspended
            self._launch(run_id, resources, front=True)

    async def _resume_after_crash(self, run_id: str, resources: dict[str, Any] | None) -> None:
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None or run.status == RunStatus.WAITING:
            return
        if run.finished:
            self._notify(run_id, run.status)
            return
        crashes = self._crashes.get(run_id, 0) + 1
        self._crashes[run_id] = crashes
        if crashes > MAX_CRASH_RESUMES:
            await asyncio.to_thread(
                self.store.finish_run,
                run_id,
                RunStatus.CRASHED,
                None,
                json.dumps(
                    {"name": "Crashed", "message": f"run {run_id} lost its actor {crashes} times"}
                ),
            )
            self._notify(run_id, RunStatus.CRASHED)
            return
        # give Ray time to notice a lost node before it places the run again:
        # a resume onto the dying node would spend another of its crashes
        await asyncio.sleep(min(5.0, 0.5 * (crashes - 1)))
        if run.status == RunStatus.EXECUTING and not await asyncio.to_thread(
            self.store.set_active_status, run_id, RunStatus.QUEUED, actor_name=None
        ):
            return
        self._launch(run_id, resources, front=True)

    async def revive(self, run_id: str) -> bool:
        """Launch a run whose waitpoint was resolved (the resolver queued it).
        Returns whether a launch was started."""
        if run_id in self.live or run_id in self._pending:
            return False
        run = await self._reads.submit(run_id)
        if run is None or run.status != RunStatus.QUEUED:
            return False
        return self._launch(run_id, json.loads(run.options).get("resources"), front=True)

    async def _timer_loop(self) -> None:
        last_sweep = 0.0
        while True:
            try:
                for wp in await asyncio.to_thread(self.store.due_waitpoints, now_ms()):
                    if await asyncio.to_thread(
                        self.store.resolve_waitpoint, wp.run_id, WaitpointStatus.TIMED_OUT, None
                    ):
                        await self.revive(wp.run_id)
                if time.monotonic() - last_sweep >= STRAY_QUEUED_MS / 1000:
                    last_sweep = time.monotonic()
                    await self._launch_strays()
            except Exception:
                log.exception("waitpoint timer failed")
            await asyncio.sleep(self.settings.timer_interval_s)

    async def _launch_strays(self) -> None:
        """Launch queued runs that no revival request reached (the resolver
        died before it asked, or the request failed): none is left behind."""
        cutoff = now_ms() - STRAY_QUEUED_MS
        queued = await asyncio.to_thread(
            self.store.list_runs, statuses=[RunStatus.QUEUED], limit=10_000
        )
        for run in queued:
            if run.updated_at < cutoff and self._launch(
                run.id, json.loads(run.options).get("resources"), front=True
            ):
                log.info("launching queued run %s that no revival reached", run.id)

    def _notify(self, run_id: str, status: str) -> None:
        self._crashes.pop(run_id, None)
        for fut in self._waiters.pop(run_id, []):
            if not fut.done():
                fut.set_result(status)

    async def locate(self, run_id: str) -> tuple[str, Any]:
        """(status, the RunActor executing it or None)."""
        if not self._attached.is_set():
            # a restarted Controller: answer once the live runs are re-attached
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._attached.wait(), 60)
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist")
        live = self.live.get(run_id)
        return run.status, (live[1] if live else None)

    async def wait_run(self, run_id: str) -> str:
        """Wait until the run has finished; returns its status."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(fut)
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist")
        if run.finished:
            self._notify(run_id, run.status)
        return await fut

    async def cancel(self, run_id: str) -> bool:
        """Cancel an active run (and its active children). False if it had finished."""
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist")
        canceled = await asyncio.to_thread(
            self.store.finish_run,
            run_id,
            RunStatus.CANCELED,
            None,
            json.dumps({"name": "Canceled", "message": f"run {run_id} was canceled"}),
        )
        live = self.live.get(run_id)
        if live is not None:
            try:
                await asyncio.wait_for(live[1].cancel.remote(run_id), 5)
            except (asyncio.TimeoutError, ray.exceptions.RayActorError):
                ray.kill(live[1], no_restart=True)
        if canceled:
            self._notify(run_id, RunStatus.CANCELED)
            children = await asyncio.to_thread(
                self.store.list_runs, statuses=list(ACTIVE_STATUSES), parent_id=run_id, limit=1000
            )
            for child in children:
                await self.cancel(child.id)
        return canceled

    # -- recovery and housekeeping ---------------------------------------------
    async def _recover(self) -> None:
        """Re-attach to RunActors still executing runs, stop the idle ones a
        previous Controller pooled, and launch every active run left without
        an actor."""
        try:
            attached = await self._reattach()
        finally:
            self._attached.set()
        # a page at a time: a Store with 100,000 active runs is not read into
        # one list, and a waiting run costs no Store call of its own
        after: str | None = None
        while True:
            page = await asyncio.to_thread(self.store.recoverable_runs, after, RECOVERY_PAGE)
            for run in page:
                if run.id in attached:
                    continue
                resources = json.loads(run.options).get("resources")
                if run.status == RunStatus.WAITING:
                    # its waitpoint was resolved by an older version that did not queue it
                    await asyncio.to_thread(self.store.set_active_status, run.id, RunStatus.QUEUED)
                    self._launch(run.id, resources, front=True)
                    continue
                log.info("resuming run %s from its journal", run.id)
                if run.status == RunStatus.EXECUTING:
                    await asyncio.to_thread(
                        self.store.set_active_status, run.id, RunStatus.QUEUED, actor_name=None
                    )
                self._launch(run.id, resources)
            if len(page) < RECOVERY_PAGE:
                break
            after = page[-1].id

    async def _reattach(self) -> dict[str, tuple[str, Any]]:
        """Supervise again the RunActors still executing a run; stop the idle
        ones the previous Controller pooled. Returns run id -> (name, actor)."""
        attached: dict[str, tuple[str, Any]] = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if entry["namespace"] != self.settings.namespace or not name.startswith("rayflow-run-"):
                continue
            try:
                actor = ray.get_actor(name, namespace=self.settings.namespace)
                run_id: str | None = await asyncio.wait_for(actor.current_run_id.remote(), 10)
            except (ValueError, asyncio.TimeoutError, ray.exceptions.RayActorError):
                continue
            if run_id is None:
                ray.kill(actor, no_restart=True)
            else:
                attached[run_id] = (name, actor)
        for run_id, (name, actor) in attached.items():
            log.info("re-attaching to run %s on %s", run_id, name)
            run = await asyncio.to_thread(self.store.get_run, run_id)
            resources = json.loads(run.options).get("resources") if run else None
            self.live[run_id] = (name, actor)
            self._slots += 1
            self.pool.adopt(resources)
            self._spawn(self._supervise(run_id, name, actor, resources, actor.join.remote(run_id)))
        return attached

    async def cleanup_expired(self) -> int:
        cutoff = now_ms() - int(self.settings.retention_days * 86_400_000)
        return await asyncio.to_thread(self.store.delete_expired, cutoff)

    async def _retention_loop(self) -> None:
        while True:
            try:
                removed = await self.cleanup_expired()
                if removed:
                    log.info("retention removed %d finished runs", removed)
            except Exception:
                log.exception("retention clean-up failed")
            await asyncio.sleep(3600)

    async def pid(self) -> int:
        """This actor's process id (the chaos soak kills it by pid)."""
        return os.getpid()

    async def live_runs(self) -> list[str]:
        return sorted(self.live)

    async def shutdown(self) -> None:
        """Stop every RunActor (live or pooled); runs stay in the Store."""
        for _, actor in list(self.live.values()) + [("", a) for a in self.pool.drain()]:
            ray.kill(actor, no_restart=True)
        self.live.clear()
