"""Sessions over HTTP (serve/routes/sessions.py, session_streams.py): the
published `@trigger.dev/sdk`'s `sessions` API from Node, and curl-style
requests with httpx and `rayflow.client`, against a Python inbox agent like
the one in the SDK's docs (`docs/ai-chat/sessions.mdx`). Both stores."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import TOKEN_TTL_S, HttpApi, read_sse
from conftest import eventually_async
from test_http_node_client import node_sdk, run_node  # noqa: F401  (fixture)

import rayflow
from rayflow import _tokens, sessions, task
from rayflow.client import Client

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)

AGENT = "http-inbox-agent"


@task(id=AGENT)
async def http_inbox_agent(payload: dict) -> dict:  # type: ignore[type-arg]
    """Echo each `{"text"}` record of `.in` on `.out`, then a `turn-complete`
    control record; `"side"` answers the side channel's last note on the
    channel's `.out`; `"bye"` ends the run (the next record continues the
    session on a fresh run)."""
    current = sessions.current()
    assert current is not None
    session = sessions.open(current.id)
    handled = 0
    while True:
        got = await session.input.wait(timeout=120)
        if not got.ok:
            return {"handled": handled, "timed_out": True}
        text = got.output.get("text")
        seq = session.input.last_dispatched_seq()
        if text == "bye":
            return {"handled": handled, "bye": True}
        if text == "side":
            side = session.channel("side")
            note = await side.input.once(timeout_s=30)
            await side.output.append({"echo": note.unwrap(), "base": payload})
        else:
            reply = {"type": "reply", "text": f"echo: {text}", "continued": current.continuation}
            await session.output.append(reply)
        await session.output.write_control("turn-complete", [("session-in-event-id", str(seq))])
        handled += 1


@task(id="http-live-agent")
async def http_live_agent(payload: dict) -> dict:  # type: ignore[type-arg]
    """Holds its process (`.once()`, no suspension): one reply per record;
    `"bye"` ends the run."""
    session = sessions.open(sessions.current().id)
    while True:
        got = await session.input.once(timeout_s=120)
        if not got.ok or got.output["text"] == "bye":
            return {"bye": True}
        await session.output.append({"echo": got.output["text"]})


async def test_sse_follows_a_live_runs_output_across_a_continuation_and_resumes(
    http_tasks: HttpApi,
) -> None:
    """An SSE reader of a live run's `.out` (pushed by its RunActor) reads
    on across the run's end and the continuation run: each record once, in
    order; `Last-Event-ID` resumes after a seq."""
    started = await sessions.start(
        type="live",
        task_id="http-live-agent",
        external_id=_ext("live"),
        trigger_config={"base_payload": {}},
    )
    run1 = started.run_id
    assert run1 is not None
    session = sessions.open(started.id)

    async def executing() -> bool:
        return (await rayflow.runs.retrieve(run1)).status == "EXECUTING"

    await eventually_async(executing, what="the live run to execute")
    path = f"/realtime/v1/sessions/{started.id}/out"
    token = started.public_access_token
    reading = asyncio.ensure_future(
        read_sse(http_tasks, path, token=token, headers={"Timeout-Seconds": "30"}, max_records=4)
    )
    for text in ("a", "b", "bye"):
        await session.input.send({"text": text})
    assert (await rayflow.runs.wait(run1)).output == {"bye": True}
    sent = [await session.input.send({"text": text}) for text in ("c", "d")]
    assert sent[0].continued and sent[0].run_id not in (None, run1)
    res = await reading
    echoes = [(i, {"echo": text}) for i, text in enumerate("abcd")]
    assert res.chunks == echoes
    resumed = await read_sse(
        http_tasks, path, token=token, headers={"Last-Event-ID": "1", "Timeout-Seconds": "1"}
    )
    assert resumed.chunks == echoes[2:] and resumed.done
    await session.input.send({"text": "bye"})
    await sessions.close(started.id)


async def test_sdk_sessions_start_send_read_channel_continue_close(
    http_tasks: HttpApi,
    node_sdk: Path,  # noqa: F811
) -> None:
    """The SDK's own `sessions.*` from Node, one scenario end to end."""
    external_id = f"chat-{uuid.uuid4().hex[:8]}"
    lines = await run_node(
        node_sdk,
        {
            "baseURL": http_tasks.url,
            "token": http_tasks.secret_key,
            "externalId": external_id,
            "taskId": AGENT,
        },
        timeout_s=120,
        script="session_client.mjs",
    )
    by_type: dict[str, list[Any]] = {}
    for line in lines:
        by_type.setdefault(line["type"], []).append(line)
    started = by_type["started"][0]
    first, again = started["first"], started["again"]
    assert first["id"].startswith("session_") and first["externalId"] == external_id
    assert first["isCached"] is False and again["isCached"] is True
    assert again["id"] == first["id"] and again["runId"] == first["runId"]  # no second run
    assert first["triggerConfig"]["basePayload"] == {"greeting": "hi"}
    assert first["metadata"] == {"owner": "node"} and first["tags"] == ["node-session"]
    assert by_type["reply"][0]["reply"] == {
        "type": "reply",
        "text": "echo: hello",
        "continued": False,
    }
    assert by_type["side"][0]["reply"] == {"echo": {"note": "n1"}, "base": {"greeting": "hi"}}
    before, after = (r["session"] for r in by_type["retrieved"])
    assert before["currentRunId"] == first["runId"]
    assert by_type["ended"][0]["status"] == "COMPLETED"
    assert by_type["ended"][0]["output"] == {"handled": 2, "bye": True}
    # continuation: a send after the run ended started a fresh run, same streams
    assert by_type["continued"][0]["reply"] == {
        "type": "reply",
        "text": "echo: again",
        "continued": True,
    }
    assert after["currentRunId"] not in (None, first["runId"])
    # out.writeControl and out.trimTo: a reader from seq 0 skips what was trimmed
    trimmed = by_type["trimmed"][0]
    assert trimmed["refusedPut"] == 403  # the session's token writes no .out
    assert trimmed["resumed"] == {"type": "reply", "text": "echo: post-trim", "continued": True}
    cut = int(trimmed["lastEventId"])
    async with http_tasks.client() as c:
        r = await c.get(
            f"/realtime/v1/sessions/{first['id']}/out/records", headers=http_tasks.headers()
        )
    left = r.json()["records"]  # the trim point on (the agent's own records interleave)
    assert left[0]["seqNum"] == cut and left[0]["data"] is None
    assert left[0]["headers"] == [["trigger-control", "turn-complete"], ["note", "from-node"]]
    trims = [x for x in left if x.get("headers") == [["", "trim"]]]
    assert len(trims) == 1 and trims[0]["data"] is None and trims[0]["seqNum"] > cut
    assert [x["data"] for x in left if x["data"] is not None][0]["text"] == "echo: post-trim"
    closed = by_type["closed"][0]["session"]
    assert closed["closedAt"] is not None and closed["closedReason"] == "done"
    late = by_type["late-send"][0]
    assert late["refused"] and late["status"] == 409 and late["code"] == "session_closed"
    assert late["closedReason"] == "done"
    assert by_type["listed"][0]["sessions"][0]["id"] == first["id"]


