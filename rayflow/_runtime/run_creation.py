"""Run creation: the task registry's defaults and the runs a trigger makes —
QUEUED, or, when a slot and an actor with room are free at once, EXECUTING
on that actor (placed as created: it starts there without a claim).

Triggers arriving together share one Store transaction (`GroupCommit`). An
idempotency key names one trigger: reused with the same payload it returns
the existing run; reused with another payload it is a mistake (or someone
else's key), never a retry, and raises `IdempotencyConflict` — after the runs
that were new have been started.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import TYPE_CHECKING, Any

from rayflow._runtime.admission import Admission, Resources
from rayflow._runtime.batching import GroupCommit
from rayflow._status import RunStatus
from rayflow.errors import IdempotencyConflict, RunNotFound, TaskNotFound
from rayflow.store.base import RunRecord, Store

if TYPE_CHECKING:
    from rayflow._runtime.supervisor import Supervisor

CONFLICT = "an idempotency key was reused with a different payload: "

#: one trigger item: (payload JSON, options, idempotency key, tags)
TriggerItem = tuple[str, dict[str, Any], str | None, list[str] | None]


def new_run_id() -> str:
    return "run_" + secrets.token_hex(10)


class RunCreation:
    def __init__(
        self, store: Store, admission: Admission, supervisor: Supervisor | None = None
    ) -> None:
        self.store = store
        self.admission = admission
        self.supervisor = supervisor
        #: task id -> its defaults (JSON), as registered
        self._defaults: dict[str, str] = {}
        #: task id -> its pickle, as registered (a run placed as it is
        #: created takes it to its actor: `Supervisor.start_placed`)
        self._blobs: dict[str, bytes | None] = {}
        self._creates: GroupCommit[RunRecord, tuple[RunRecord, bool]] = GroupCommit(
            store.create_runs
        )

    async def register_task(self, task_id: str, blob: bytes, defaults_json: str) -> None:
        await asyncio.to_thread(self.store.put_task, task_id, blob, defaults_json)
        self._defaults[task_id] = defaults_json
        self._blobs[task_id] = blob

    async def task_defaults(self, task_id: str) -> dict[str, Any]:
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

    async def trigger_batch(
        self, task_id: str, items: list[TriggerItem], parent_id: str | None
    ) -> list[tuple[str, bool]]:
        """Create runs of one task in one transaction and launch the new
        ones; returns (run id, newly created) per item. An idempotency key
        reused with another payload raises `IdempotencyConflict` (naming
        every such item), after the new runs were started."""
        outcomes = await self.trigger_each(task_id, items, parent_id)
        conflicts = [(n, o) for n, o in enumerate(outcomes) if isinstance(o, IdempotencyConflict)]
        if conflicts:
            # the run the key already names, when there is one such run
            named = {o.run_id for _, o in conflicts}
            raise IdempotencyConflict(
                CONFLICT
                + "; ".join(f"item {n}: {str(o).removeprefix(CONFLICT)}" for n, o in conflicts),
                run_id=named.pop() if len(named) == 1 else None,
            )
        return [o for o in outcomes if not isinstance(o, IdempotencyConflict)]

    async def trigger_each(
        self, task_id: str, items: list[TriggerItem], parent_id: str | None
    ) -> list[tuple[str, bool] | IdempotencyConflict]:
        """`trigger_batch` for items of separate callers (triggers a process
        coalesced into one call): each item's outcome on its own — (run id,
        newly created), or the `IdempotencyConflict` of that item alone."""
        defaults = await self.task_defaults(task_id)
        root_id = None
        if parent_id is not None:
            parent = await asyncio.to_thread(self.store.get_run, parent_id)
            if parent is None:
                raise RunNotFound(f"parent run {parent_id} does not exist", run_id=parent_id)
            root_id = parent.root_id or parent.id
        if task_id not in self._blobs and self.supervisor is not None:
            self._blobs[task_id] = await asyncio.to_thread(self.store.get_task, task_id)
        child = parent_id is not None
        records: list[RunRecord] = []
        resources: list[Resources] = []
        #: the runs placed on an actor as they are created: created EXECUTING
        #: there (claimed by their creation) and started without a claim
        placed: set[str] = set()
        for payload_json, options, idempotency_key, tags in items:
            run_options = {**defaults, **options}
            run_id = new_run_id()
            needs = run_options.get("resources")
            resources.append(needs)
            record = RunRecord(
                id=run_id,
                task_id=task_id,
                payload=payload_json,
                options=json.dumps(run_options),
                tags=json.dumps(tags or []),
                parent_id=parent_id,
                root_id=root_id or run_id,
                idempotency_key=idempotency_key,
            )
            actor_name = (
                self.supervisor.place_now(run_id, needs, child=child)
                if self.supervisor is not None
                else None
            )
            if actor_name is not None:
                placed.add(run_id)
                record.status, record.actor_name = RunStatus.EXECUTING.value, actor_name
                record.attempt, record.started_at = 1, record.created_at
            records.append(record)
        try:
            created = await self._creates.submit_many(records)
        except BaseException:
            for rec, needs in zip(records, resources, strict=True):
                if rec.id in placed and self.supervisor is not None:
                    self.supervisor.unplace(rec.id, needs)
            raise
        for (run, new), rec, needs in zip(created, records, resources, strict=True):
            if rec.id in placed and self.supervisor is not None:
                if new:
                    self.supervisor.start_placed(run, needs, self._blobs.get(task_id))
                else:
                    self.supervisor.unplace(rec.id, needs)
            elif new:
                self.admission.launch(run.id, needs, child=child)
        # a key names one trigger: reused with another payload it is a mistake
        # (or someone else's key), never a retry; the new runs above still start
        outcomes: list[tuple[str, bool] | IdempotencyConflict] = []
        for (run, new), rec in zip(created, records, strict=True):
            if not new and run.payload != rec.payload:
                outcomes.append(
                    IdempotencyConflict(
                        f"{CONFLICT}idempotency key {rec.idempotency_key!r} was used for run"
                        f" {run.id}",
                        run_id=run.id,
                    )
                )
            else:
                outcomes.append((run.id, new))
        return outcomes
