"""Minting public access tokens.

The two Trigger.dev endpoints the SDK's `auth.createPublicToken()` uses
(`jwt/claims`, then it signs locally with the secret key; or
`public-tokens` to have the server sign), and rayflow's own endpoint that
mints a token for one run.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from rayflow._runtime.serving import parse_duration
from rayflow._tokens import ENVIRONMENT_ID, run_scopes
from serve import core
from serve.deps import AppState, Caller
from serve.errors import BadRequest
from serve.wire import WireModel, WireRequest

router = APIRouter(tags=["tokens"])

MAX_TTL_S = 30 * 86400


class PublicTokenBody(WireRequest):
    scopes: list[str] = Field(min_length=1)
    #: a duration ("15m", "1h") or an absolute time in Unix seconds
    expiration_time: str | int | None = None


class TokenResponse(BaseModel):
    token: str


class RunTokenBody(WireRequest):
    #: which of the run's scopes to grant; default both (read it, write its inputs)
    scopes: list[str] | None = None
    ttl_seconds: int | None = Field(default=None, ge=1, le=MAX_TTL_S)


class RunTokenResponse(WireModel):
    token: str
    scopes: list[str]
    expires_at: int  # Unix seconds


def ttl_from_expiration(value: str | int | None, default_s: int) -> int:
    if value is None:
        return default_s
    if isinstance(value, int):
        ttl = value - int(time.time())
    else:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise BadRequest(f"expirationTime: {e}") from e
        ttl = int(seconds or 0)
    if not 1 <= ttl <= MAX_TTL_S:
        raise BadRequest(
            f"expirationTime: a token's lifetime must be between 1 second and {MAX_TTL_S} seconds"
        )
    return ttl


@router.post("/api/v1/auth/jwt/claims", response_model=dict[str, Any])
async def jwt_claims(who: Caller) -> dict[str, Any]:
    """The claims the SDK puts into a token it signs with the secret key."""
    who.require_secret("minting tokens")
    return {"sub": ENVIRONMENT_ID, "pub": True}


@router.post("/api/v1/auth/public-tokens", response_model=TokenResponse)
async def public_token(body: PublicTokenBody, who: Caller, st: AppState) -> TokenResponse:
    """A token with the given scopes, signed by the server."""
    who.require_secret("minting tokens")
    ttl = ttl_from_expiration(body.expiration_time, st.settings.token_ttl_s)
    return TokenResponse(token=st.mint(body.scopes, ttl))


@router.post("/rayflow/v1/runs/{run_id}/tokens", response_model=RunTokenResponse)
async def run_token(
    run_id: str,
    who: Caller,
    st: AppState,
    body: RunTokenBody | None = None,
) -> RunTokenResponse:
    """A public access token for one run (by default: read it and its
    streams, write its input streams) — to hand to a browser."""
    who.require_secret("minting tokens")
    await core.get_run(run_id)
    allowed = run_scopes(run_id)
    scopes = allowed if body is None or body.scopes is None else body.scopes
    foreign = [s for s in scopes if s not in allowed]
    if foreign or not scopes:
        raise BadRequest(f"a run token may only carry {allowed}; got {scopes}", run_id=run_id)
    ttl = (body.ttl_seconds if body else None) or st.settings.token_ttl_s
    return RunTokenResponse(
        token=st.mint(scopes, ttl), scopes=scopes, expires_at=int(time.time()) + ttl
    )
