"""What every route may depend on: the app's settings and the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from rayflow._config import Settings
from rayflow._tokens import mint_token
from serve.auth import Principal, authenticate

#: the largest chunk `…/append` or one NDJSON line of the v1 writer may carry
MAX_APPEND_BYTES = 512 * 1024


@dataclass
class ServeState:
    settings: Settings
    secret_key: str

    def mint(self, scopes: list[str], ttl_s: int | None = None) -> str:
        return mint_token(self.secret_key, scopes, ttl_s or self.settings.token_ttl_s)


def state(request: Request) -> ServeState:
    st: ServeState = request.app.state.rayflow
    return st


def principal(request: Request) -> Principal:
    """The authenticated caller; raises Unauthorized (401) otherwise."""
    return authenticate(request.headers.get("authorization"), state(request).secret_key)


#: the authenticated caller of a route
Caller = Annotated[Principal, Depends(principal)]
#: the app's settings and secret key
AppState = Annotated[ServeState, Depends(state)]