async def test_session_routes_refuse_bad_input_and_foreign_tokens(http_tasks: HttpApi) -> None:
    """curl-style and rayflow.client: tokens reach their session only, bad
    input is a precise 4xx with nothing stored, resume and settled reads."""
    client = Client(http_tasks.url, http_tasks.secret_key)
    mine = await client.sessions.start(type="probe", task_id=AGENT, external_id=_ext("mine"))
    other = await client.sessions.start(type="probe", task_id=AGENT, external_id=_ext("other"))
    assert mine.public_access_token and not mine.is_cached
    # a session token lives 60 min (Trigger.dev's), minted over HTTP or in
    # Python, whatever the deployment's other tokens live (TOKEN_TTL_S here)
    again = await sessions.start(type="probe", task_id=AGENT, external_id=mine.external_id)
    assert again.is_cached and again.id == mine.id
    for token in (mine.public_access_token, again.public_access_token):
        claims = _tokens.decode_token(http_tasks.secret_key, token)
        assert claims["exp"] - claims["iat"] == 3600 != TOKEN_TTL_S
        names = (mine.id, mine.external_id)
        scopes = [f"{op}:sessions:{name}" for op in ("read", "write") for name in names]
        assert sorted(claims["scopes"]) == sorted(scopes)
    as_mine = Client(http_tasks.url, mine.public_access_token)

    # the session's own token: send, read (by external id and by id), retrieve
    assert await as_mine.sessions.open(mine.external_id or "").send({"text": "hello"}) == 0
    reader = as_mine.sessions.open(mine.id).read(timeout_s=30)
    async for chunk in reader:
        assert chunk == {"type": "reply", "text": "echo: hello", "continued": False}
        break
    assert (await as_mine.sessions.retrieve(mine.id)).external_id == mine.external_id

    async with http_tasks.client() as c:
        pat = http_tasks.headers(mine.public_access_token)
        secret = http_tasks.headers()
        # ... and nothing of another session
        for method, path in (
            ("GET", f"/api/v1/sessions/{other.id}"),
            ("GET", f"/realtime/v1/sessions/{other.external_id}/out/records"),
            ("POST", f"/realtime/v1/sessions/{other.id}/in/append"),
            ("POST", f"/api/v1/sessions/{other.id}/close"),
            ("GET", "/api/v1/sessions"),
            ("POST", f"/realtime/v1/sessions/{mine.id}/out/append"),  # only runs write .out
        ):
            r = await c.request(method, path, headers=pat, json={"x": 1})
            assert r.status_code == 403, (method, path, r.text)
        assert (await c.get(f"/api/v1/sessions/{other.id}", headers=secret)).status_code == 200

        # a channel-scoped token reads that channel only
        side = rayflow.auth.create_public_token(scopes=[f"read:sessions:{mine.id}:channels:side"])
        r = await c.get(
            f"/realtime/v1/sessions/{mine.id}/channels/side/out/records",
            headers=http_tasks.headers(side),
        )
        assert r.status_code == 200 and r.json() == {"records": []}
        r = await c.get(
            f"/realtime/v1/sessions/{mine.id}/out/records", headers=http_tasks.headers(side)
        )
        assert r.status_code == 403

        # bad input: each a JSON error, nothing stored
        start = {"type": "fresh", "taskIdentifier": AGENT, "triggerConfig": {"basePayload": {}}}
        r = await c.post(
            "/api/v1/sessions", headers=secret, json={**start, "externalId": "session_x"}
        )
        assert r.status_code == 400 and "session_" in r.json()["error"]
        # 201 created, 200 for the same external id again (Trigger.dev's statuses)
        fresh = {**start, "externalId": _ext("fresh")}
        statuses = [(await c.post("/api/v1/sessions", headers=secret, json=fresh)) for _ in "12"]
        assert [r.status_code for r in statuses] == [201, 200]
        assert statuses[0].json()["id"] == statuses[1].json()["id"]
        await client.sessions.close(statuses[0].json()["id"])
        r = await c.get("/api/v1/sessions/no-such-chat", headers=secret)
        assert r.status_code == 404 and r.json()["code"] == "SessionNotFound"
        r = await c.post("/realtime/v1/sessions/no-such-chat/in/append", headers=secret, json={})
        assert r.status_code == 404
        big = json.dumps({"text": "x" * (1024 * 1024)}).encode()
        r = await c.post(f"/realtime/v1/sessions/{mine.id}/in/append", headers=pat, content=big)
        assert r.status_code == 413 and r.json()["code"] == "PayloadTooLarge"
        r = await c.get(f"/realtime/v1/sessions/{mine.id}/in/records", headers=pat)
        assert [rec["data"] for rec in r.json()["records"]] == [{"text": "hello"}]

        # .out: the reply, then the turn-complete control record (seq 1)
        r = await c.get(f"/realtime/v1/sessions/{mine.id}/out/records", headers=pat)
        out = r.json()["records"]
        assert [rec["seqNum"] for rec in out] == [0, 1]
        assert out[1]["data"] is None
        assert out[1]["headers"] == [
            ["trigger-control", "turn-complete"],
            ["session-in-event-id", "0"],
        ]
        # the same stream over the Durable Streams protocol, with the session's token
        ds = f"/durable-streams/v1/stream/sessions/{mine.id}/out"
        r = await c.get(ds, headers=pat)
        assert r.status_code == 200 and r.json()[0]["data"] == out[0]["data"]
        r = await c.get(f"/durable-streams/v1/stream/sessions/{other.id}/out", headers=pat)
        assert r.status_code == 403
        assert (await c.post(ds, headers=secret, json=[1])).status_code == 405  # read-only
        # resume after seq 0: only the control record; a settled peek ends at once
        started = time.monotonic()
        res = await read_sse(
            http_tasks,
            f"/realtime/v1/sessions/{mine.external_id}/out",
            token=mine.public_access_token,
            headers={"Last-Event-ID": "0", "X-Peek-Settled": "1", "Timeout-Seconds": "60"},
        )
        assert time.monotonic() - started < 10
        assert res.headers["x-session-settled"] == "true" and res.done
        assert [(r["seq_num"], r["body"], r["headers"][0]) for r in res.records] == [
            (1, "", ["trigger-control", "turn-complete"])
        ]

        # end-and-continue: the calling run hands over to a fresh run, once
        handover = {"callingRunId": mine.current_run_id, "reason": "upgrade"}
        path = f"/api/v1/sessions/{mine.id}/end-and-continue"
        assert (await c.post(path, headers=pat, json=handover)).status_code == 403
        first, second = [(await c.post(path, headers=secret, json=handover)).json() for _ in "12"]
        assert first["swapped"] is True and first["runId"] not in (None, mine.current_run_id)
        assert second == {"runId": first["runId"], "swapped": False}
        assert (await client.sessions.retrieve(mine.id)).current_run_id == first["runId"]

        # closed: sends are 409 session_closed (not retried), starting it again 409
        closed = await as_mine.sessions.close(mine.id, reason="finished")
        assert closed.closed and closed.closed_reason == "finished"
        r = await c.post(
            f"/realtime/v1/sessions/{mine.id}/in/append", headers=pat, json={"text": "late"}
        )
        body = r.json()
        assert r.status_code == 409 and body["code"] == "session_closed"
        assert body["closedReason"] == "finished" and r.headers["x-should-retry"] == "false"
        with pytest.raises(rayflow.errors.SessionClosed):
            await client.sessions.start(type="probe", task_id=AGENT, external_id=mine.external_id)

    await _list_filters_fill_pages_and_the_cursor_walks_every_match(http_tasks, client)
    closed_ones = await client.sessions.list(type="probe", status="CLOSED", limit=5)
    assert [s.id for s in closed_ones] == [mine.id]
    both = await client.sessions.list(type="probe", limit=5)
    assert {s.id for s in both} >= {mine.id, other.id}
    await client.sessions.close(other.id)
    await client.aclose()
    await as_mine.aclose()


