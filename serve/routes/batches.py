"""Batch trigger: many runs of one task in one request (Trigger.dev's
`batchTrigger` body: `{"items": [{"payload", "options"}, …]}`).

The runs share a batch id, which `GET /realtime/v1/batches/{id}`
(`useRealtimeBatch`, `runs.subscribeToBatch`) and `filter[batch]` follow.
Items that differ only in payload and idempotency key are created by
`rayflow.batch_trigger` (one Controller call, one Store transaction: all or
none); items with their own tags, metadata or max duration are triggered one
by one (a failure part-way leaves the earlier runs started, and the error
says how many were).
"""

from __future__ import annotations

import asyncio
import json
import secrets

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, field_validator

from rayflow._runtime.serving import current
from rayflow._tokens import token_claims
from rayflow.errors import RayflowError
from serve import core
from serve.deps import AppState, Caller, ServeState
from serve.routes.runs import TriggerOptions, decode_payload, finite_json
from serve.wire import WireModel

router = APIRouter(tags=["runs"])

MAX_BATCH_ITEMS = 500


class BatchItem(BaseModel):
    payload: object = None
    options: TriggerOptions | None = None

    _finite_payload = field_validator("payload")(finite_json)


class BatchTriggerBody(BaseModel):
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class BatchedRun(WireModel):
    id: str
    task_identifier: str
    is_cached: bool = False


class BatchTriggerResponse(WireModel):
    batch_id: str
    runs: list[BatchedRun]


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(10)


@router.post("/api/v1/tasks/{task_id}/batch", response_model=BatchTriggerResponse)
async def batch_trigger(
    task_id: str, body: BatchTriggerBody, response: Response, who: Caller, st: AppState
) -> BatchTriggerResponse:
    """Start one run of `task_id` per item. The header `x-trigger-jwt` holds a
    public token that may subscribe to the batch (`read:batch:<batchId>`)."""
    who.require("trigger", "tasks", task_id)
    batch_id = new_batch_id()
    runs: list[BatchedRun] = []
    store = current().store
    item_options = [(i.options or TriggerOptions()) for i in body.items]
    for n, o in enumerate(item_options):
        o.check_limits(n)
    shared = {json.dumps(_shared(o), sort_keys=True) for o in item_options}
    if len(shared) == 1 and not item_options[0].metadata:
        import rayflow

        first = item_options[0]
        tags = [first.tags] if isinstance(first.tags, str) else first.tags
        handles = await rayflow.batch_trigger(
            task_id,
            [
                decode_payload(i.payload, o.payload_type)
                for i, o in zip(body.items, item_options, strict=True)
            ],
            idempotency_keys=[who.idempotency_key(o.idempotency_key) for o in item_options],
            tags=tags,
            max_duration=first.max_duration,
        )
        for h in handles:
            if not h.is_cached:
                await asyncio.to_thread(store.update_run, h.id, batch_id=batch_id)
            runs.append(BatchedRun(id=h.id, task_identifier=task_id, is_cached=h.is_cached))
        return _answer(batch_id, runs, response, st)
    for n, item in enumerate(body.items):
        options = item.options or TriggerOptions()
        payload = decode_payload(item.payload, options.payload_type)
        options.idempotency_key = who.idempotency_key(options.idempotency_key)
        try:
            run_id, cached = await core.trigger(
                task_id, payload, options.model_dump(exclude_none=True, by_alias=True)
            )
        except RayflowError as e:
            if not runs:
                raise
            raise type(e)(
                f"{e} (item {n} of batch {batch_id}; items 0..{n - 1} were started)"
            ) from e
        if not cached:
            await asyncio.to_thread(store.update_run, run_id, batch_id=batch_id)
        runs.append(BatchedRun(id=run_id, task_identifier=task_id, is_cached=cached))
    return _answer(batch_id, runs, response, st)


def _shared(options: TriggerOptions) -> dict[str, object]:
    """The options a one-call batch applies to every item alike."""
    wire = options.model_dump(exclude_none=True, by_alias=True)
    return {k: v for k, v in wire.items() if k not in ("idempotencyKey", "payloadType")}


def _answer(
    batch_id: str, runs: list[BatchedRun], response: Response, st: ServeState
) -> BatchTriggerResponse:
    scopes = [f"read:batch:{batch_id}"]
    response.headers["x-trigger-jwt"] = st.mint(scopes)
    response.headers["x-trigger-jwt-claims"] = json.dumps(
        token_claims(scopes, st.settings.token_ttl_s)
    )
    return BatchTriggerResponse(batch_id=batch_id, runs=runs)
