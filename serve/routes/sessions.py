"""Sessions over HTTP: what `@trigger.dev/sdk`'s `sessions.start`,
`retrieve`, `update`, `close`, `list` and `chat.requestUpgrade`
(end-and-continue) call (docs/wire.md, "Sessions").

Starting, listing and updating need the secret key; retrieving and closing
take a session's public access token too (`read:` / `write:sessions:<id or
external id>`), which `start` answers in `publicAccessToken`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from pydantic import Field, field_validator

from rayflow._runtime.serving import parse_duration
from serve import session_ops as ops
from serve.deps import AppState, Caller
from serve.errors import BadRequest
from serve.routes.runs import finite_json
from serve.wire import WireModel, WireRequest

router = APIRouter(tags=["sessions"])

_TAGS = Field(default=None, max_length=10)


class TriggerConfigBody(WireRequest):
    base_payload: dict[str, Any]
    machine: str | None = None
    queue: str | None = Field(default=None, max_length=128)
    tags: list[Annotated[str, Field(max_length=128)]] | None = _TAGS
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    max_duration: int | None = Field(default=None, ge=1)
    lock_to_version: str | None = None
    region: str | None = None
    idle_timeout_in_seconds: int | None = Field(default=None, ge=1, le=3600)
    ttl: str | int | None = None

    _finite = field_validator("base_payload")(finite_json)


class CreateSessionBody(WireRequest):
    type: str = Field(min_length=1, max_length=64)
    external_id: str | None = Field(default=None, max_length=256)
    task_identifier: str = Field(min_length=1, max_length=128)
    trigger_config: TriggerConfigBody
    tags: list[Annotated[str, Field(max_length=128)]] | None = _TAGS
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None

    _finite = field_validator("metadata")(finite_json)


class UpdateSessionBody(WireRequest):
    tags: list[Annotated[str, Field(max_length=128)]] | None = _TAGS
    metadata: dict[str, Any] | None = None

    _finite = field_validator("metadata")(finite_json)


class CloseSessionBody(WireRequest):
    reason: str | None = Field(default=None, max_length=256)
    calling_run_id: str | None = None


class EndAndContinueBody(WireRequest):
    calling_run_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(max_length=64)


class EndAndContinueResponse(WireModel):
    run_id: str
    swapped: bool


class SessionItem(WireModel):
    id: str
    external_id: str | None
    type: str
    task_identifier: str
    trigger_config: dict[str, Any] | None = None
    current_run_id: str | None = None
    tags: list[str]
    metadata: dict[str, Any] | None
    closed_at: datetime | None
    closed_reason: str | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


class CreatedSession(SessionItem):
    run_id: str
    public_access_token: str
    is_cached: bool


class ListSessionsResponse(WireModel):
    data: list[SessionItem]
    #: `{"next"?}`: absent, not null, when there is no next page (the SDK's schema)
    pagination: dict[str, str]


def _ms(at: datetime | None) -> int | None:
    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return int(at.timestamp() * 1000)


@router.post(
    "/api/v1/sessions",
    response_model=CreatedSession,
    status_code=201,
    responses={200: {"model": CreatedSession, "description": "the session existed already"}},
)
async def start_session(
    body: CreateSessionBody, response: Response, who: Caller, st: AppState
) -> CreatedSession:
    """Create the session and trigger its first run (201), or — a session
    holds `externalId` already — return it (200, `isCached: true`) and start
    nothing. `publicAccessToken` reads and writes this session only."""
    who.require_secret("starting a session")
    config = body.trigger_config.model_dump(exclude_none=True, by_alias=True)
    session, created = await ops.start(
        type=body.type,
        external_id=body.external_id,
        task_id=body.task_identifier,
        trigger_config=config,
        tags=body.tags,
        metadata=body.metadata,
        expires_at_ms=_ms(body.expires_at),
    )
    token = st.mint(ops.session_scopes(session), st.settings.session_token_ttl_s)
    if not created:
        response.status_code = 200
    return CreatedSession(
        **ops.item(session),
        run_id=session.current_run_id or "",
        public_access_token=token,
        is_cached=not created,
    )


@router.get("/api/v1/sessions", response_model=ListSessionsResponse)
async def list_sessions(
    who: Caller,
    type_: Annotated[str | None, Query(alias="filter[type]")] = None,
    tags: Annotated[str | None, Query(alias="filter[tags]")] = None,
    task_ids: Annotated[str | None, Query(alias="filter[taskIdentifier]")] = None,
    external_id: Annotated[str | None, Query(alias="filter[externalId]")] = None,
    status: Annotated[str | None, Query(alias="filter[status]")] = None,
    period: Annotated[str | None, Query(alias="filter[createdAt][period]")] = None,
    created_from: Annotated[int | None, Query(alias="filter[createdAt][from]", ge=0)] = None,
    created_to: Annotated[int | None, Query(alias="filter[createdAt][to]", ge=0)] = None,
    limit: Annotated[int, Query(alias="page[size]", ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(alias="page[after]")] = None,
) -> ListSessionsResponse:
    """Sessions, newest first. Filters take comma lists: `filter[type]`,
    `filter[tags]` (every one), `filter[taskIdentifier]`, `filter[status]`
    (ACTIVE, CLOSED, EXPIRED); `filter[externalId]`; the creation window.
    Needs the secret key."""
    who.require_secret("listing sessions")
    statuses = _split(status)
    for s in statuses or []:
        if s not in ("ACTIVE", "CLOSED", "EXPIRED"):
            raise BadRequest(f"filter[status] {s!r} is not ACTIVE, CLOSED or EXPIRED")
    if period is not None:
        try:
            span_s = parse_duration(period)
        except ValueError as e:
            raise BadRequest(f"filter[createdAt][period]: {e}") from None
        span_ms = int((span_s or 0) * 1000)
        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        created_from = max(created_from or 0, now - span_ms)
    found, cursor = await ops.list_sessions(
        types=_split(type_),
        task_ids=_split(task_ids),
        tags=_split(tags),
        external_id=external_id,
        statuses=statuses,
        created_from=created_from,
        created_to=created_to,
        limit=limit,
        after=after,
    )
    return ListSessionsResponse(
        data=[SessionItem(**ops.item(s)) for s in found],
        pagination={} if cursor is None else {"next": cursor},
    )


def _split(value: str | None) -> list[str] | None:
    return [v for v in (value or "").split(",") if v] or None


@router.get("/api/v1/sessions/{session}", response_model=SessionItem)
async def retrieve_session(session: str, who: Caller) -> SessionItem:
    """A session by its id (`session_…`) or external id. Secret key or
    `read:sessions:<id or external id>`."""
    found = await ops.get(session)
    ops.require(who, "read", found)
    return SessionItem(**ops.item(found))


@router.patch("/api/v1/sessions/{session}", response_model=SessionItem)
async def update_session(session: str, body: UpdateSessionBody, who: Caller) -> SessionItem:
    """Replace the session's tags and/or metadata. Needs the secret key."""
    who.require_secret("updating a session")
    found = await ops.get(session)
    return SessionItem(**ops.item(await ops.update(found, body.tags, body.metadata)))


@router.post("/api/v1/sessions/{session}/close", response_model=SessionItem)
async def close_session(
    session: str, who: Caller, body: Annotated[CloseSessionBody | None, Body()] = None
) -> SessionItem:
    """Close the session: it takes no more records and starts no more runs
    (idempotent: the first close's time and reason stand). Secret key or
    `write:sessions:<id or external id>`."""
    found = await ops.get(session)
    ops.require(who, "write", found)
    reason = body.reason if body else None
    return SessionItem(**ops.item(await ops.close(found.id, reason)))


@router.post("/api/v1/sessions/{session}/end-and-continue", response_model=EndAndContinueResponse)
async def end_and_continue(
    session: str, body: EndAndContinueBody, who: Caller
) -> EndAndContinueResponse:
    """The calling run hands the session over: a fresh run with the
    session's trigger config becomes current (`swapped`), unless another
    run is current already (`swapped: false`, its id). Secret key."""
    who.require_secret("continuing a session")
    found = await ops.get(session)
    run_id, swapped = await ops.continue_with_fresh_run(found.id, body.calling_run_id, body.reason)
    return EndAndContinueResponse(run_id=run_id or "", swapped=swapped)