async def _list_filters_fill_pages_and_the_cursor_walks_every_match(
    http_tasks: HttpApi, client: Client
) -> None:
    """Several statuses and a creation window are in the Store's query: a
    page is full and the cursor reaches every match (they were applied to
    each page after the query: short pages)."""
    kind = _ext("filters")
    past = "2020-01-01T00:00:00Z"
    made: list[tuple[str, str]] = []  # (id, status), oldest first
    async with http_tasks.client() as c:
        for status in ("ACTIVE", "CLOSED", "ACTIVE", "EXPIRED", "CLOSED", "ACTIVE", "ACTIVE"):
            body = {
                "type": kind,
                "taskIdentifier": AGENT,
                "triggerConfig": {"basePayload": {}},
                **({"expiresAt": past} if status == "EXPIRED" else {}),
            }
            r = await c.post("/api/v1/sessions", headers=http_tasks.headers(), json=body)
            assert r.status_code == 201, r.text
            made.append((r.json()["id"], status))
            if status == "CLOSED":
                await client.sessions.close(made[-1][0])

        async def walk(query: dict[str, str]) -> list[list[str]]:
            pages: list[list[str]] = []
            params = {"filter[type]": kind, "page[size]": "2", **query}
            while True:
                r = await c.get("/api/v1/sessions", headers=http_tasks.headers(), params=params)
                assert r.status_code == 200, r.text
                pages.append([s["id"] for s in r.json()["data"]])
                after = r.json()["pagination"].get("next")
                if after is None:
                    return pages
                params["page[after]"] = after

        newest_first = [sid for sid, _ in reversed(made)]
        ended = [sid for sid, st in reversed(made) if st in ("CLOSED", "EXPIRED")]
        pages = await walk({"filter[status]": "CLOSED,EXPIRED"})
        assert pages[0] == ended[:2] and sum(pages, []) == ended  # 3 matches: 2 + 1
        assert len(pages) == 2
        listed = await client.sessions.list(type=kind, status=["CLOSED", "EXPIRED"], limit=10)
        assert [x.id for x in listed] == ended
        active = await walk({"filter[status]": "ACTIVE,ACTIVE"})
        assert sum(active, []) == [sid for sid, st in reversed(made) if st == "ACTIVE"]
        assert [len(p) for p in active] == [2, 2]
        # a creation window: every match, full pages
        third = await c.get(f"/api/v1/sessions/{made[2][0]}", headers=http_tasks.headers())
        since = round(datetime.fromisoformat(third.json()["createdAt"]).timestamp() * 1000)
        windowed = await walk({"filter[createdAt][from]": str(since)})
        expected = [sid for sid in newest_first if sid in {m[0] for m in made[2:]}]
        assert sum(windowed, []) == expected and [len(p) for p in windowed][0] == 2
        r = await c.get(
            "/api/v1/sessions",
            headers=http_tasks.headers(),
            params={"filter[status]": "ACTIVE,OPEN"},
        )
        assert r.status_code == 400 and "OPEN" in r.json()["error"]
    for sid, status in made:
        if status != "CLOSED":
            await client.sessions.close(sid)


def _ext(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"
