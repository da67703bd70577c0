"""Wait tokens over HTTP (serve/routes/waitpoints.py), curl-style with httpx
and with Trigger.dev's own SDK from Node (`wait.createToken`,
`completeToken`, `retrieveToken`, `listTokens`): a Python task suspended on
a token is revived by each way of completing it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, wait_finished
from test_http_node_client import node_sdk, run_node  # noqa: F401  (fixture)

import rayflow
from rayflow import streams, task, wait

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)

token_ids = streams.define("token-ids", str)


@task(id="http-token-waiter")
async def http_token_waiter(payload: dict) -> dict:  # type: ignore[type-arg]
    """Create a token (or take one), publish its id, wait for it."""
    token_id = payload.get("token")
    if token_id is None:
        token_id = (await wait.create_token(timeout=payload.get("timeout"))).id
    await token_ids.append(token_id)
    result = await wait.for_token(token_id)
    return {"ok": result.ok, "output": result.output, "error": str(result.error or "")}


def secret(api: HttpApi) -> dict[str, str]:
    """The SDK's connection settings with the secret key."""
    return {"baseURL": api.url, "token": api.secret_key}


async def started_waiter(payload: dict[str, Any]) -> tuple[str, str]:
    """(run id, token id) once the run is suspended on its token."""
    handle = await http_token_waiter.trigger(payload)
    async for token_id in token_ids.read(handle.id, timeout_s=30):  # noqa: B007
        break
    for _ in range(600):
        if (await rayflow.runs.retrieve(handle.id)).status == "WAITING":
            return handle.id, str(token_id)
        await asyncio.sleep(0.05)
    pytest.fail(f"run {handle.id} did not suspend on its token")


async def test_curl_creates_completes_and_retrieves_a_token(http_api: HttpApi) -> None:
    async with http_api.client() as c:
        r = await c.post(
            "/api/v1/waitpoints/tokens",
            headers=http_api.headers(),
            json={"timeout": "1h", "tags": ["curl"], "idempotencyKey": "curl-1"},
        )
        assert r.status_code == 200, r.text
        created = r.json()
        assert created["isCached"] is False and created["id"].startswith("waitpoint_")
        jwt = r.headers["x-trigger-jwt"]
        run_id, _ = await started_waiter({"token": created["id"]})

        again = await c.post(
            "/api/v1/waitpoints/tokens",
            headers=http_api.headers(),
            json={"idempotencyKey": "curl-1"},
        )
        assert again.json()["id"] == created["id"] and again.json()["isCached"] is True

        # the token's own JWT completes it; a JWT for another token may not
        other = (
            await c.post("/api/v1/waitpoints/tokens", headers=http_api.headers(), json={})
        ).headers["x-trigger-jwt"]
        path = f"/api/v1/waitpoints/tokens/{created['id']}/complete"
        refused = await c.post(path, headers=http_api.headers(other), json={"data": 1})
        assert refused.status_code == 403 and refused.json()["code"] == "Forbidden"
        done = await c.post(path, headers=http_api.headers(jwt), json={"data": {"v": 42}})
        assert done.status_code == 200 and done.json() == {"success": True}
        run = await wait_finished(run_id)
        assert run.output == {"ok": True, "output": {"v": 42}, "error": ""}
        # completed again: success, but the first completion stands
        second = await c.post(path, headers=http_api.headers(jwt), json={"data": {"v": 0}})
        assert second.status_code == 200

        got = await c.get(f"/api/v1/waitpoints/tokens/{created['id']}", headers=http_api.headers())
        body = got.json()
        assert body["status"] == "COMPLETED" and body["output"] == '{"v": 42}'
        assert body["outputType"] == "application/json" and body["outputIsError"] is False
        assert body["tags"] == ["curl"] and body["idempotencyKey"] == "curl-1"
        # a public token cannot read or list tokens
        assert (
            await c.get(f"/api/v1/waitpoints/tokens/{created['id']}", headers=http_api.headers(jwt))
        ).status_code == 403


async def test_a_webhook_completes_a_token_through_its_callback_url(http_api: HttpApi) -> None:
    run_id, token_id = await started_waiter({})
    info = await wait.retrieve_token(token_id)
    async with http_api.client() as c:
        r = await c.post("/api/v1/waitpoints/tokens", headers=http_api.headers(), json={})
        url = r.json()["url"]  # over HTTP: on the server's own base URL
        assert url.startswith(http_api.url) and "/callback/" in url
        mine = urlparse(info.url).path
        wrong = mine.rsplit("/", 1)[0] + "/" + "0" * 32
        bad = await c.post(wrong, json={"from": "forger"})
        assert bad.status_code == 404 and bad.json()["ok"] is False
        good = await c.post(mine, json={"from": "webhook"})  # no Authorization header
        assert good.status_code == 200, good.text
    run = await wait_finished(run_id)
    assert run.output == {"ok": True, "output": {"from": "webhook"}, "error": ""}


