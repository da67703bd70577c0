"""Trigger a task; retrieve, list and cancel runs (Trigger.dev's REST shapes)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import ConfigDict, Field, field_validator

from rayflow._status import FAILED_STATUSES, RunStatus
from rayflow._tokens import run_scopes, token_claims
from rayflow.errors import PayloadTooLarge, ValidationError
from rayflow.runs import run_metadata
from serve import core
from serve.deps import AppState, Caller
from serve.errors import BadRequest
from serve.wire import WireModel, WireRequest

router = APIRouter(tags=["runs"])

#: Trigger.dev's limits on what a trigger may carry
MAX_TAGS = 10
MAX_TAG_LENGTH = 128
MAX_METADATA_BYTES = 256 * 1024


def check_tag_filter(tags: list[str], name: str) -> list[str]:
    """`tags` of a filter (runs carrying every one): a run carries at most
    MAX_TAGS, so a longer list is a 400 naming parameter `name`, as is a tag
    over MAX_TAG_LENGTH characters (and neither reaches the Store)."""
    if len(tags) > MAX_TAGS:
        raise BadRequest(
            f"{name}: at most {MAX_TAGS} tags (a run carries no more), got {len(tags)}"
        )
    for tag in tags:
        if len(tag) > MAX_TAG_LENGTH:
            raise BadRequest(
                f"{name}: a tag is at most {MAX_TAG_LENGTH} characters, got {len(tag)}"
            )
    return tags


PayloadType = Literal["application/json", "application/super+json", "text/plain"]


def finite_json(value: Any) -> Any:
    """`value` unchanged; ValueError when it holds NaN or ±Infinity, which
    Python's JSON parser takes but JSON (and every JavaScript reader) does not:
    stored, they would break every client that reads the run."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and (item != item or item in (float("inf"), float("-inf"))):
            raise ValueError("NaN and Infinity are not JSON")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


