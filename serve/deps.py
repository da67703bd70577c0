"""What every route may depend on: the app's settings and the caller."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rayflow._config import Settings
from rayflow._tokens import mint_token
from serve.auth import Principal, authenticate, missing_bearer
from serve.errors import BadRequest

#: the largest chunk `…/append` or one NDJSON line of the v1 writer may carry
MAX_APPEND_BYTES = 512 * 1024
#: the largest record index, chunk number or cursor a request may name: past
#: it a number cannot be stored (SQLite and PostgreSQL integers are 64-bit)
#: nor read exactly by a JavaScript client (2**53)
MAX_INDEX = 2**53

#: ASCII digits only (`str.isdigit` also takes `²`, which `int` refuses), at
#: most 16 of them: MAX_INDEX has 16, and `int` of thousands of digits is slow
#: and, past 4,300, an error
_WHOLE = re.compile(r"[0-9]{1,16}")


def whole_number(value: str, name: str, *, low: int = 0, below: int = MAX_INDEX) -> int:
    """`value` as a whole number from `low` up to (not including) `below`;
    any other text is a BadRequest (400) naming parameter `name`."""
    v = value.strip()
    if _WHOLE.fullmatch(v) and low <= int(v) < below:
        return int(v)
    shown = v if len(v) <= 40 else v[:40] + f"… ({len(v)} characters)"
    raise BadRequest(f"{name} must be a whole number from {low} to {below - 1}; got {shown!r}")


@dataclass
class ServeState:
    settings: Settings
    secret_key: str

    def mint(self, scopes: list[str], ttl_s: int | None = None) -> str:
        return mint_token(self.secret_key, scopes, ttl_s or self.settings.token_ttl_s)


# Both dependencies are `async def` although they do not await: FastAPI runs a
# plain `def` dependency in its thread pool, a thread hop (and at times a
# thread start) per request; these only read headers and check an HMAC.
async def state(request: Request) -> ServeState:
    st: ServeState = request.app.state.rayflow
    return st


#: `Authorization: Bearer …`, documented in the OpenAPI document; the 401 is
#: ours (a JSON error body, see serve/errors.py), so it does not raise itself
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="the secret API key (backends) or a public access token (a JWT, for browsers)",
)


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The authenticated caller; raises Unauthorized (401) otherwise."""
    if credentials is None or not credentials.credentials.strip():
        raise missing_bearer(request.headers.get("authorization"))
    st: ServeState = request.app.state.rayflow
    return authenticate(credentials.credentials, st.secret_key)


def bearer_caller(authorization: str | None, secret_key: str) -> Principal:
    """`principal` from the raw `Authorization` header, read as `bearer`
    reads it: for what answers without FastAPI (`serve/realtime_append.py`)."""
    scheme, _, token = (authorization or "").partition(" ")
    if not authorization or scheme.lower() != "bearer" or not token.strip():
        raise missing_bearer(authorization)
    return authenticate(token.strip(), secret_key)


#: the authenticated caller of a route
Caller = Annotated[Principal, Depends(principal)]
#: the app's settings and secret key
AppState = Annotated[ServeState, Depends(state)]