async def test_bad_token_requests_get_precise_errors(http_api: HttpApi) -> None:
    async with http_api.client() as c:
        h = http_api.headers()
        unknown = await c.post(
            "/api/v1/waitpoints/tokens/waitpoint_nope/complete", headers=h, json={}
        )
        assert unknown.status_code == 404 and unknown.json()["code"] == "WaitTokenNotFound"
        r = await c.get("/api/v1/waitpoints/tokens/waitpoint_nope", headers=h)
        assert r.status_code == 404
        r = await c.post("/api/v1/waitpoints/tokens", headers=h, json={"timeout": "soon"})
        assert r.status_code == 400 and "timeout" in r.json()["error"]
        r = await c.post("/api/v1/waitpoints/tokens", headers=h, json={"tags": ["t"] * 11})
        assert r.status_code == 400
        r = await c.post("/api/v1/waitpoints/tokens", headers={}, json={})
        assert r.status_code == 401
        token = (await c.post("/api/v1/waitpoints/tokens", headers=h, json={})).json()["id"]
        big = {"data": "x" * (1024 * 1024 + 1)}
        r = await c.post(f"/api/v1/waitpoints/tokens/{token}/complete", headers=h, json=big)
        assert r.status_code == 413
        assert (await wait.retrieve_token(token)).status == "WAITING"  # nothing stored
        r = await c.get("/api/v1/waitpoints/tokens?filter[status]=DONE", headers=h)
        assert r.status_code == 400
        r = await c.get("/api/v1/waitpoints/tokens?page[after]=junk", headers=h)
        assert r.status_code == 400


async def test_sdk_completes_a_token_a_python_task_waits_on(
    http_api: HttpApi,
    node_sdk: Path,  # noqa: F811
) -> None:
    run_id, token_id = await started_waiter({})
    token = await wait.create_token()  # only for its public access token's shape
    assert token.public_access_token.count(".") == 2
    # the SDK's wait.completeToken with the secret key
    await run_node(
        node_sdk,
        {
            "op": "completeToken",
            "baseURL": http_api.url,
            "token": http_api.secret_key,
            "tokenId": token_id,
            "data": {"approved": True, "via": "sdk"},
        },
    )
    run = await wait_finished(run_id)
    assert run.output == {"ok": True, "output": {"approved": True, "via": "sdk"}, "error": ""}
    lines = await run_node(
        node_sdk,
        {
            "op": "retrieveToken",
            "baseURL": http_api.url,
            "token": http_api.secret_key,
            "tokenId": token_id,
        },
    )
    assert lines[0]["status"] == "COMPLETED"
    assert lines[0]["output"] == {"approved": True, "via": "sdk"} and lines[0]["error"] is None


async def test_sdk_creates_tokens_completes_with_their_own_jwt_and_lists_them(
    http_api: HttpApi,
    node_sdk: Path,  # noqa: F811
) -> None:
    base = {"baseURL": http_api.url, "token": http_api.secret_key}
    made = await run_node(
        node_sdk,
        {
            **base,
            "op": "createToken",
            "timeout": "1h",
            "tags": ["sdk:list"],
            "idempotencyKey": "sdk-1",
        },
    )
    token = made[0]
    cached = await run_node(node_sdk, {**base, "op": "createToken", "idempotencyKey": "sdk-1"})
    assert cached[0]["id"] == token["id"] and cached[0]["isCached"] is True
    run_id, _ = await started_waiter({"token": token["id"]})
    # the public access token the SDK got from x-trigger-jwt completes it
    await run_node(
        node_sdk,
        {
            "op": "completeToken",
            "baseURL": http_api.url,
            "token": token["publicAccessToken"],
            "tokenId": token["id"],
            "data": "yes",
        },
    )
    assert (await wait_finished(run_id)).output == {"ok": True, "output": "yes", "error": ""}
    second = (await run_node(node_sdk, {**base, "op": "createToken", "tags": ["sdk:list"]}))[0]
    third = (await run_node(node_sdk, {**base, "op": "createToken", "tags": ["sdk:list"]}))[0]
    # every page (2 per page) of the SDK's auto-paginating list
    listed = await run_node(
        node_sdk, {**base, "op": "listTokens", "tags": ["sdk:list"], "limit": 2}
    )
    ids = [line["id"] for line in listed if line["type"] == "token"]
    assert ids == [third["id"], second["id"], token["id"]]
    waiting = await run_node(
        node_sdk, {**base, "op": "listTokens", "tags": ["sdk:list"], "status": ["WAITING"]}
    )
    assert [line["id"] for line in waiting if line["type"] == "token"] == [
        third["id"],
        second["id"],
    ]


async def test_sdk_sees_a_timed_out_token_as_a_timeout_error(
    http_api: HttpApi,
    node_sdk: Path,  # noqa: F811
) -> None:
    run_id, token_id = await started_waiter({"timeout": "1s"})
    run = await wait_finished(run_id)
    assert run.output["ok"] is False and "timed out" in run.output["error"]
    lines = await run_node(
        node_sdk,
        {
            "op": "retrieveToken",
            "baseURL": http_api.url,
            "token": http_api.secret_key,
            "tokenId": token_id,
        },
    )
    assert lines[0]["status"] == "TIMED_OUT"
    assert lines[0]["error"]["name"] == "WaitpointTimeoutError" and lines[0]["output"] is None


async def test_the_python_http_client_creates_completes_and_lists_tokens(http_api: HttpApi) -> None:
    from rayflow.client import Client

    client = Client(http_api.url, http_api.secret_key)
    token = await client.wait.create_token(timeout="1h", tags=["client:py"], idempotency_key="py-1")
    assert (await client.wait.create_token(idempotency_key="py-1")).is_cached
    run_id, _ = await started_waiter({"token": token.id})
    # completed with the token's own public access token, as a browser would
    await Client(http_api.url, token.public_access_token).wait.complete_token(token, {"n": 1})
    assert (await wait_finished(run_id)).output == {"ok": True, "output": {"n": 1}, "error": ""}
    info = await client.wait.retrieve_token(token.id)
    assert info.status == "COMPLETED" and info.output == {"n": 1} and info.tags == ["client:py"]
    listed = await client.wait.list_tokens(tags=["client:py"], status=["COMPLETED"])
    assert [t.id for t in listed] == [token.id]
    with pytest.raises(rayflow.errors.WaitTokenNotFound):
        await client.wait.complete_token("waitpoint_nope", 1)
