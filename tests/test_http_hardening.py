"""Smaller holes from the security and fault review (issue 11, item 7) and the
input-log quotas (item 4): each test fails on the code before its fix."""

from __future__ import annotations

import json

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, read_sse, trigger, wait_finished
from conftest import eventually_async

import rayflow
from rayflow.streams import close_stream

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)


async def test_two_anonymous_ndjson_writers_keep_each_others_chunks(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    path = f"/realtime/v1/streams/{run_id}/self/anon"
    async with http_tasks.client() as c:
        for w in ("a", "b"):  # no X-Client-Id: each numbers its chunks from 0
            lines = b"".join(json.dumps({"w": w, "n": i}).encode() + b"\n" for i in range(3))
            r = await c.post(path, headers=http_tasks.headers(), content=lines)
            assert r.status_code == 200, r.text
    await rayflow.runs.cancel(run_id)
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/anon")
    assert sorted((d["w"], d["n"]) for _, d in res.chunks) == [
        (w, i) for w in ("a", "b") for i in range(3)
    ]


async def test_nan_and_infinity_are_not_json(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    path = f"/realtime/v1/streams/{run_id}/self/nan"
    async with http_tasks.client() as c:
        for line in (b'{"x": NaN}\n', b"Infinity\n", b"[-Infinity]\n"):
            r = await c.post(path, headers=http_tasks.headers(), content=line)
            assert r.status_code == 400, (line, r.text)
            assert r.json()["code"] == "BadRequest" and "not JSON" in r.json()["error"]
        ok = await c.post(path, headers=http_tasks.headers(), content=b'{"x": 1}\n')
        assert ok.status_code == 200
    await rayflow.runs.cancel(run_id)
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/nan")
    assert res.chunks == [(0, {"x": 1})]


async def test_a_closed_stream_takes_no_more_writes(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-emit", {"n": 2, "key": "done", "hold_s": 60})
    async with http_tasks.client() as c:

        async def written() -> bool:
            r = await c.get(f"/rayflow/v1/runs/{run_id}/streams", headers=http_tasks.headers())
            return any(o["key"] == "done" and o["length"] == 2 for o in r.json()["outputs"])

        await eventually_async(written, timeout_s=60, what="the two chunks")
        await close_stream(run_id, "done")
        base = f"/realtime/v1/streams/{run_id}/self/done"
        appended = await c.post(f"{base}/append", headers=http_tasks.headers(), content=b"late")
        ndjson = await c.post(base, headers=http_tasks.headers(), content=b'{"late": 1}\n')
    for r in (appended, ndjson):
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "StreamClosed"
    await rayflow.runs.cancel(run_id)
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/done")
    assert res.chunks == [(0, {"i": 0}), (1, {"i": 1})]


async def test_run_pages_do_not_skip_runs_created_in_one_millisecond(http_tasks: HttpApi) -> None:
    items = [{"payload": {"n": 0, "i": i}} for i in range(12)]
    async with http_tasks.client() as c:
        r = await c.post(
            "/api/v1/tasks/http-emit/batch", headers=http_tasks.headers(), json={"items": items}
        )
        assert r.status_code == 200, r.text
        batch = r.json()["batchId"]
        created = {run["id"] for run in r.json()["runs"]}
        seen: list[str] = []
        after = None
        for _ in range(10):
            params = {"filter[batch]": batch, "page[size]": "5"}
            if after:
                params["page[after]"] = after
            page = (await c.get("/api/v1/runs", headers=http_tasks.headers(), params=params)).json()
            seen += [run["id"] for run in page["data"]]
            after = page["pagination"]["next"]
            if not after:
                break
    assert len(seen) == len(set(seen)) and set(seen) == created


async def test_an_error_from_inside_an_actor_carries_no_traceback(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-emit", {"n": 1})
    await wait_finished(run_id)
    async with http_tasks.client() as c:
        r = await c.post(
            f"/realtime/v1/streams/{run_id}/input/approval",
            headers=http_tasks.headers(token),
            json={"data": {"approved": True, "reviewer": "x"}},
        )
    body = r.json()
    assert r.status_code == 400, body
    assert body["code"] == "RunFinished", body
    assert "Traceback" not in json.dumps(body) and "RayTaskError" not in json.dumps(body)
