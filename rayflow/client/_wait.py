"""`client.wait`: wait tokens over HTTP, like `rayflow.wait` (without
`for_token`, which only a task can do)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rayflow._response import Response
from rayflow._status import WaitTokenStatus
from rayflow._wait_model import WaitToken, WaitTokenInfo
from rayflow.client._transport import Transport, jsonable
from rayflow.errors import RayflowError, WaitTimeout


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _info(body: dict[str, Any]) -> WaitTokenInfo:
    output: Any = None
    error: RayflowError | None = None
    if body.get("output") is not None:
        value = json.loads(body["output"])
        if body.get("outputIsError"):
            message = value.get("message") if isinstance(value, dict) else None
            error = WaitTimeout(message or f"wait token {body['id']} timed out")
        else:
            output = value
    created = _time(body["createdAt"])
    assert created is not None
    return WaitTokenInfo(
        id=body["id"],
        url=body["url"],
        status=WaitTokenStatus(body["status"]),
        tags=list(body.get("tags", [])),
        created_at=created,
        completed_at=_time(body.get("completedAt")),
        timeout_at=_time(body.get("timeoutAt")),
        idempotency_key=body.get("idempotencyKey"),
        idempotency_key_expires_at=_time(body.get("idempotencyKeyExpiresAt")),
        output=output,
        error=error,
    )


class Wait:
    """`client.wait`: create, complete, retrieve and list wait tokens."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create_token(
        self,
        *,
        timeout: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | None = None,
        tags: list[str] | None = None,
    ) -> Response[WaitToken]:
        """A new wait token (secret key only); `timeout` like "1h". With an
        `idempotency_key` used before, the first token (`is_cached=True`)."""
        body = {
            "timeout": timeout,
            "idempotencyKey": idempotency_key,
            "idempotencyKeyTTL": idempotency_key_ttl,
            "tags": tags,
        }

        async def go() -> WaitToken:
            sent = {k: v for k, v in body.items() if v is not None}
            r = await self._t.request("POST", "/api/v1/waitpoints/tokens", json=sent)
            made = r.json()
            return WaitToken(
                id=made["id"],
                url=made["url"],
                public_access_token=r.headers.get("x-trigger-jwt", ""),
                is_cached=bool(made["isCached"]),
            )

        return Response(go)

    def complete_token(
        self, token: WaitToken | WaitTokenInfo | str, data: Any = None
    ) -> Response[None]:
        """Complete the token with `data`; the first completion stands.
        Works with the secret key or the token's own public access token."""
        token_id = token if isinstance(token, str) else token.id
        body = {"data": jsonable(data)}

        async def go() -> None:
            path = f"/api/v1/waitpoints/tokens/{token_id}/complete"
            await self._t.request("POST", path, json=body)

        return Response(go)

    def retrieve_token(self, token: WaitToken | WaitTokenInfo | str) -> Response[WaitTokenInfo]:
        """The token, with its output (or timeout error) once settled."""
        token_id = token if isinstance(token, str) else token.id

        async def go() -> WaitTokenInfo:
            r = await self._t.request("GET", f"/api/v1/waitpoints/tokens/{token_id}")
            return _info(r.json())

        return Response(go)

    def list_tokens(
        self, *, status: list[str] | None = None, tags: list[str] | None = None, limit: int = 100
    ) -> Response[list[WaitTokenInfo]]:
        """Tokens newest first (one page of up to `limit`, at most 100)."""
        params: dict[str, Any] = {"page[size]": min(limit, 100)}
        if status:
            params["filter[status]"] = ",".join(status)
        if tags:
            params["filter[tags]"] = ",".join(tags)

        async def go() -> list[WaitTokenInfo]:
            r = await self._t.request("GET", "/api/v1/waitpoints/tokens", params=params)
            return [_info(item) for item in r.json()["data"]]

        return Response(go)
