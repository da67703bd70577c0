"""Sends a caller can aim at the head node (issue 20, items 2 and 4): a send
naming a made-up input stream, a malformed id, or a finished run is a 400
that touches no actor; the Inbox actors are a fixed set of shards whatever
ids callers choose; a send retried with its idempotency key answers as the
first one did, however the run ended since."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import ray
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, approval, trigger, wait_finished
from ray.util import state as ray_state

import rayflow
from rayflow._runtime.connection import current
from rayflow.client import Client

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)


def inbox_actors() -> set[str]:
    """Names of the live Inbox actors of this deployment (Ray's state API)."""
    address = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
    actors = ray_state.list_actors(
        address=address, filters=[("state", "=", "ALIVE")], limit=10_000, detail=True
    )
    namespace = current().settings.namespace
    return {
        a.name
        for a in actors
        if a.name and a.name.startswith("rayflow-inbox") and a.ray_namespace == namespace
    }


async def post(api: HttpApi, path: str, token: str, **kw: object) -> httpx.Response:
    async with api.client() as c:
        return await c.post(path, headers=api.headers(token), **kw)  # type: ignore[arg-type]


async def test_made_up_stream_ids_are_400_and_start_no_actor(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-approve", {"count": 1, "timeout_s": 120})
    before = inbox_actors()
    tag = uuid.uuid4().hex[:8]
    for i in range(8):
        r = await post(
            http_tasks,
            f"/realtime/v1/streams/{run_id}/input/made-up-{tag}-{i}",
            token,
            json={"data": {"approved": True, "reviewer": "x"}},
        )
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["code"] == "InvalidArgument" and body["stream"] == f"made-up-{tag}-{i}"
        assert "approval" in body["error"] and "@task(inputs=" in body["error"]
    # ids that are too long or carry other characters: 400 naming streamId
    for bad in ("x" * 129, "a%20b", "%E2%9C%93", "a%00b"):
        r = await post(
            http_tasks, f"/realtime/v1/streams/{run_id}/input/{bad}", token, json={"data": {}}
        )
        assert r.status_code == 400, (bad, r.text)
        assert "streamId" in r.json()["error"]
    assert inbox_actors() == before
    # the stream the task receives on still works, through a fixed shard
    r = await post(
        http_tasks,
        f"/realtime/v1/streams/{run_id}/input/approval",
        token,
        json={"data": {"approved": True, "reviewer": "alice"}},
    )
    assert r.status_code == 200, r.text
    run = await wait_finished(run_id)
    assert run.status == "COMPLETED", run.error
    shards = {f"rayflow-inbox-{i}" for i in range(current().settings.inbox_shards)}
    assert inbox_actors() <= shards


async def test_a_send_to_a_finished_run_starts_no_actor(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-emit", {"n": 1})
    await wait_finished(run_id)
    before = inbox_actors()
    for i in range(4):
        r = await post(
            http_tasks,
            f"/realtime/v1/streams/{run_id}/input/late-{uuid.uuid4().hex[:8]}",
            token,
            json={"data": {"n": i}},
        )
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "RunFinished"
    assert inbox_actors() == before


async def test_many_runs_and_streams_share_the_fixed_inbox_shards(http_tasks: HttpApi) -> None:
    runs = [
        (await rayflow.trigger("http-approve", {"count": 1, "timeout_s": 120})).id for _ in range(6)
    ]
    for run_id in runs:
        await approval.send(run_id, {"approved": True, "reviewer": "bob"})
    for run_id in runs:
        assert (await wait_finished(run_id)).status == "COMPLETED"
    shards = {f"rayflow-inbox-{i}" for i in range(current().settings.inbox_shards)}
    assert inbox_actors() <= shards


def test_a_retried_keyed_send_over_http_answers_as_the_first(http_tasks: HttpApi) -> None:
    client = Client(http_tasks.url, http_tasks.secret_key)
    handle = client.trigger("http-approve", {"count": 1, "timeout_s": 60}).result()
    message = {"approved": True, "reviewer": "alice"}
    client.send(handle.id, "approval", message, idempotency_key="k1").result()
    run = client.runs.wait(handle.id).result(timeout_s=60)
    assert run.status == "COMPLETED"
    # the answer was lost: the caller sends again with the same key
    client.send(handle.id, "approval", message, idempotency_key="k1").result()
    # a new key to the finished run is still refused
    with pytest.raises(rayflow.errors.RunFinished):
        client.send(handle.id, "approval", message, idempotency_key="k2").result()
    stored = current().store.inbox_read(handle.id, "approval", 0, 10)
    assert len(stored) == 1


def test_a_retried_keyed_send_in_the_cluster_answers_as_the_first(http_tasks: HttpApi) -> None:
    handle = rayflow.trigger("http-approve", {"count": 1, "timeout_s": 60}).result()
    message = {"approved": True, "reviewer": "bob"}
    approval.send(handle.id, message, idempotency_key="k1").result()
    assert rayflow.runs.wait(handle.id).result().status == "COMPLETED"
    approval.send(handle.id, message, idempotency_key="k1").result()
    with pytest.raises(rayflow.errors.RunFinished):
        approval.send(handle.id, message, idempotency_key="k2").result()
    assert len(current().store.inbox_read(handle.id, "approval", 0, 10)) == 1


async def test_a_process_writing_to_many_streams_keeps_a_bounded_set_of_writers(
    http_tasks: HttpApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rayflow import streams
    from rayflow._runtime import stream_writers

    monkeypatch.setattr(stream_writers, "MAX_LOOP_WRITERS", 5)
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    for i in range(12):
        await streams.append(f"many-{i}", {"i": i}, target=run_id)
    writers = stream_writers._loop_writers[asyncio.get_running_loop()]
    assert len([k for k in writers if k[0] == run_id]) <= 6
    await rayflow.runs.cancel(run_id)
    for i in range(12):
        read = await asyncio.to_thread(
            lambda i=i: list(streams.read(run_id, f"many-{i}", timeout_s=5))
        )
        assert read == [{"i": i}]
