"""Wait tokens over HTTP: what the SDK's `wait.createToken`, `listTokens`,
`retrieveToken`, `completeToken` and React's `useWaitToken` call, plus the
token's callback `url` (a webhook POSTs its data there, no key needed: the
path carries an HMAC of the token id).

Creating, listing and retrieving need the secret key; completing needs the
secret key or a token with `write:waitpoints:<id>` (the `x-trigger-jwt`
answered by creation, `WaitToken.public_access_token` in Python).
"""

from __future__ import annotations

import hmac
import json
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import Field, field_validator

import rayflow.wait as wait
from rayflow._runtime.serving import parse_duration
from rayflow._tokens import token_claims
from serve import core
from serve.deps import AppState, Caller
from serve.errors import BadRequest, RouteError
from serve.routes.runs import Pagination, finite_json
from serve.wire import WireModel, WireRequest

router = APIRouter(tags=["wait tokens"])


class CreateTokenBody(WireRequest):
    idempotency_key: str | None = Field(default=None, max_length=2048)
    #: "30s", "1h", … after which the key names a new token
    idempotency_key_ttl: str | None = Field(default=None, alias="idempotencyKeyTTL")
    #: "30s", "1h", "7d" or an ISO date
    timeout: str | None = None
    tags: list[str] | str | None = None


class CreateTokenResponse(WireModel):
    id: str
    is_cached: bool
    url: str


class TokenItem(WireModel):
    id: str
    url: str
    status: str
    completed_at: datetime | None = None
    timeout_at: datetime | None = None
    idempotency_key: str | None = None
    idempotency_key_expires_at: datetime | None = None
    tags: list[str]
    created_at: datetime


class RetrievedToken(TokenItem):
    #: the data as JSON text (the SDK parses it)
    output: str | None = None
    output_type: str | None = None
    output_is_error: bool | None = None


class ListTokensResponse(WireModel):
    data: list[TokenItem]
    pagination: Pagination


class CompleteTokenBody(WireRequest):
    data: Any = None

    _finite_data = field_validator("data")(finite_json)


class CompleteTokenResponse(WireModel):
    success: bool = True