# -- wire models --------------------------------------------------------------
class TriggerOptions(WireRequest):
    """Options of a trigger; unknown Trigger.dev options are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    idempotency_key: str | None = Field(default=None, max_length=2048)
    tags: str | list[str] | None = None
    ttl: str | int | None = None
    #: seconds; a negative duration is a 422 here, not a 500 in the runtime
    max_duration: int | None = Field(default=None, ge=0)
    max_attempts: int | None = None
    parent_run_id: str | None = None
    payload_type: PayloadType | None = None
    metadata: dict[str, Any] | None = None

    _finite_metadata = field_validator("metadata")(finite_json)

    def tag_list(self) -> list[str] | None:
        return [self.tags] if isinstance(self.tags, str) else self.tags

    def check_limits(self, item: int | None = None) -> None:
        """Trigger.dev's limits: at most 10 tags of 1-128 characters (400),
        metadata of at most 256 KiB as JSON (413)."""
        where = "" if item is None else f" (batch item {item})"
        tags = self.tag_list() or []
        if len(tags) > MAX_TAGS:
            raise BadRequest(
                f"options.tags: at most {MAX_TAGS} tags per run, got {len(tags)}{where}"
            )
        for tag in tags:
            if not 1 <= len(tag) <= MAX_TAG_LENGTH:
                raise BadRequest(
                    f"options.tags: each tag is 1 to {MAX_TAG_LENGTH} characters, got one of"
                    f" {len(tag)}{where}"
                )
        if self.metadata is not None:
            size = len(json.dumps(self.metadata, separators=(",", ":")).encode())
            if size > MAX_METADATA_BYTES:
                raise PayloadTooLarge(
                    f"options.metadata is {size} bytes as JSON; the limit is"
                    f" {MAX_METADATA_BYTES} (256 KiB){where}"
                )


class TriggerBody(WireRequest):
    """`payload` is any JSON value, or a string serialised as `options.payloadType`."""

    payload: Any = None
    options: TriggerOptions | None = None

    _finite_payload = field_validator("payload")(finite_json)


class TriggerResponse(WireModel):
    id: str
    is_cached: bool = False


class RunEnvironment(WireModel):
    id: str = "rayflow"
    name: str = "rayflow"


class RunSummary(WireModel):
    id: str
    status: RunStatus
    task_identifier: str
    idempotency_key: str | None = None
    is_queued: bool
    is_executing: bool
    is_waiting: bool
    is_completed: bool
    is_success: bool
    is_failed: bool
    is_cancelled: bool
    is_test: bool = False
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tags: list[str]
    cost_in_cents: float = 0
    base_cost_in_cents: float = 0
    duration_ms: int = 0
    depth: int = 0
    trigger_function: str = "trigger"


class RelatedRuns(WireModel):
    root: RunSummary | None = None
    parent: RunSummary | None = None
    children: list[RunSummary] = []


class RunError(WireModel):
    model_config = ConfigDict(extra="allow")
    message: str
    name: str | None = None
    stack_trace: str | None = None


class RunResponse(RunSummary):
    payload: Any = None
    output: Any = None
    metadata: dict[str, Any] | None = None
    batch_id: str | None = None
    #: rayflow's own: the longest the run held its RunActor's event loop (ms)
    #: past the limit (the dashboard marks the run; every run there waited)
    loop_blocked_ms: int | None = None
    error: RunError | None = None
    attempt_count: int = 0
    related_runs: RelatedRuns = RelatedRuns()


class ListedRun(RunSummary):
    env: RunEnvironment = RunEnvironment()


class Pagination(WireModel):
    next: str | None = None
    previous: str | None = None


class ListRunsResponse(WireModel):
    data: list[ListedRun]
    pagination: Pagination


class CanceledRunResponse(WireModel):
    id: str


# -- conversions ----------------------------------------------------------------
def decode_payload(payload: Any, payload_type: str | None) -> Any:
    """The value the SDK meant: it sends a string serialised as `payloadType`."""
    if not isinstance(payload, str) or payload_type in (None, "text/plain"):
        return payload
    try:
        value = finite_json(json.loads(payload))
    except ValueError as e:  # JSONDecodeError is one
        raise ValidationError(f"payload is not valid {payload_type}: {e}") from e
    if payload_type == "application/super+json" and isinstance(value, dict) and "json" in value:
        # superjson: {"json": <plain JSON>, "meta": {...}}; dates etc. arrive as
        # their JSON forms, which is what a Python task can take anyway
        return value["json"]
    return value


def _ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=timezone.utc)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def summary_fields(run: Any) -> dict[str, Any]:
    status = run.status
    started, ended = run.started_at, run.finished_at
    tags = _json(run.tags) or []
    return {
        "id": run.id,
        "status": status,
        "task_identifier": run.task_id,
        "idempotency_key": run.idempotency_key,
        "is_queued": status == RunStatus.QUEUED,
        "is_executing": status == RunStatus.EXECUTING,
        "is_waiting": status == RunStatus.WAITING,
        # Trigger.dev's meaning: ran to an end (success or failure); a
        # canceled run is not "completed" (its SDK computes the same)
        "is_completed": status == RunStatus.COMPLETED or status in FAILED_STATUSES,
        "is_success": status == RunStatus.COMPLETED,
        "is_failed": status in FAILED_STATUSES,
        "is_cancelled": status == RunStatus.CANCELED,
        "created_at": _ms(run.created_at),
        "updated_at": _ms(run.updated_at),
        "started_at": _ms(started),
        "finished_at": _ms(ended),
        "tags": tags if isinstance(tags, list) else [tags],
        "duration_ms": (ended - started) if started and ended else 0,
        "depth": 0 if run.parent_id is None else 1,
    }


def run_response(run: Any, parent: Any, root: Any, children: list[Any]) -> RunResponse:
    error = _json(run.error)
    if isinstance(error, dict):
        error = {**error, "message": str(error.get("message", ""))}
    elif error is not None:
        error = {"message": str(error)}
    return RunResponse(
        **summary_fields(run),
        payload=_json(run.payload),
        output=_json(run.output),
        metadata=run_metadata(run),
        batch_id=run.batch_id,
        loop_blocked_ms=run.loop_blocked_ms,
        error=error,
        attempt_count=run.attempt,
        related_runs=RelatedRuns(
            root=RunSummary(**summary_fields(root)) if root else None,
            parent=RunSummary(**summary_fields(parent)) if parent else None,
            children=[RunSummary(**summary_fields(c)) for c in children],
        ),
    )


# -- routes -----------------------------------------------------------------------
@router.post("/api/v1/tasks/{task_id}/trigger", response_model=TriggerResponse)
async def trigger_task(
    task_id: str,
    body: TriggerBody,
    response: Response,
    who: Caller,
    st: AppState,
) -> TriggerResponse:
    """Start a run of `task_id`. The response header `x-trigger-jwt` holds a
    public access token that may read the run and write its input streams."""
    who.require("trigger", "tasks", task_id)
    options = body.options or TriggerOptions()
    options.check_limits()
    payload = decode_payload(body.payload, options.payload_type)
    options.idempotency_key = who.idempotency_key(options.idempotency_key)
    run_id, cached = await core.trigger(
        task_id, payload, options.model_dump(exclude_none=True, by_alias=True)
    )
    scopes = run_scopes(run_id)
    response.headers["x-trigger-jwt"] = st.mint(scopes)
    response.headers["x-trigger-jwt-claims"] = json.dumps(
        token_claims(scopes, st.settings.token_ttl_s)
    )
    return TriggerResponse(id=run_id, is_cached=cached)


# absent, not null: the SDK's schema (`runs.retrieve`) refuses null for its optional fields
@router.get("/api/v3/runs/{run_id}", response_model=RunResponse, response_model_exclude_none=True)
async def retrieve_run(run_id: str, who: Caller) -> RunResponse:
    """A run with its payload, output, error and related runs (fields
    without a value are absent)."""
    who.require("read", "runs", run_id)
    run, parent, root, children = await core.retrieve_with_relations(run_id)
    return run_response(run, parent, root, children)


@router.get("/api/v1/runs", response_model=ListRunsResponse)
async def list_runs(
    who: Caller,
    status: Annotated[list[str] | None, Query(alias="filter[status]")] = None,
    task: Annotated[list[str] | None, Query(alias="filter[taskIdentifier]")] = None,
    tag: Annotated[list[str] | None, Query(alias="filter[tag]")] = None,
    batch: Annotated[str | None, Query(alias="filter[batch]")] = None,
    limit: Annotated[int, Query(alias="page[size]", ge=1, le=100)] = 25,
    after: Annotated[str | None, Query(alias="page[after]")] = None,
) -> ListRunsResponse:
    """Runs, newest first; `filter[tag]=a,b` keeps the runs carrying every
    tag given. Needs `read:runs` (all runs) or the secret key."""
    who.require("read", "runs", None)
    statuses = [s for value in status or [] for s in value.split(",") if s]
    tasks = [t for value in task or [] for t in value.split(",") if t]
    tags = check_tag_filter(
        [t for value in tag or [] for t in value.split(",") if t], "filter[tag]"
    )
    runs, next_cursor = await core.list_runs(
        statuses=statuses or None,
        task_ids=tasks or None,
        limit=limit,
        after=after,
        tags=tags or None,
        batch_id=batch,
    )
    return ListRunsResponse(
        data=[ListedRun(**summary_fields(r)) for r in runs],
        pagination=Pagination(next=next_cursor),
    )


@router.post("/api/v2/runs/{run_id}/cancel", response_model=CanceledRunResponse)
async def cancel_run(run_id: str, who: Caller) -> CanceledRunResponse:
    """Cancel a run; canceling a finished run changes nothing."""
    who.require_secret("canceling a run")
    await core.cancel(run_id)
    return CanceledRunResponse(id=run_id)
