"""Run subscriptions (`/realtime/v1/runs…`, `/realtime/v1/batches/…`) in the
ElectricSQL shape protocol, driven by hand (httpx) and by Trigger.dev's own
`runs.subscribeTo*` (the published SDK in Node)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import RUN_SHAPE_LIVE_S, HttpApi, trigger, wait_finished
from conftest import eventually_async
from test_http_node_client import node_sdk  # noqa: F401  (fixture)

import rayflow
from rayflow import streams, task

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)

go = streams.input("go", dict)
sub_progress = streams.define("sub-progress", dict)


@task(id="sub-lifecycle")
async def sub_lifecycle(payload: dict) -> dict:  # type: ignore[type-arg]
    """Streams, suspends until "go" arrives, then holds EXECUTING until a
    second "go" (so a subscriber can see that state), then finishes."""
    await sub_progress.append({"percent": 10})
    decision = await go.wait(timeout="120s")
    await go.once(timeout_s=120)
    await sub_progress.append({"percent": 100})
    return {"go": decision.output}


@task(id="sub-hold")
async def sub_hold(payload: dict) -> str:  # type: ignore[type-arg]
    await asyncio.sleep(float(payload.get("hold_s", 60)))
    return "held"


def shape_messages(response: httpx.Response) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    body = response.json()
    assert body[-1] == {"headers": {"control": "up-to-date"}}, body
    return body[:-1], body[-1]


async def test_first_request_is_the_whole_shape_with_the_electric_headers(
    http_tasks: HttpApi,
) -> None:
    run_id, token = await trigger(http_tasks, "http-emit", {"n": 3, "key": "sub-a"})
    await wait_finished(run_id)
    async with http_tasks.client() as c:
        r = await c.get(
            f"/realtime/v1/runs/{run_id}",
            params={"log": "full", "offset": "-1"},
            headers=http_tasks.headers(token),
        )
    assert r.status_code == 200, r.text
    for header in ("electric-handle", "electric-offset", "electric-schema", "electric-up-to-date"):
        assert header in r.headers
    json.loads(r.headers["electric-schema"])
    messages, _ = shape_messages(r)
    assert len(messages) == 1
    row = messages[0]["value"]
    assert messages[0]["headers"] == {"operation": "insert"}
    assert row["id"] == row["friendlyId"] == run_id
    assert row["status"] == "COMPLETED_SUCCESSFULLY"
    assert row["taskIdentifier"] == "http-emit"
    assert row["realtimeStreams"] == ["sub-a"]
    assert json.loads(row["output"]) == {"emitted": 3} and row["outputType"] == "application/json"
    # Postgres `timestamp` text: no zone (the client appends "Z")
    assert row["createdAt"].count(":") == 2 and not row["createdAt"].endswith("Z")
    assert row["completedAt"] is not None


async def test_unknown_run_is_404_and_another_runs_token_is_403(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-emit", {"n": 1})
    other_id, _ = await trigger(http_tasks, "http-emit", {"n": 1})
    async with http_tasks.client() as c:
        missing = await c.get("/realtime/v1/runs/run_nope", headers=http_tasks.headers())
        forbidden = await c.get(f"/realtime/v1/runs/{other_id}", headers=http_tasks.headers(token))
        no_tags = await c.get("/realtime/v1/runs", headers=http_tasks.headers())
    assert missing.status_code == 404 and missing.json()["code"] == "RunNotFound"
    assert forbidden.status_code == 403
    assert no_tags.status_code == 400


async def test_a_live_request_is_answered_by_a_push_when_the_run_changes(
    http_tasks: HttpApi,
) -> None:
    run_id, token = await trigger(http_tasks, "sub-hold", {"hold_s": 60})
    headers = http_tasks.headers(token)
    async with http_tasks.client() as c:

        async def executing() -> bool:
            r = await c.get(f"/realtime/v1/runs/{run_id}", headers=headers)
            return bool(r.json()[0]["value"]["status"] == "EXECUTING")

        await eventually_async(executing, what="the run to execute")
        first = await c.get(f"/realtime/v1/runs/{run_id}", headers=headers)
        params = {
            "offset": first.headers["electric-offset"],
            "handle": first.headers["electric-handle"],
            "live": "true",
            "cursor": "",
        }
        poll = asyncio.create_task(
            c.get(f"/realtime/v1/runs/{run_id}", params=params, headers=headers)
        )
        await asyncio.sleep(0)  # the poll is on its way; nothing has changed yet
        assert not poll.done()
        canceled_at = time.time()
        await rayflow.runs.cancel(run_id)
        live = await poll
        arrived = time.time()
    assert live.status_code == 200
    assert "electric-cursor" in live.headers and live.headers["electric-offset"] != params["offset"]
    messages, _ = shape_messages(live)
    assert [m["value"]["status"] for m in messages] == ["CANCELED"]
    run = await rayflow.runs.retrieve(run_id)
    commit_to_client_ms = arrived * 1000 - run.updated_at.timestamp() * 1000
    print(
        f"\ncancel committed -> live poll answered: {commit_to_client_ms:.1f} ms"
        f" (cancel call -> answer {1000 * (arrived - canceled_at):.1f} ms), load {os.getloadavg()}"
    )
    assert commit_to_client_ms < 5000


async def test_a_live_request_without_a_change_ends_up_to_date_with_the_same_offset(
    http_tasks: HttpApi,
) -> None:
    run_id, _ = await trigger(http_tasks, "http-emit", {"n": 1})
    await wait_finished(run_id)
    async with http_tasks.client() as c:
        first = await c.get(f"/realtime/v1/runs/{run_id}", headers=http_tasks.headers())
        params = {"offset": first.headers["electric-offset"], "live": "true", "cursor": "1"}
        # a finished run never changes: the poll waits out the deployment's
        # run_shape_live_s, then answers "up-to-date"
        started = time.monotonic()
        live = await c.get(
            f"/realtime/v1/runs/{run_id}", params=params, headers=http_tasks.headers()
        )
        waited = time.monotonic() - started
    messages, _ = shape_messages(live)
    assert messages == []
    assert live.headers["electric-offset"] == params["offset"]
    assert waited >= RUN_SHAPE_LIVE_S - 0.5, f"answered after {waited:.1f} s, not held"


async def test_tag_shape_gets_runs_triggered_after_it_started(http_tasks: HttpApi) -> None:
    tag = f"t-{uuid.uuid4().hex[:8]}"
    body = {"payload": {"n": 1}, "options": {"tags": [tag, "other"]}}
    async with http_tasks.client() as c:
        first = await c.get("/realtime/v1/runs", params={"tags": tag}, headers=http_tasks.headers())
        assert shape_messages(first)[0] == []
        params = {"tags": tag, "offset": first.headers["electric-offset"], "live": "true"}
        poll = asyncio.create_task(
            c.get("/realtime/v1/runs", params=params, headers=http_tasks.headers())
        )
        r = await c.post("/api/v1/tasks/http-emit/trigger", headers=http_tasks.headers(), json=body)
        run_id = r.json()["id"]
        live = await poll
    messages, _ = shape_messages(live)
    assert run_id in {m["value"]["id"] for m in messages}
    assert all(tag in m["value"]["runTags"] for m in messages)


# -- the published SDK in Node ------------------------------------------------------
async def node_lines(node_dir: Path, command: dict[str, Any]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "node",
        "sdk_client.mjs",
        json.dumps(command),
        cwd=node_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def next_line(proc: asyncio.subprocess.Process, timeout_s: float = 60) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
    if not line:
        err = await proc.stderr.read() if proc.stderr else b""
        pytest.fail(f"the node client ended early: {err.decode()[-2000:]}")
    value: dict[str, Any] = json.loads(line)
    assert value["type"] != "error", value
    return value


@pytest.mark.node
async def test_sdk_subscribe_to_run_sees_every_status_and_its_streams(
    http_tasks: HttpApi,
    node_sdk: Path,  # noqa: F811
) -> None:
    await sub_lifecycle.register()
    handle = await sub_lifecycle.trigger({}, tags=["sub-sdk"])
    proc = await node_lines(
        node_sdk,
        {
            "op": "subscribe",
            "baseURL": http_tasks.url,
            "token": handle.public_access_token,
            "runId": handle.id,
        },
    )
    seen: list[dict[str, Any]] = []
    try:
        while True:
            line = await next_line(proc)
            if line["type"] == "end":
                break
            seen.append(line)
            statuses = [s["status"] for s in seen]
            if line["status"] == "WAITING" and statuses.count("WAITING") == 1:
                await go.send(handle.id, {"ok": True})  # revives it
            elif line["status"] == "EXECUTING" and "WAITING" in statuses[:-1]:
                await go.send(handle.id, {"finish": True})
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    # a subscription gets the run's state as of each push: a state shorter
    # than one push can be passed over, so the task holds each one here
    statuses = [s["status"] for s in seen]
    assert statuses[-1] == "COMPLETED" and seen[-1]["isSuccess"] is True
    waiting = statuses.index("WAITING")
    assert "EXECUTING" in statuses[waiting:], statuses
    assert seen[-1]["output"] == {"go": {"ok": True}}
    assert seen[-1]["tags"] == ["sub-sdk"]
    assert seen[-1]["realtimeStreams"] == ["sub-progress"]
    assert seen[-1]["taskIdentifier"] == "sub-lifecycle"


@pytest.mark.node
async def test_sdk_subscribe_to_runs_with_tag_follows_new_runs(
    http_tasks: HttpApi,
    node_sdk: Path,  # noqa: F811
) -> None:
    tag = f"sdk-{uuid.uuid4().hex[:8]}"
    proc = await node_lines(
        node_sdk,
        {
            "op": "subscribeTag",
            "baseURL": http_tasks.url,
            "token": http_tasks.secret_key,
            "tag": tag,
            "until": 2,
        },
    )
    try:
        # the subscription is running before either run exists
        await asyncio.sleep(0)
        ids = []
        for n in (1, 2):
            async with http_tasks.client() as c:
                r = await c.post(
                    "/api/v1/tasks/http-emit/trigger",
                    headers=http_tasks.headers(),
                    json={"payload": {"n": n}, "options": {"tags": [tag]}},
                )
            ids.append(r.json()["id"])
        finished: set[str] = set()
        while len(finished) < 2:
            line = await next_line(proc)
            assert line["type"] == "run" and tag in line["tags"]
            if line["finishedAt"]:
                finished.add(line["id"])
        assert finished == set(ids)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.node
async def test_batch_trigger_and_sdk_subscribe_to_batch(
    http_tasks: HttpApi,
    node_sdk: Path,  # noqa: F811
) -> None:
    items = [{"payload": {"n": n}} for n in (1, 2, 3)]
    async with http_tasks.client() as c:
        r = await c.post(
            "/api/v1/tasks/http-emit/batch", headers=http_tasks.headers(), json={"items": items}
        )
        assert r.status_code == 200, r.text
        batch_id, ids = r.json()["batchId"], [run["id"] for run in r.json()["runs"]]
        listed = await c.get(
            "/api/v1/runs", params={"filter[batch]": batch_id}, headers=http_tasks.headers()
        )
    assert len(set(ids)) == 3 and {d["id"] for d in listed.json()["data"]} == set(ids)
    proc = await node_lines(
        node_sdk,
        {
            "op": "subscribeBatch",
            "baseURL": http_tasks.url,
            "token": r.headers["x-trigger-jwt"],  # read:batch:<id> only
            "batchId": batch_id,
            "until": 3,
        },
    )
    finished: dict[str, Any] = {}
    try:
        while len(finished) < 3:
            line = await next_line(proc)
            if line["type"] == "run" and line["finishedAt"]:
                finished[line["id"]] = line["output"]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert finished == {run_id: {"emitted": n} for run_id, n in zip(ids, (1, 2, 3), strict=True)}
