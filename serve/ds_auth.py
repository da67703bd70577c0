"""Who may do what to which Durable Streams path
(`serve/routes/durable_streams.py`): the caller from its `Authorization`
header, its token's scopes against the path, and the path itself.

The secret key may do anything; a public access token what its scopes
name: `read:streams:<prefix>` / `write:streams:<prefix>` (`<prefix>` a path
or a folder of paths, segment by segment; no id: every stream), or
`read:runs:<id>` for that run's streams (`runs/<id>/<key>`),
`read:sessions:<session id>` for a session's (`…:channels:<name>` for one
side channel's). `RAYFLOW_DURABLE_STREAMS_ANONYMOUS` lets anyone in, only
while the API listens on loopback.
"""

from __future__ import annotations

from rayflow._config import LOOPBACK_HOSTS
from rayflow._tokens import allows
from rayflow.errors import Forbidden
from serve.auth import Principal, authenticate, missing_bearer
from serve.deps import ServeState
from serve.ds_wire import WireError


def caller(st: ServeState, authorization: str | None) -> Principal | None:
    """The caller (from its `Authorization` header); None for an anonymous
    one where that is allowed."""
    settings = st.settings
    if settings.durable_streams_anonymous and settings.http_host in LOOPBACK_HOSTS:
        return None
    header = authorization or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise missing_bearer(header)
    return authenticate(token, st.secret_key)


def require(who: Principal | None, action: str, path: str) -> None:
    if who is None or who.secret or "admin" in who.scopes:
        return
    scopes = list(who.scopes)
    for scope in scopes:
        parts = scope.split(":", 2)
        if parts[:2] != [action, "streams"]:
            continue
        if len(parts) == 2 or _within(path, parts[2]):
            return
    run = run_stream(path)
    if action == "read" and run is not None and allows(scopes, "read", "runs", run[0]):
        return
    if action == "read" and any(
        allows(scopes, "read", "sessions", s) for s in _session_scopes(path)
    ):
        return
    raise Forbidden(f"token does not allow {action}:streams:{path}; its scopes are {scopes}")


def _within(path: str, prefix: str) -> bool:
    """`path` is `prefix` or inside it, segment by segment (`a/b` holds
    `a/b/c`, not `a/bc`)."""
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


def run_stream(path: str) -> tuple[str, str] | None:
    if not path.startswith("runs/"):
        return None
    run_id, _, key = path.removeprefix("runs/").partition("/")
    return (run_id, key) if run_id and key else None


def _session_scopes(path: str) -> list[str]:
    """The `read:sessions:<…>` ids that reach a session stream
    (`sessions/<id>/in`, `sessions/<id>/channels/<name>/out`): the session's
    id, and for a channel `<id>:channels:<name>` and `…:<name>:<io>`."""
    parts = path.split("/")
    if parts[0] != "sessions" or len(parts) < 3:
        return []
    found = [parts[1]]
    if len(parts) == 5 and parts[2] == "channels":
        found += [f"{parts[1]}:channels:{parts[3]}", f"{parts[1]}:channels:{parts[3]}:{parts[4]}"]
    return found


def check_path(path: str) -> None:
    if not path or len(path) > 1024 or any(p in ("", ".", "..") for p in path.split("/")):
        raise WireError(400, f"invalid stream path {path!r}")
