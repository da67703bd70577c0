"""Recovery: a new Controller takes over the runs an earlier one left.

Nothing that matters lives only in a Controller's memory, so recovery reads
it back: first re-attach to the RunActors still executing runs (and stop the
idle ones the previous Controller pooled) — until then the Controller's
`live` map is incomplete and `locate` waits — then launch every active run
left without an actor, reading the Store a page at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import ray

from rayflow._runtime.admission import Admission
from rayflow._runtime.supervisor import Supervisor
from rayflow._status import RunStatus
from rayflow.store.base import Store

log = logging.getLogger("rayflow")

#: runs read from the Store per page when a Controller recovers
RECOVERY_PAGE = 500


async def recover(
    store: Store,
    namespace: str,
    admission: Admission,
    supervisor: Supervisor,
    attached_event: asyncio.Event,
    incarnation: int = 0,
) -> None:
    """Re-attach to RunActors still executing runs, stop the idle ones a
    previous Controller pooled, and launch every active run left without
    an actor. Sets `attached_event` once the re-attachment is done."""
    try:
        attached = await reattach(store, namespace, supervisor, incarnation)
    finally:
        attached_event.set()
    # a page at a time: a Store with 100,000 active runs is not read into
    # one list, and a waiting run costs no Store call of its own
    after: str | None = None
    while True:
        page = await asyncio.to_thread(store.recoverable_runs, after, RECOVERY_PAGE)
        for run in page:
            if run.id in attached:
                continue
            resources = json.loads(run.options).get("resources")
            if run.status == RunStatus.WAITING:
                # its waitpoint was resolved by an older version that did not queue it
                await asyncio.to_thread(store.set_active_status, run.id, RunStatus.QUEUED)
                admission.launch(run.id, resources, front=True)
                continue
            log.info("resuming run %s from its journal", run.id)
            if run.status == RunStatus.EXECUTING:
                await asyncio.to_thread(
                    store.set_active_status, run.id, RunStatus.QUEUED, actor_name=None
                )
            admission.launch(run.id, resources)
        if len(page) < RECOVERY_PAGE:
            break
        after = page[-1].id


async def reattach(
    store: Store, namespace: str, supervisor: Supervisor, incarnation: int = 0
) -> dict[str, tuple[str, Any]]:
    """Supervise again the runs RunActors are still executing; stop the idle
    ones the previous Controller pooled. Returns run id -> (name, actor).
    Each actor asked learns this Controller's `incarnation`: a run an
    earlier Controller created on it and had not handed over yet is
    relaunched below, and that Controller's call, if it still comes, starts
    no second execution of it (`RunActor.execute_many`)."""
    attached: dict[str, tuple[str, Any]] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] != namespace or not name.startswith("rayflow-run-"):
            continue
        try:
            actor = ray.get_actor(name, namespace=namespace)
            run_ids: list[str] = await asyncio.wait_for(actor.run_ids.remote(incarnation), 10)
        except (ValueError, asyncio.TimeoutError, ray.exceptions.RayActorError):
            continue
        if not run_ids:
            ray.kill(actor, no_restart=True)
        for run_id in run_ids:  # an actor executes many runs
            attached[run_id] = (name, actor)
    for run_id, (name, actor) in attached.items():
        log.info("re-attaching to run %s on %s", run_id, name)
        run = await asyncio.to_thread(store.get_run, run_id)
        resources = json.loads(run.options).get("resources") if run else None
        supervisor.adopt(run_id, name, actor, resources)
    return attached
