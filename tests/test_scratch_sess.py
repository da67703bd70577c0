from __future__ import annotations

import asyncio
import json

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, read_sse

from rayflow._runtime import connection
from rayflow.store.base import RunRecord, SessionRecord, now_ms
from rayflow.store.named import NamedStreamSpec, NamedWrite

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)


def _setup(ext: str) -> str:
    store = connection.current().store
    sid = "session_" + ext
    now = now_ms()
    rec = SessionRecord(
        sid,
        ext,
        "inbox",
        "http-emit",
        json.dumps({"base_payload": {"n": 0}, "idle_timeout_s": 2.5}),
        None,
        ["t"],
        None,
        None,
        None,
        None,
        now,
        now,
    )
    store.start_session(rec, RunRecord(id="run_" + ext, task_id="http-emit", payload='{"n":0}'))
    for io in ("in", "out"):
        store.named_create(NamedStreamSpec(f"sessions/{sid}/{io}", "application/json"), [], 10**9)
    msgs = [
        b'{"data":{"type":"reply","i":0},"id":"p0"}',
        b'{"data":{"type":"reply","i":1},"id":"p1"}',
        b'{"headers":[["trigger-control","turn-complete"],["session-in-event-id","0"]]}',
    ]
    for m in msgs:
        store.named_write(NamedWrite(f"sessions/{sid}/out", [m], "application/json"), 10**9)
    return sid


async def test_scratch(http_tasks: HttpApi) -> None:
    sid = _setup("chatA")
    _setup("chatB")
    async with http_tasks.client() as c:
        r = await c.get("/api/v1/sessions/chatA", headers=http_tasks.headers())
        print(r.status_code, r.text)
        r = await c.get(
            "/api/v1/sessions?filter[type]=inbox&page[size]=1", headers=http_tasks.headers()
        )
        print(r.status_code, r.text)
        nxt = r.json()["pagination"]["next"]
        r = await c.get(
            f"/api/v1/sessions?filter[type]=inbox&page[size]=1&page[after]={nxt}",
            headers=http_tasks.headers(),
        )
        print(r.status_code, r.text)
        r = await c.get("/api/v1/sessions/nope", headers=http_tasks.headers())
        print(r.status_code, r.text)
        r = await c.get(f"/realtime/v1/sessions/{sid}/out/records", headers=http_tasks.headers())
        print(r.status_code, r.text)
        r = await c.get(
            f"/realtime/v1/sessions/chatA/out/records?afterEventId=0", headers=http_tasks.headers()
        )
        print(r.status_code, r.text)
        r = await c.patch(
            f"/api/v1/sessions/chatA",
            headers=http_tasks.headers(),
            json={"tags": ["x"], "metadata": {"a": 1}},
        )
        print(r.status_code, r.text)
        r = await c.put(f"/realtime/v1/sessions/chatA/out", headers=http_tasks.headers())
        print(r.status_code, r.text)
    res = await read_sse(
        http_tasks, "/realtime/v1/sessions/chatA/out", headers={"Timeout-Seconds": "1"}
    )
    print(res.status, res.headers.get("x-session-settled"), [e.data for e in res.events])
    res = await read_sse(
        http_tasks,
        "/realtime/v1/sessions/chatA/out",
        headers={"Timeout-Seconds": "30", "X-Peek-Settled": "1", "Last-Event-ID": "0"},
    )
    print(res.status, res.headers.get("x-session-settled"), [e.data for e in res.events])
    res = await read_sse(
        http_tasks, "/realtime/v1/sessions/chatA/in", headers={"Timeout-Seconds": "1"}
    )
    print(res.status, [e.data for e in res.events])
    res = await read_sse(
        http_tasks,
        "/realtime/v1/sessions/chatA/channels/side/out",
        headers={"Timeout-Seconds": "1"},
    )
    print(res.status, [e.data for e in res.events])

    # live
    async def later():
        await asyncio.sleep(0.3)
        connection.current().store.named_write(
            NamedWrite(
                f"sessions/{sid}/out", [b'{"data":{"live":1},"id":"p9"}'], "application/json"
            ),
            10**9,
        )

    t = asyncio.ensure_future(later())
    res = await read_sse(
        http_tasks,
        "/realtime/v1/sessions/chatA/out",
        headers={"Timeout-Seconds": "5", "Last-Event-ID": "2"},
        max_records=1,
    )
    print("live", res.status, [e.data for e in res.events])
    await t
