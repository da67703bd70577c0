"""Wait tokens: a run waits, holding no process, until someone — a person
approving, a webhook, another service — completes the token.

    from rayflow import wait

    @task(id="approve")
    async def approve(payload: dict) -> str:
        token = await wait.create_token(timeout="1h", tags=["doc:42"])
        await notify(token.id, token.public_access_token)   # in a step
        result = await wait.for_token(token, type=Approval)
        return "approved" if result.ok and result.output.approved else "no"

    # anywhere else: Python, the SDK's wait.completeToken, useWaitToken,
    # POST /api/v1/waitpoints/tokens/{id}/complete, or a POST to token.url
    wait.complete_token(token_id, {"approved": True}).result()

Trigger.dev's `wait.createToken` / `forToken` / `completeToken` /
`retrieveToken` / `listTokens`, over the same HTTP API. A token is completed
once: a later completion changes nothing (the first one stands), and a token
whose timeout passed first stays TIMED_OUT.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_jsonable_python

from rayflow import _tokens
from rayflow._handles import Result
from rayflow._response import Response
from rayflow._runtime import connection, wait_tokens
from rayflow._runtime.adapters import adapter_for
from rayflow._runtime.context import require_run
from rayflow._runtime.durations import parse_duration
from rayflow._status import WaitTokenStatus
from rayflow._wait_model import WaitToken, WaitTokenInfo
from rayflow.errors import InvalidArgument, RayflowError, ValidationError, WaitTimeout
from rayflow.store.base import WaitTokenRecord

T = TypeVar("T")

#: how long the public access token of a new wait token is valid (Trigger.dev: 24 h)
TOKEN_ACCESS_TTL_S = 24 * 3600


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _base_url() -> str:
    settings = connection.current().settings
    return f"http://{settings.http_host}:{settings.http_port}"


def info(token: WaitTokenRecord, base_url: str, secret_key: str) -> WaitTokenInfo:
    """A stored token as users see it (the HTTP API shares this)."""
    output: Any = None
    error: RayflowError | None = None
    if token.output is not None and token.status != WaitTokenStatus.WAITING:
        value = json.loads(token.output)
        if token.output_is_error:
            message = value.get("message") if isinstance(value, dict) else None
            error = WaitTimeout(message or f"wait token {token.id} timed out")
        else:
            output = value
    return WaitTokenInfo(
        id=token.id,
        url=wait_tokens.callback_url(base_url, secret_key, token.id),
        status=WaitTokenStatus(token.status),
        tags=token.tags,
        created_at=_time(token.created_at) or datetime.now(timezone.utc),
        completed_at=_time(token.completed_at),
        timeout_at=_time(token.timeout_at),
        idempotency_key=token.idempotency_key,
        idempotency_key_expires_at=_time(token.idempotency_key_expires_at),
        output=output,
        error=error,
    )


def _token_id(token: WaitToken | WaitTokenInfo | str) -> str:
    token_id = token if isinstance(token, str) else token.id
    if not isinstance(token_id, str) or not token_id:
        raise InvalidArgument(f"not a wait token: {token!r}")
    return token_id


def _timeout_s(timeout: float | str | datetime | None) -> float | None:
    if isinstance(timeout, datetime):
        at = timeout if timeout.tzinfo else timeout.replace(tzinfo=timezone.utc)
        return max(0.0, (at - datetime.now(timezone.utc)).total_seconds())
    return parse_duration(timeout)


def create_token(
    *,
    timeout: float | str | datetime | None = None,
    idempotency_key: str | None = None,
    idempotency_key_ttl: float | str | None = None,
    tags: list[str] | str | None = None,
) -> Response[WaitToken]:
    """Create a wait token. `timeout`: seconds, "30s"/"5m"/"24h"/"7d" or a
    datetime; past it the token is TIMED_OUT and its waiters get a failed
    `Result`. `idempotency_key`: a second creation with the same key (until
    `idempotency_key_ttl`, default forever) returns the first token, with
    `is_cached=True` — keys are global, so scope them yourself
    (`f"approve:{doc_id}"`). Up to 10 `tags` under 128 characters each.
    Inside a task the creation is journaled: a replay gets the same token.
    Raises `InvalidArgument` for a bad timeout, key or tag."""
    timeout_s = _timeout_s(timeout)
    ttl_s = parse_duration(idempotency_key_ttl)
    checked = wait_tokens.check_tags(tags)

    async def go() -> WaitToken:
        token, cached = await wait_tokens.create(
            timeout_s=timeout_s,
            idempotency_key=idempotency_key,
            idempotency_key_ttl_s=ttl_s,
            tags=checked,
        )
        secret = connection.current().secret_key
        return WaitToken(
            id=token.id,
            url=wait_tokens.callback_url(_base_url(), secret, token.id),
            public_access_token=_tokens.mint_token(
                secret, [f"write:waitpoints:{token.id}"], TOKEN_ACCESS_TTL_S
            ),
            is_cached=cached,
        )

    return Response(go)


def complete_token(token: WaitToken | WaitTokenInfo | str, data: Any = None) -> Response[None]:
    """Complete the token with `data` (anything JSON-serialisable): every run
    waiting on it continues with `data` as its `Result.output`. A token that
    was completed or timed out already keeps its first outcome (no error).
    Inside a task it is journaled. Raises `WaitTokenNotFound`."""
    token_id = _token_id(token)
    try:
        text = json.dumps(to_jsonable_python(data))
    except (TypeError, ValueError) as e:
        raise ValidationError(f"data for wait token {token_id} is not JSON: {e}") from None

    async def go() -> None:
        await wait_tokens.complete(token_id, text)

    return Response(go)


def retrieve_token(token: WaitToken | WaitTokenInfo | str) -> Response[WaitTokenInfo]:
    """The token's status, and its output (or timeout error) once it has one.
    Raises `WaitTokenNotFound`."""
    token_id = _token_id(token)

    async def go() -> WaitTokenInfo:
        found = await wait_tokens.get(token_id)
        return info(found, _base_url(), connection.current().secret_key)

    return Response(go)


def list_tokens(
    *,
    status: WaitTokenStatus | str | builtins.list[WaitTokenStatus | str] | None = None,
    tags: builtins.list[str] | str | None = None,
    idempotency_key: str | None = None,
    limit: int = 100,
) -> Response[builtins.list[WaitTokenInfo]]:
    """Tokens newest first, filtered by status, tags (all of them) and key."""
    statuses = [status] if isinstance(status, str | WaitTokenStatus) else list(status or [])
    wanted = [WaitTokenStatus(s).value for s in statuses]
    tag_list = [tags] if isinstance(tags, str) else list(tags or [])

    async def go() -> builtins.list[WaitTokenInfo]:
        conn = connection.current()
        found = await asyncio.to_thread(
            conn.store.list_wait_tokens,
            statuses=wanted or None,
            tags=tag_list or None,
            idempotency_key=idempotency_key,
            limit=limit,
        )
        return [info(t, _base_url(), conn.secret_key) for t in found]

    return Response(go)


async def for_token(token: WaitToken | WaitTokenInfo | str, *, type: Any = Any) -> Result[Any]:
    """Wait, inside a task, until the token is completed or times out; the
    run is suspended meanwhile and holds no process (like `.wait()`: it is
    revived and its function replays from the top to here). Returns
    `Result(ok=True, output=data)` — validated as `type` when given — or
    `Result(ok=False, error=WaitTimeout)`. Raises `OutsideTask` outside a
    task, `WaitTokenNotFound` for an unknown token."""
    ctx = require_run("wait.for_token()")
    token_id = _token_id(token)
    outcome = await wait_tokens.wait_outcome(ctx, token_id)
    if "timeout" in outcome:
        value = json.loads(outcome["timeout"])
        message = value.get("message") if isinstance(value, dict) else None
        return Result(
            ok=False,
            error=WaitTimeout(message or f"wait token {token_id} timed out", run_id=ctx.run_id),
        )
    adapter: TypeAdapter[Any] = adapter_for(type)
    try:
        return Result(ok=True, output=adapter.validate_json(outcome["output"]))
    except PydanticValidationError as e:
        return Result(
            ok=False,
            error=ValidationError(
                f"wait token {token_id} was completed with data that does not fit"
                f" {getattr(type, '__name__', type)}: {e}",
                run_id=ctx.run_id,
            ),
        )


__all__ = [
    "WaitToken",
    "WaitTokenInfo",
    "WaitTokenStatus",
    "complete_token",
    "create_token",
    "for_token",
    "list_tokens",
    "retrieve_token",
]
