"""The Controller: the Ray actor that owns the run lifecycle.

One named, detached actor per deployment. It keeps nothing that matters in
memory: runs, waitpoints and deadlines live in the Store, so a restarted
Controller (`recovery`) re-attaches to the RunActors still running and
resumes the runs whose actors are gone.

A run is created QUEUED (triggers arriving together share one transaction),
then handed to a RunActor from the elastic pool, which claims it in the
Store (QUEUED -> EXECUTING, one claimant only) — so a run launched twice by
a race or a recovery still executes once. A new run that finds a slot and
an actor with room as it is created is created EXECUTING on that actor
instead, and starts there without a claim (`Supervisor.place_now`). Whoever resolves a waitpoint (a
send, the deadline timer) queues the run in the same transaction and asks
the Controller to revive it; a periodic sweep launches any queued run that
such a request never reached.

This module is the actor's interface (the methods called with `.remote`);
each job lives in its own module: `run_creation` (tasks, triggers),
`admission` (slots and the queue), `supervisor` (a run on its actor, crash
resumes, waiters), `recovery`, `timers` (deadlines, strays, retention).
Cancel cascades stay here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import warnings
from collections.abc import Coroutine
from typing import Any

import ray

from rayflow._config import Settings
from rayflow._runtime import connection, timers
from rayflow._runtime.admission import Admission, Resources
from rayflow._runtime.batching import GroupCommit
from rayflow._runtime.pool import RunActorPool
from rayflow._runtime.recovery import recover
from rayflow._runtime.run_creation import RunCreation, TriggerItem
from rayflow._runtime.supervisor import Supervisor
from rayflow._status import RunStatus
from rayflow.errors import IdempotencyConflict, RunNotFound
from rayflow.store.base import ACTIVE_STATUSES, RunRecord, now_ms
from rayflow.store.named import DURABLE_STREAMS_PREFIX, SESSIONS_PREFIX


@ray.remote
class Controller:
    def __init__(self, settings_json: str) -> None:
        self.settings = Settings.model_validate_json(settings_json)
        self.conn = connection.connect(self.settings)
        self.store = self.conn.store
        self.pool = RunActorPool(self.settings, settings_json)
        self._background: set[asyncio.Task[Any]] = set()
        self.admission = Admission(self.settings.max_live_runs, self._spawn, self._run_on_actor)
        #: newer for each Controller (a RunActor refuses fresh starts from an
        #: older one once it heard of a newer: `RunActor.execute_many`)
        self.incarnation = time.time_ns()
        self.supervisor = Supervisor(
            self.store, self.pool, self.admission, self._spawn, self.incarnation
        )
        self.creation = RunCreation(self.store, self.admission, self.supervisor)
        #: revivals arriving together read their runs in one query
        self._reads: GroupCommit[str, RunRecord | None] = GroupCommit(self.store.get_runs)
        self._started = False
        #: set once recovery has re-attached the RunActors still executing
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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _run_on_actor(self, run_id: str, resources: Resources) -> Coroutine[Any, Any, None]:
        return self.supervisor.run_on_actor(run_id, resources)

    async def start(self) -> str:
        """Start the control plane's work once (fill the pool, recover runs
        left by an earlier Controller, start retention and the timers); later
        calls only answer. Returns the Store URL, so a joining process can
        check it uses the same Store."""
        if not self._started:
            self._started = True
            self.pool.fill_soon()
            await recover(
                self.store,
                self.settings.namespace,
                self.admission,
                self.supervisor,
                self._attached,
                self.incarnation,
            )
            self._spawn(timers.retention_loop(self.cleanup_expired))
            self._spawn(
                timers.timer_loop(
                    self.store, self.admission, self.revive, self.settings.timer_interval_s
                )
            )
        return self.store.url

    # -- tasks -----------------------------------------------------------------
    async def register_task(self, task_id: str, blob: bytes, defaults_json: str) -> None:
        await self.creation.register_task(task_id, blob, defaults_json)

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
        item = (payload_json, options, idempotency_key, tags)
        created = await self.creation.trigger_batch(task_id, [item], parent_id)
        return created[0]

    @ray.method(max_task_retries=0)
    async def trigger_batch(
        self,
        task_id: str,
        items: list[TriggerItem],
        parent_id: str | None = None,
    ) -> list[tuple[str, bool]]:
        """Create runs of one task, each item (payload JSON, options,
        idempotency key, tags), in one transaction, and start them; returns
        (run id, newly created) per item."""
        return await self.creation.trigger_batch(task_id, items, parent_id)

    @ray.method(max_task_retries=0)
    async def trigger_each(
        self, task_id: str, items: list[TriggerItem]
    ) -> list[tuple[str, bool] | IdempotencyConflict]:
        """Triggers of separate callers that one process coalesced into one
        call (`triggers.trigger_run`): created in one transaction and
        started; each item's outcome alone — (run id, newly created) or its
        `IdempotencyConflict`."""
        return await self.creation.trigger_each(task_id, items, None)

    async def queue_length(self) -> int:
        return len(self.admission.queue)

    async def pool_stats(self) -> dict[str, int]:
        """The pool's idle, busy and starting actors; live and queued runs;
        the `execute_many` calls made (runs placed together share one)."""
        return {
            **self.pool.stats(),
            "live_runs": len(self.admission.live),
            "queued": len(self.admission.queue),
            "execute_calls": self.supervisor.execute_calls.calls,
        }

    async def revive(self, run_id: str) -> bool:
        """Launch a run whose waitpoint was resolved (the resolver queued it).
        Returns whether a launch was started."""
        if self.admission.busy(run_id):
            return False
        run = await self._reads.submit(run_id)
        if run is None or run.status != RunStatus.QUEUED:
            return False
        return self.admission.launch(run_id, json.loads(run.options).get("resources"), front=True)

    async def revive_many(self, run_ids: list[str]) -> list[bool | Exception]:
        """`revive` for the runs one process asked for together
        (`wait_tokens.revive`): one call, the reads in one batch; each run's
        outcome alone (its error, as a RuntimeError the caller can unpickle)."""
        outcomes = await asyncio.gather(*(self.revive(r) for r in run_ids), return_exceptions=True)
        return [
            RuntimeError(f"{type(o).__name__}: {o}") if isinstance(o, BaseException) else o
            for o in outcomes
        ]

    async def locate(self, run_id: str) -> tuple[str, Any]:
        """(status, the RunActor executing it or None)."""
        found = (await self.locate_many([run_id]))[0]
        if isinstance(found, RunNotFound):
            raise found
        return found

    async def locate_many(self, run_ids: list[str]) -> list[tuple[str, Any] | RunNotFound]:
        """`locate` for many runs in one call and one Store read (the
        locates of one process made together, `locations.locate`): each
        (status, RunActor or None), or RunNotFound for that run alone."""
        if not self._attached.is_set():
            # a restarted Controller: answer once the live runs are re-attached
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._attached.wait(), 60)
        runs = await asyncio.to_thread(self.store.get_runs, run_ids)
        out: list[tuple[str, Any] | RunNotFound] = []
        for run_id, run in zip(run_ids, runs, strict=True):
            if run is None:
                out.append(RunNotFound(f"run {run_id} does not exist", run_id=run_id))
                continue
            live = self.admission.live.get(run_id)
            out.append((run.status, live[1] if live else None))
        return out

    async def wait_run(self, run_id: str) -> str:
        """Wait until the run has finished; returns its status."""
        fut = self.supervisor.waiter(run_id)
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist", run_id=run_id)
        if run.finished:
            self.supervisor.notify(run_id, run.status)
        return await fut

    async def cancel(self, run_id: str) -> bool:
        """Cancel an active run (and its active children). False if it had finished."""
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist", run_id=run_id)
        canceled = await asyncio.to_thread(
            self.store.finish_run,
            run_id,
            RunStatus.CANCELED,
            None,
            json.dumps({"name": "Canceled", "message": f"run {run_id} was canceled"}),
        )
        live = self.admission.live.get(run_id)
        if live is not None:
            try:
                await asyncio.wait_for(live[1].cancel.remote(run_id), 5)
            except (asyncio.TimeoutError, ray.exceptions.RayActorError):
                if not await self._answers(live[1]):
                    # its event loop is stuck (a run blocks it, and every
                    # run there with it): stopped, the runs on it resume
                    # from their journals elsewhere
                    ray.kill(live[1], no_restart=True)
        if canceled:
            self.supervisor.notify(run_id, RunStatus.CANCELED)
            children = await asyncio.to_thread(
                self.store.list_runs, statuses=list(ACTIVE_STATUSES), parent_id=run_id, limit=1000
            )
            for child in children:
                await self.cancel(child.id)
        return canceled

    async def _answers(self, actor: Any) -> bool:
        """Whether a RunActor's event loop answers a call (a cancel that took
        long may only have waited for the Store: its other runs are fine)."""
        try:
            await asyncio.wait_for(actor.ready.remote(), 1)
        except (asyncio.TimeoutError, ray.exceptions.RayActorError):
            return False
        return True

    # -- housekeeping ----------------------------------------------------------
    async def cleanup_expired(self) -> int:
        cutoff = now_ms() - int(self.settings.retention_days * 86_400_000)
        # named streams past their TTL or expiry (a read of one already sees it gone)
        while await asyncio.to_thread(self.store.named_delete_expired) >= 500:
            pass
        # idle Durable Streams producers, as the protocol's reference server does
        idle = now_ms() - int(self.settings.durable_streams_producer_ttl_s * 1000)
        expire = self.store.named_expire_producers
        while await asyncio.to_thread(expire, DURABLE_STREAMS_PREFIX, idle) >= 500:
            pass
        # sessions ended as long ago (their runs go with the runs below), and
        # send keys past their dedupe window
        keys_before = now_ms() - int(self.settings.session_send_key_ttl_s * 1000)
        await asyncio.to_thread(self.store.delete_expired_sessions, cutoff, keys_before)
        # session streams' producers (a run's writers, a chat turn's): a stamp
        # dedupes a replay or a retry for the send keys' window, then goes
        while await asyncio.to_thread(expire, SESSIONS_PREFIX, keys_before) >= 500:
            pass
        return await asyncio.to_thread(self.store.delete_expired, cutoff)

    async def pid(self) -> int:
        """This actor's process id (the chaos soak kills it by pid)."""
        return os.getpid()

    async def live_runs(self) -> list[str]:
        return sorted(self.admission.live)

    async def shutdown(self) -> None:
        """Stop every RunActor (live or pooled); runs stay in the Store."""
        live = self.admission.live
        for _, actor in list(live.values()) + [("", a) for a in self.pool.drain()]:
            ray.kill(actor, no_restart=True)
        live.clear()
