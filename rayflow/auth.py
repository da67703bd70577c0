"""Public access tokens for frontends: short-lived JWTs scoped to one run."""

from __future__ import annotations

from rayflow import _tokens
from rayflow._runtime import connection
from rayflow.errors import InvalidArgument


def create_public_token(
    run_id: str | None = None, *, scopes: list[str] | None = None, ttl_s: int | None = None
) -> str:
    """A public access token signed with this deployment's secret key.

    By default it reads the run's streams and writes its input streams
    (`read:runs:<id>`, `write:inputStreams:<id>`), for `ttl_s` seconds
    (default: the `token_ttl_s` setting, 1 h). Pass `scopes` for anything
    else (e.g. `["read:runs"]`). Hand it to a browser; never the secret key.
    """
    if scopes is None:
        if run_id is None:
            raise InvalidArgument("pass a run_id, or the scopes the token should carry")
        scopes = _tokens.run_scopes(run_id)
    conn = connection.current()
    return _tokens.mint_token(conn.secret_key, scopes, ttl_s or conn.settings.token_ttl_s)


__all__ = ["create_public_token"]
