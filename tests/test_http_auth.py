"""The token matrix: every credential against every protected endpoint.

A secret key allows everything; a public access token only what its scopes
say; a token that is expired, wrongly signed, malformed, not public or for
another audience is 401; a valid token without the scope is 403. Every
refusal is JSON and carries the CORS headers.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, trigger

import rayflow
from rayflow._tokens import mint_token, run_scopes, token_claims

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)

ENDPOINTS = [
    "read_run",
    "read_stream",
    "send_input",
    "trigger",
    "cancel",
    "list_runs",
    "append",
    "mint_run_token",
]
ALL_OK = dict.fromkeys(ENDPOINTS, 200)
ALL_FORBIDDEN = dict.fromkeys(ENDPOINTS, 403)
ALL_UNAUTHORIZED = dict.fromkeys(ENDPOINTS, 401)

#: credential name -> expected status per endpoint (run A is the target)
MATRIX: dict[str, dict[str, int]] = {
    "secret key": ALL_OK,
    "admin token": ALL_OK,
    "run A token": {
        **ALL_FORBIDDEN,
        "read_run": 200,
        "read_stream": 200,
        "send_input": 200,
    },
    "read:runs:A token": {**ALL_FORBIDDEN, "read_run": 200, "read_stream": 200},
    "write:inputStreams:A token": {**ALL_FORBIDDEN, "send_input": 200},
    "read:runs token": {
        **ALL_FORBIDDEN,
        "read_run": 200,
        "read_stream": 200,
        "list_runs": 200,
    },
    "trigger:tasks token": {**ALL_FORBIDDEN, "trigger": 200},
    "run B token": ALL_FORBIDDEN,
    "expired token": ALL_UNAUTHORIZED,
    "wrongly signed token": ALL_UNAUTHORIZED,
    "malformed token": ALL_UNAUTHORIZED,
    "garbage JWT": ALL_UNAUTHORIZED,
    "token without pub": ALL_UNAUTHORIZED,
    "token for another audience": ALL_UNAUTHORIZED,
    "no Authorization header": ALL_UNAUTHORIZED,
    "Basic auth": ALL_UNAUTHORIZED,
}


def _signed(secret: str, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def authorization(name: str, secret: str, run_a: str, run_b: str) -> str | None:
    """The Authorization header value for credential `name`."""
    tokens = {
        "secret key": secret,
        "admin token": mint_token(secret, ["admin"]),
        "run A token": mint_token(secret, run_scopes(run_a)),
        "read:runs:A token": mint_token(secret, [f"read:runs:{run_a}"]),
        "write:inputStreams:A token": mint_token(secret, [f"write:inputStreams:{run_a}"]),
        "read:runs token": mint_token(secret, ["read:runs"]),
        "trigger:tasks token": mint_token(secret, ["trigger:tasks:http-emit"]),
        "run B token": mint_token(secret, run_scopes(run_b)),
        "expired token": _signed(
            secret, {**token_claims(run_scopes(run_a), 60), "exp": int(time.time()) - 10}
        ),
        "wrongly signed token": mint_token("not-the-secret-key-" * 3, run_scopes(run_a)),
        "malformed token": "definitely-not-a-token",
        "garbage JWT": "aaa.bbb.ccc",
        "token without pub": _signed(
            secret, {k: v for k, v in token_claims(run_scopes(run_a), 600).items() if k != "pub"}
        ),
        "token for another audience": _signed(
            secret, {**token_claims(run_scopes(run_a), 600), "aud": "https://example.com"}
        ),
    }
    if name == "no Authorization header":
        return None
    if name == "Basic auth":
        return "Basic dXNlcjpwYXNz"
    return f"Bearer {tokens[name]}"


@pytest.fixture(scope="module")
async def runs_ab(http_tasks: HttpApi) -> AsyncIterator[tuple[str, str]]:
    """Run A (held open, the target of every request) and run B (foreign)."""
    run_a, _ = await trigger(http_tasks, "http-hold", {"hold_s": 300})
    run_b, _ = await trigger(http_tasks, "http-hold", {"hold_s": 300})
    await rayflow.streams.append("default", "hello", target=run_a)
    yield run_a, run_b
    for run_id in (run_a, run_b):
        await rayflow.runs.cancel(run_id)


async def call_endpoint(
    api: HttpApi, endpoint: str, auth: str | None, run_a: str
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Origin": "https://app.example"}
    if auth is not None:
        headers["Authorization"] = auth
    async with api.client() as c:
        if endpoint == "read_stream":
            headers.update({"Accept": "text/event-stream", "Timeout-Seconds": "1"})
            async with c.stream(
                "GET", f"/realtime/v1/streams/{run_a}/default", headers=headers
            ) as r:
                body = b"" if r.status_code == 200 else await r.aread()
                return r.status_code, dict(r.headers), body
        if endpoint == "cancel":
            # its own run, so that an allowed cancel does not end run A
            own, _ = await trigger(api, "http-hold", {"hold_s": 300})
            r = await c.post(f"/api/v2/runs/{own}/cancel", headers=headers)
            if r.status_code != 200:
                await rayflow.runs.cancel(own)
            return r.status_code, dict(r.headers), r.content
        requests: dict[str, tuple[str, str, dict[str, Any]]] = {
            "read_run": ("GET", f"/api/v3/runs/{run_a}", {}),
            "send_input": (
                "POST",
                f"/realtime/v1/streams/{run_a}/input/notes",
                {"json": {"data": {"hello": "world"}}},
            ),
            "trigger": (
                "POST",
                "/api/v1/tasks/http-emit/trigger",
                {"json": {"payload": {"n": 0}}},
            ),
            "list_runs": ("GET", "/api/v1/runs", {}),
            "append": (
                "POST",
                f"/realtime/v1/streams/{run_a}/self/matrix/append",
                {"content": b"a chunk"},
            ),
            "mint_run_token": ("POST", f"/rayflow/v1/runs/{run_a}/tokens", {}),
        }
        method, path, kwargs = requests[endpoint]
        r = await c.request(method, path, headers=headers, **kwargs)
        return r.status_code, dict(r.headers), r.content


@pytest.mark.parametrize("credential", list(MATRIX))
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_token_matrix(
    http_tasks: HttpApi, runs_ab: tuple[str, str], credential: str, endpoint: str
) -> None:
    run_a, run_b = runs_ab
    auth = authorization(credential, http_tasks.secret_key, run_a, run_b)
    status, headers, body = await call_endpoint(http_tasks, endpoint, auth, run_a)
    expected = MATRIX[credential][endpoint]
    assert status == expected, f"{credential} on {endpoint}: {status} {body[:300]!r}"
    assert headers.get("access-control-allow-origin") == "https://app.example"
    if status != 200:
        assert headers["content-type"] == "application/json"
        assert b'"ok":false' in body.replace(b" ", b"")


async def test_trigger_returns_a_token_for_exactly_its_own_run(http_tasks: HttpApi) -> None:
    async with http_tasks.client() as c:
        r = await c.post(
            "/api/v1/tasks/http-emit/trigger",
            headers=http_tasks.headers(),
            json={"payload": {"n": 1}},
        )
    assert r.status_code == 200
    run_id = r.json()["id"]
    claims = jwt.decode(
        r.headers["x-trigger-jwt"],
        http_tasks.secret_key,
        algorithms=["HS256"],
        audience="https://api.trigger.dev",
        issuer="https://id.trigger.dev",
    )
    assert claims["pub"] is True
    assert sorted(claims["scopes"]) == sorted(run_scopes(run_id))
    assert claims["exp"] > time.time() + 3000
    assert r.json()["isCached"] is False
    assert json.loads(r.headers["x-trigger-jwt-claims"])["scopes"] == run_scopes(run_id)


async def test_minted_run_token_reads_the_run_and_nothing_else(
    http_tasks: HttpApi, runs_ab: tuple[str, str]
) -> None:
    run_a, run_b = runs_ab
    async with http_tasks.client() as c:
        r = await c.post(
            f"/rayflow/v1/runs/{run_a}/tokens",
            headers=http_tasks.headers(),
            json={"scopes": [f"read:runs:{run_a}"], "ttlSeconds": 60},
        )
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        assert (await c.get(f"/api/v3/runs/{run_a}", headers=http_tasks.headers(token))).is_success
        other = await c.get(f"/api/v3/runs/{run_b}", headers=http_tasks.headers(token))
        assert other.status_code == 403
        bad = await c.post(
            f"/rayflow/v1/runs/{run_a}/tokens",
            headers=http_tasks.headers(),
            json={"scopes": [f"read:runs:{run_b}"]},
        )
        assert bad.status_code == 400


async def test_sdk_style_public_token_endpoints(http_tasks: HttpApi) -> None:
    async with http_tasks.client() as c:
        claims = await c.post("/api/v1/auth/jwt/claims", headers=http_tasks.headers())
        assert claims.json() == {"sub": "rayflow", "pub": True}
        r = await c.post(
            "/api/v1/auth/public-tokens",
            headers=http_tasks.headers(),
            json={"scopes": ["read:runs"], "expirationTime": "15m"},
        )
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        listed = await c.get("/api/v1/runs", headers=http_tasks.headers(token))
        assert listed.status_code == 200 and isinstance(listed.json()["data"], list)


@rayflow.task(id="auth-child")
async def auth_child(payload: dict) -> dict:  # type: ignore[type-arg]
    rayflow.metadata.set("secret_of_the_child", "c")
    return {"child_output": "c"}


@rayflow.task(id="auth-parent")
async def auth_parent(payload: dict) -> dict:  # type: ignore[type-arg]
    rayflow.metadata.set("secret_of_the_parent", "p")
    handle = await auth_child.trigger({"child_payload": "c"})
    await rayflow.runs.wait(handle.id)
    return {"child": handle.id, "parent_output": "p"}


async def test_a_run_token_sees_its_relatives_summaries_only(http_tasks: HttpApi) -> None:
    """As Trigger.dev (`relatedRuns` in `GET /api/v3/runs/{id}`), a run's
    token sees the summaries of its root, parent and children — id, task,
    status, tags, times — never their payload, output, metadata or error,
    and it cannot read those runs themselves (issue 20, item 15;
    docs/security.md)."""
    parent = await auth_parent.trigger({"parent_payload": "p"})
    done = await rayflow.runs.wait(parent.id)
    child_id = done.output["child"]
    child_token = mint_token(http_tasks.secret_key, run_scopes(child_id))
    async with http_tasks.client() as c:
        h = http_tasks.headers(child_token)
        own = await c.get(f"/api/v3/runs/{child_id}", headers=h)
        theirs = await c.get(f"/api/v3/runs/{parent.id}", headers=h)
        theirs_events = await c.get(f"/rayflow/v1/runs/{parent.id}/events", headers=h)
        events = await c.get(f"/rayflow/v1/runs/{child_id}/events", headers=h)
    assert own.status_code == 200, own.text
    related = own.json()["relatedRuns"]
    assert related["parent"]["id"] == parent.id and related["root"]["id"] == parent.id
    summary_fields = set(related["parent"])
    assert not summary_fields & {"payload", "output", "metadata", "error"}, summary_fields
    text = own.text + events.text
    assert "secret_of_the_parent" not in text and "parent_payload" not in text
    assert "parent_output" not in text
    assert theirs.status_code == 403 and theirs_events.status_code == 403
