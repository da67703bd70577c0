"""The Controller: run registry, lifecycle, supervision, revival, retention.

One named, detached actor per deployment. It keeps nothing that matters in
memory: runs, waitpoints and deadlines live in the Store, so a restarted
Controller (`_recover`) re-attaches to the RunActors still running and
resumes the runs whose actors are gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import warnings
from collections import deque
from typing import Any

import ray

from rayflow._config import Settings
from rayflow._runtime import connection
from rayflow._runtime.pool import RunActorPool
from rayflow.errors import RunNotFound, TaskNotFound
from rayflow.store.base import ACTIVE_STATUSES, RunRecord, now_ms

log = logging.getLogger("rayflow")

#: how often a run may lose its actor (node death, OOM kill) and be resumed
MAX_CRASH_RESUMES = 3


def new_run_id() -> str:
    return "run_" + secrets.token_hex(10)


@ray.remote
class Controller:
    def __init__(self, settings_json: str) -> None:
        self.settings = Settings.model_validate_json(settings_json)
        self.conn = connection.connect(self.settings)
        self.store = self.conn.store
        self.pool = RunActorPool(self.settings.pool_size, self.settings.namespace, settings_json)
        self.live: dict[str, tuple[str, Any]] = {}
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._crashes: dict[str, int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._reviving: set[str] = set()
        #: RunActors in use (live runs and runs being started)
        self._slots = 0
        self._queue: deque[tuple[str, dict[str, Any] | None]] = deque()
        self._draining: asyncio.Task[None] | None = None
        self._started = False
        with warnings.catch_warnings():
            # Ray 2.60's own property reads its deprecated actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            # Ray restarted this Controller (its process or node died): start
            # recovery, supervision and the deadline timer now, not when some
            # client next happens to call ready() — until then live runs have
            # no supervisor, waiters are never told and deadlines never fire
            ray.get_runtime_context().current_actor.ready.remote()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def ready(self) -> str:
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

    async def task_ids(self) -> list[str]:
        return await asyncio.to_thread(self.store.list_task_ids)

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
        defaults = await asyncio.to_thread(self.store.get_task_defaults, task_id)
        if defaults is None:
            raise TaskNotFound(
                f"no task {task_id!r} is registered; define it with @task and trigger it once"
                " from Python (or load its module with `rayflow dev`)"
            )
        options = {**json.loads(defaults), **options}
        root_id = None
        if parent_id is not None:
            parent = await asyncio.to_thread(self.store.get_run, parent_id)
            if parent is None:
                raise RunNotFound(f"parent run {parent_id} does not exist")
            root_id = parent.root_id or parent.id
        run_id = new_run_id()
        record = RunRecord(
            id=run_id,
            task_id=task_id,
            payload=payload_json,
            options=json.dumps(options),
            tags=json.dumps(tags or []),
            parent_id=parent_id,
            root_id=root_id or run_id,
            idempotency_key=idempotency_key,
        )
        run, created = await asyncio.to_thread(self.store.create_run, record)
        if created:
            await self._launch(run.id, options.get("resources"), child=parent_id is not None)
        return run.id, created

    async def _launch(
        self,
        run_id: str,
        resources: dict[str, Any] | None,
        *,
        child: bool = False,
        front: bool = False,
    ) -> None:
        """Start the run on a RunActor, or queue it (QUEUED) while
        `max_live_runs` runs already hold one: a box holds ~100–150 live
        actors (DESIGN §8), so the rest wait their turn in the Store. A child
        run skips the queue: its parent holds a slot while it waits for it,
        and queueing children behind parents could deadlock."""
        if self._slots >= self.settings.max_live_runs and not child:
            # a revival goes first: it continues work already under way
            if front:
                self._queue.appendleft((run_id, resources))
            else:
                self._queue.append((run_id, resources))
            return
        self._slots += 1
        try:
            name, actor = await self.pool.take(resources)
            await asyncio.to_thread(self.store.update_run, run_id, actor_name=name)
        except BaseException:
            self._release_slot()
            raise
        self.live[run_id] = (name, actor)
        self._spawn(self._supervise(run_id, actor, actor.execute.remote(run_id)))

    def _release_slot(self) -> None:
        self._slots -= 1
        if self._queue and (self._draining is None or self._draining.done()):
            self._draining = asyncio.get_running_loop().create_task(self._drain_queue())

    async def _drain_queue(self) -> None:
        while self._queue and self._slots < self.settings.max_live_runs:
            run_id, resources = self._queue.popleft()
            run = await asyncio.to_thread(self.store.get_run, run_id)
            if run is None or run.finished or run_id in self.live:
                continue  # canceled (or otherwise ended) while it queued
            await self._launch(run_id, resources)

    async def queue_length(self) -> int:
        return len(self._queue)

    async def _supervise(self, run_id: str, actor: Any, ref: Any) -> None:
        status: str | None = None
        try:
            status = await ref
        except ray.exceptions.RayActorError:
            log.warning("run %s lost its actor", run_id)
        except Exception:
            log.exception("run %s: its actor failed outside the task", run_id)
        finally:
            if self.live.get(run_id, (None, None))[1] is actor:
                del self.live[run_id]
            ray.kill(actor, no_restart=True)
            self._release_slot()
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None:
            return
        if status is None and not run.finished and run.status != "WAITING":
            await self._resume_after_crash(run)
            return
        if run.finished:
            self._notify(run_id, run.status)
        elif run.status == "WAITING":
            # a send or the deadline may have resolved it while it suspended
            wp = await asyncio.to_thread(self.store.get_waitpoint, run_id)
            if wp is None or wp.status != "PENDING":
                await self.revive(run_id)

    async def _resume_after_crash(self, run: RunRecord) -> None:
        crashes = self._crashes.get(run.id, 0) + 1
        self._crashes[run.id] = crashes
        if crashes > MAX_CRASH_RESUMES:
            await asyncio.to_thread(
                self.store.finish_run,
                run.id,
                "CRASHED",
                None,
                json.dumps(
                    {"name": "Crashed", "message": f"run {run.id} lost its actor {crashes} times"}
                ),
            )
            self._notify(run.id, "CRASHED")
            return
        options = json.loads(run.options)
        await self._launch(run.id, options.get("resources"))

    async def revive(self, run_id: str) -> bool:
        """Start a WAITING run again (its waitpoint was resolved or timed out).

        A run still suspending is left alone: its supervisor revives it once
        its actor has returned. Returns whether a revival was started.
        """
        if run_id in self.live or run_id in self._reviving:
            return False
        self._reviving.add(run_id)
        try:
            run = await asyncio.to_thread(self.store.get_run, run_id)
            if run is None or run.status != "WAITING" or run_id in self.live:
                return False
            if not await asyncio.to_thread(self.store.set_active_status, run_id, "QUEUED"):
                return False
            await self._launch(run_id, json.loads(run.options).get("resources"), front=True)
            return True
        finally:
            self._reviving.discard(run_id)

    async def _timer_loop(self) -> None:
        while True:
            try:
                for wp in await asyncio.to_thread(self.store.due_waitpoints, now_ms()):
                    if await asyncio.to_thread(
                        self.store.resolve_waitpoint, wp.run_id, "TIMED_OUT", None
                    ):
                        await self.revive(wp.run_id)
            except Exception:
                log.exception("waitpoint timer failed")
            await asyncio.sleep(self.settings.timer_interval_s)

    def _notify(self, run_id: str, status: str) -> None:
        self._crashes.pop(run_id, None)
        for fut in self._waiters.pop(run_id, []):
            if not fut.done():
                fut.set_result(status)

    async def locate(self, run_id: str) -> tuple[str, Any]:
        """(status, the RunActor executing it or None)."""
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
            "CANCELED",
            None,
            json.dumps({"name": "Canceled", "message": f"run {run_id} was canceled"}),
        )
        live = self.live.get(run_id)
        if live is not None:
            try:
                await asyncio.wait_for(live[1].cancel.remote(), 5)
            except (asyncio.TimeoutError, ray.exceptions.RayActorError):
                ray.kill(live[1], no_restart=True)
        if canceled:
            self._notify(run_id, "CANCELED")
            children = await asyncio.to_thread(
                self.store.list_runs, statuses=list(ACTIVE_STATUSES), parent_id=run_id, limit=1000
            )
            for child in children:
                await self.cancel(child.id)
        return canceled

    # -- recovery and housekeeping ---------------------------------------------
    async def _recover(self) -> None:
        runs = await asyncio.to_thread(
            self.store.list_runs, statuses=["QUEUED", "EXECUTING"], limit=100_000
        )
        # pending deadlines need nothing here: they are in the Store and the
        # timer loop finds them
        waiting = await asyncio.to_thread(self.store.list_runs, statuses=["WAITING"], limit=100_000)
        for run in waiting:
            wp = await asyncio.to_thread(self.store.get_waitpoint, run.id)
            if wp is None or wp.status != "PENDING":
                self._spawn(self.revive(run.id))
        for run in runs:
            actor = None
            if run.actor_name:
                try:
                    actor = ray.get_actor(run.actor_name, namespace=self.settings.namespace)
                except ValueError:
                    actor = None
            if actor is not None:
                log.info("re-attaching to run %s on %s", run.id, run.actor_name)
                self.live[run.id] = (run.actor_name or "", actor)
                self._slots += 1
                self._spawn(self._supervise(run.id, actor, actor.join.remote()))
            else:
                log.info("resuming run %s from its journal", run.id)
                options = json.loads(run.options)
                await self._launch(run.id, options.get("resources"))

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

    async def live_runs(self) -> list[str]:
        return sorted(self.live)

    async def shutdown(self) -> None:
        """Stop every RunActor (live or warm); runs stay in the Store."""
        for _, actor in list(self.live.values()) + [("", a) for a in self.pool.drain()]:
            ray.kill(actor, no_restart=True)
        self.live.clear()
