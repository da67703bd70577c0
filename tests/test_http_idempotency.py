"""Idempotency keys are scoped to their caller: a key never hands one caller
another caller's run (or a token for it), and a reused key with another
payload is a 409, not a silent cache hit."""

from __future__ import annotations

import uuid

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, wait_finished

import rayflow
from rayflow import task
from rayflow._tokens import mint_token

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)


@task(id="idem-child")
async def idem_child(payload: dict) -> dict:  # type: ignore[type-arg]
    return payload


@task(id="idem-parent")
async def idem_parent(payload: dict) -> dict:  # type: ignore[type-arg]
    handle = await idem_child.trigger({"from": "parent"})
    run = await rayflow.runs.wait(handle.id)
    return {"child": handle.id, "output": run.output}


async def _post(api: HttpApi, path: str, token: str, body: dict) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
    async with api.client() as c:
        r = await c.post(path, headers=api.headers(token), json=body)
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.status_code, r.json(), dict(r.headers)


async def test_a_trigger_token_with_someone_elses_key_gets_its_own_run(
    http_tasks: HttpApi,
) -> None:
    key = uuid.uuid4().hex
    body = {"payload": {"n": 1}, "options": {"idempotencyKey": key}}
    path = "/api/v1/tasks/http-emit/trigger"
    status, theirs, _ = await _post(http_tasks, path, http_tasks.secret_key, body)
    assert status == 200 and theirs["isCached"] is False

    trigger_only = mint_token(http_tasks.secret_key, ["trigger:tasks:http-emit"])
    status, mine, headers = await _post(http_tasks, path, trigger_only, body)
    assert status == 200, mine
    assert mine["id"] != theirs["id"] and mine["isCached"] is False
    # the token it got reads its own run, not theirs
    async with http_tasks.client() as c:
        jwt_token = headers["x-trigger-jwt"]
        own = await c.get(f"/api/v3/runs/{mine['id']}", headers=http_tasks.headers(jwt_token))
        other = await c.get(f"/api/v3/runs/{theirs['id']}", headers=http_tasks.headers(jwt_token))
    assert own.status_code == 200 and other.status_code == 403

    # the same token retrying the same trigger is a cache hit on its own run
    status, again, _ = await _post(http_tasks, path, trigger_only, body)
    assert status == 200 and again == {**mine, "isCached": True}


async def test_two_tokens_minted_in_one_second_are_two_callers(http_tasks: HttpApi) -> None:
    scopes = ["trigger:tasks:http-emit"]
    first, second = (mint_token(http_tasks.secret_key, scopes) for _ in range(2))
    assert first != second  # same scopes, same second: a random jti tells them apart
    key = uuid.uuid4().hex
    body = {"payload": {"n": 1}, "options": {"idempotencyKey": key}}
    path = "/api/v1/tasks/http-emit/trigger"
    status, mine, _ = await _post(http_tasks, path, first, body)
    assert status == 200, mine
    status, theirs, _ = await _post(http_tasks, path, second, body)
    assert status == 200 and theirs["id"] != mine["id"] and theirs["isCached"] is False


async def test_a_key_reused_with_another_payload_is_a_conflict(http_tasks: HttpApi) -> None:
    key = uuid.uuid4().hex
    path = "/api/v1/tasks/http-emit/trigger"
    first = {"payload": {"n": 1}, "options": {"idempotencyKey": key}}
    other = {"payload": {"n": 2}, "options": {"idempotencyKey": key}}
    assert (await _post(http_tasks, path, http_tasks.secret_key, first))[0] == 200
    status, body, _ = await _post(http_tasks, path, http_tasks.secret_key, other)
    assert status == 409, body
    assert "different payload" in body["error"] and key in body["error"]
    assert "x-trigger-jwt" not in _

    batch = {"items": [{"payload": {"n": 3}, "options": {"idempotencyKey": key}}]}
    status, body, _ = await _post(
        http_tasks, "/api/v1/tasks/http-emit/batch", http_tasks.secret_key, batch
    )
    assert status == 409, body


async def test_a_child_runs_key_cannot_be_taken_over_http(http_tasks: HttpApi) -> None:
    await idem_child.register()
    parent = await idem_parent.trigger({})
    done = await wait_finished(parent.id)
    child_id = done.output["child"]
    child = await rayflow.runs.retrieve(child_id)
    assert child.parent_id == parent.id

    stored_key = await _stored_key(http_tasks, child_id)
    assert stored_key and parent.id in stored_key
    # a caller who learns (or predicts) the child's key and triggers the child
    # task with it gets a run of its own, never the child or a token for it
    trigger_only = mint_token(http_tasks.secret_key, ["trigger:tasks:idem-child"])
    body = {"payload": {"from": "attacker"}, "options": {"idempotencyKey": stored_key}}
    status, got, _ = await _post(http_tasks, "/api/v1/tasks/idem-child/trigger", trigger_only, body)
    assert status == 200, got
    assert got["id"] != child_id and got["isCached"] is False


async def _stored_key(api: HttpApi, run_id: str) -> str:
    async with api.client() as c:
        r = await c.get(f"/api/v3/runs/{run_id}", headers=api.headers())
    key: str = r.json()["idempotencyKey"]
    return key
