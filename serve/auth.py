"""Who is calling: the secret API key (backends) or a public access token.

`Authorization: Bearer <secret key>` allows everything. `Authorization:
Bearer <public access token>` (an HS256 JWT signed with the secret key, see
`rayflow._tokens`) allows only what its scopes say: `read:runs:<id>` to read
a run and its streams, `write:inputStreams:<id>` to send to its input
streams, `read:runs` for every run, `admin` for everything.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from rayflow._tokens import decode_token, require
from rayflow.errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    #: True for the secret API key, False for a public access token.
    secret: bool
    scopes: tuple[str, ...]
    #: who holds a public token: a digest of the token itself ("" for the secret key)
    caller: str = ""

    def idempotency_key(self, key: str | None) -> str | None:
        """`key` as stored: the secret key's holders (backends, like Python's
        `rayflow.trigger`) share one namespace; a public token's key is
        scoped to that token, so a trigger-only token can neither find
        another caller's run (and get a token for it) nor take a key a
        parent run will use for its child."""
        if key is None or self.secret:
            return key
        return f"token:{self.caller}:{key}"

    def require(self, action: str, resource: str, resource_id: str | None = None) -> None:
        """Raise Forbidden unless this caller may do `action` on `resource`."""
        if self.secret:
            return
        require(list(self.scopes), action, resource, resource_id)

    def require_secret(self, what: str) -> None:
        """Raise Forbidden unless this caller holds the secret key (or `admin`)."""
        if self.secret or "admin" in self.scopes:
            return
        raise Forbidden(
            f"{what} needs the secret API key; a public access token cannot do it "
            f"(its scopes are {list(self.scopes)})"
        )


def missing_bearer(authorization: str | None) -> Unauthorized:
    """The 401 for a request without a usable `Authorization: Bearer` header."""
    if not authorization or not authorization.strip():
        return Unauthorized(
            "missing Authorization header; send 'Authorization: Bearer <secret key "
            "or public access token>'"
        )
    return Unauthorized("the Authorization header must be 'Bearer <token>'")


def authenticate(token: str, secret_key: str) -> Principal:
    """Check a bearer token against the secret key.

    Raises Unauthorized for a token that is expired, wrongly signed, not
    public (`pub: true`) or not a JWT.
    """
    token = token.strip()
    if hmac.compare_digest(token.encode(), secret_key.encode()):
        return Principal(secret=True, scopes=("admin",))
    if token.count(".") != 2:
        raise Unauthorized("the bearer token is neither the secret key nor a public access token")
    claims = decode_token(secret_key, token)
    scopes = tuple(s for s in claims["scopes"] if isinstance(s, str))
    caller = hashlib.sha256(token.encode()).hexdigest()[:32]
    return Principal(secret=False, scopes=scopes, caller=caller)