def _timeout_s(text: str | None) -> float | None:
    """Seconds from now: the SDK sends a duration or a `Date` as ISO text."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"timeout {text!r} is neither a duration ('30s', '5m', '24h', '7d') nor an ISO date"
        ) from None
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return max(0.0, (at - datetime.now(timezone.utc)).total_seconds())


def _item(token: wait.WaitTokenInfo) -> dict[str, Any]:
    return {
        "id": token.id,
        "url": token.url,
        "status": token.status.value,
        "completed_at": token.completed_at,
        "timeout_at": token.timeout_at,
        "idempotency_key": token.idempotency_key,
        "idempotency_key_expires_at": token.idempotency_key_expires_at,
        "tags": token.tags,
        "created_at": token.created_at,
    }


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.post("/api/v1/waitpoints/tokens", response_model=CreateTokenResponse)
async def create_token(
    body: CreateTokenBody, request: Request, response: Response, who: Caller, st: AppState
) -> CreateTokenResponse:
    """Create a wait token. The `x-trigger-jwt` response header holds a
    public access token that may complete it (`write:waitpoints:<id>`)."""
    who.require_secret("creating a wait token")
    try:
        token = await wait.create_token(
            timeout=_timeout_s(body.timeout),
            idempotency_key=body.idempotency_key,
            idempotency_key_ttl=body.idempotency_key_ttl,
            tags=body.tags,
        )
    except ValueError as e:
        raise BadRequest(str(e)) from None
    scopes = [f"write:waitpoints:{token.id}"]
    response.headers["x-trigger-jwt"] = st.mint(scopes, wait.TOKEN_ACCESS_TTL_S)
    response.headers["x-trigger-jwt-claims"] = json.dumps(
        token_claims(scopes, wait.TOKEN_ACCESS_TTL_S)
    )
    url = core.wait_token_url(_base_url(request), st.secret_key, token.id)
    return CreateTokenResponse(id=token.id, is_cached=token.is_cached, url=url)


# absent, not null: the SDK's schema has optional fields that refuse null
@router.get(
    "/api/v1/waitpoints/tokens",
    response_model=ListTokensResponse,
    response_model_exclude_none=True,
)
async def list_tokens(
    request: Request,
    who: Caller,
    st: AppState,
    status: Annotated[str | None, Query(alias="filter[status]")] = None,
    tags: Annotated[str | None, Query(alias="filter[tags]")] = None,
    idempotency_key: Annotated[str | None, Query(alias="filter[idempotencyKey]")] = None,
    created_from: Annotated[int | None, Query(alias="filter[createdAt][from]", ge=0)] = None,
    created_to: Annotated[int | None, Query(alias="filter[createdAt][to]", ge=0)] = None,
    limit: Annotated[int, Query(alias="page[size]", ge=1, le=100)] = 25,
    after: Annotated[str | None, Query(alias="page[after]")] = None,
) -> ListTokensResponse:
    """Wait tokens, newest first; `filter[status]=WAITING,COMPLETED`,
    `filter[tags]=a,b` (every tag given). Needs the secret key."""
    who.require_secret("listing wait tokens")
    statuses = [s for s in (status or "").split(",") if s]
    for s in statuses:
        if s not in ("WAITING", "COMPLETED", "TIMED_OUT"):
            raise BadRequest(f"filter[status] {s!r} is not WAITING, COMPLETED or TIMED_OUT")
    tokens, cursor = await core.list_wait_tokens(
        statuses=statuses or None,
        tags=[t for t in (tags or "").split(",") if t] or None,
        idempotency_key=idempotency_key,
        created_from=created_from,
        created_to=created_to,
        limit=limit,
        after=after,
    )
    base = _base_url(request)
    return ListTokensResponse(
        data=[TokenItem(**_item(wait.info(t, base, st.secret_key))) for t in tokens],
        pagination=Pagination(next=cursor),
    )


@router.get(
    "/api/v1/waitpoints/tokens/{token_id}",
    response_model=RetrievedToken,
    response_model_exclude_none=True,
)
async def retrieve_token(
    token_id: str, request: Request, who: Caller, st: AppState
) -> RetrievedToken:
    """A wait token, with its `output` (JSON text) once completed; a timed
    out token has `outputIsError: true`. Needs the secret key."""
    who.require_secret("retrieving a wait token")
    token = await core.get_wait_token(token_id)
    item = _item(wait.info(token, _base_url(request), st.secret_key))
    settled = token.status != wait.WaitTokenStatus.WAITING
    return RetrievedToken(
        **item,
        output=token.output if settled else None,
        output_type="application/json" if settled else None,
        output_is_error=token.output_is_error if settled else None,
    )


@router.post(
    "/api/v1/waitpoints/tokens/{token_id}/complete",
    response_model=CompleteTokenResponse,
    responses={
        404: {"description": "no such wait token"},
        413: {"description": "the body is over 1 MiB"},
    },
)
async def complete_token(
    token_id: str, body: CompleteTokenBody, who: Caller
) -> CompleteTokenResponse:
    """Complete a wait token with `data`; the runs waiting on it continue.
    A token completed (or timed out) already keeps its first outcome and
    this answers success all the same. Secret key or `write:waitpoints:<id>`."""
    who.require("write", "waitpoints", token_id)
    await core.complete_wait_token(token_id, body.data)
    return CompleteTokenResponse()


@router.post(
    "/api/v1/waitpoints/tokens/{token_id}/callback/{signature}",
    response_model=CompleteTokenResponse,
    responses={404: {"description": "no such wait token, or the wrong signature"}},
)
async def complete_token_by_callback(
    token_id: str,
    signature: str,
    st: AppState,
    data: Annotated[Any, Body()] = None,
) -> CompleteTokenResponse:
    """The token's `url`: a webhook POSTs any JSON body here and it becomes
    the token's data. No key: the path's signature is the credential."""
    expected = core.wait_token_signature(st.secret_key, token_id)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise RouteError(
            404,
            "Waitpoint not found",
            BadRequest(f"no wait token {token_id} with that callback signature"),
        )
    try:
        finite_json(data)
    except ValueError as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    await core.complete_wait_token(token_id, data)
    return CompleteTokenResponse()
