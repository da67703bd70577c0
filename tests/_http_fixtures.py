"""Fixtures for the HTTP tests: the real Ray Serve app on a free loopback
port, test tasks registered by id, and an SSE reader that records events.

Use from a test module (which also pins the `rf` deployment to SQLite —
the HTTP layer does not depend on the Store backend, tests/test_store.py
covers that):

    from _http_fixtures import *  # noqa: F403
    pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)
"""

from __future__ import annotations

import asyncio
import json
import socket
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent
from pydantic import BaseModel

import rayflow
from rayflow import streams, task

#: response headers the server or Serve's proxy adds, not the app
TRANSPORT_HEADERS = {"date", "server", "x-request-id"}


def comparable_answer(
    r: httpx.Response, names: list[str]
) -> tuple[int, list[tuple[str, str]], str]:
    """Status, the app's headers and the body of `r`, each of `names` (the
    streams each side writes) replaced by NAME: two servers' answers to the
    same request compare equal when the app answered them alike."""
    headers = [
        (k.lower(), v) for k, v in r.headers.multi_items() if k.lower() not in TRANSPORT_HEADERS
    ]
    text = r.text
    for name in names:
        text = text.replace(name, "NAME")
    return r.status_code, headers, text


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class HttpApi:
    url: str
    secret_key: str

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.secret_key}", **extra}

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 30)
        return httpx.AsyncClient(base_url=self.url, **kwargs)


#: one Serve app per rayflow deployment for the whole session. Each test
#: module that star-imports this file gets its own copy of the fixture
#: functions (pytest scopes fixtures to the module defining them), so the
#: app itself is kept here and started once; Ray's shutdown at the end of
#: the session stops it.
_apps: dict[str, HttpApi] = {}
#: the test app's `max_streams_per_token`
STREAMS_PER_TOKEN = 128
#: the test app's `run_shape_live_s`
RUN_SHAPE_LIVE_S = 5.0
#: the test app's `token_ttl_s` (not the session tokens' 3600 s)
TOKEN_TTL_S = 7200
#: Serve listens on one port per Ray session; a redeploy (another store) keeps it
_port: list[int] = []


@pytest.fixture(scope="session")
def http_api(rf: Any) -> HttpApi:
    """rayflow's Serve app on 127.0.0.1:<free port>, for the whole session."""
    from serve.app import start, wait_ready

    if rf.store_url() in _apps:
        return _apps[rf.store_url()]
    if not _port:
        _port.append(free_port())
    # a token holds 128 streams (tests/test_http_open_streams.py; 100
    # readers share one token in tests/test_http_streams.py)
    settings = rf.model_copy(
        update={
            "http_host": "127.0.0.1",
            "http_port": _port[0],
            "max_streams_per_token": STREAMS_PER_TOKEN,
            # a live run subscription without a change answers after this
            # (tests/test_run_subscriptions.py waits it out once; 20 s by
            # default); one with a change is answered at once
            "run_shape_live_s": RUN_SHAPE_LIVE_S,
            # tokens live TOKEN_TTL_S, a session's 60 min as everywhere (its
            # own setting): tests/test_http_sessions.py tells them apart
            "token_ttl_s": TOKEN_TTL_S,
        }
    )
    url = start(settings)
    wait_ready(url, timeout_s=60)
    _apps[rf.store_url()] = HttpApi(url=url, secret_key=settings.secret_key)
    return _apps[rf.store_url()]


# -- tasks the HTTP tests trigger by id ------------------------------------------
# (payload annotations use only builtins: the task travels to its RunActor by
# value, and under `from __future__ import annotations` its annotations are
# resolved there, where names like `Any` are not defined)
@task(id="http-emit")
async def http_emit(payload: dict) -> dict:  # type: ignore[type-arg]
    """Write `n` chunks {"i": i} to stream `key`, `delay_s` apart, then finish
    (or hold the run open `hold_s` more seconds)."""
    key = payload.get("key", "default")
    delay = float(payload.get("delay_s", 0))
    n = int(payload["n"])
    if delay:
        for i in range(n):
            await streams.append(key, {"i": i})
            await asyncio.sleep(delay)
    else:
        async with streams.writer(key) as w:
            for i in range(n):
                w.write({"i": i})
    await asyncio.sleep(float(payload.get("hold_s", 0)))
    return {"emitted": n}


class Approval(BaseModel):
    approved: bool
    reviewer: str


approval = streams.input("approval", Approval)
notes = streams.input("notes", dict)


@task(id="http-hold", inputs=[notes])
async def http_hold(payload: dict) -> str:  # type: ignore[type-arg]
    """Stay running `hold_s` seconds (streams are written from outside;
    messages to "notes" are stored and never read)."""
    await asyncio.sleep(float(payload.get("hold_s", 60)))
    return "held"


@task(id="http-approve")
async def http_approve(payload: dict) -> dict:  # type: ignore[type-arg]
    """Wait for `count` messages on the "approval" input stream; return them."""
    received = []
    for _ in range(int(payload.get("count", 1))):
        result = await approval.once(timeout_s=float(payload.get("timeout_s", 60)))
        received.append(result.unwrap().model_dump())
    return {"received": received}


TEST_TASKS = [http_emit, http_hold, http_approve]


@pytest.fixture(scope="session")
async def http_tasks(http_api: HttpApi) -> HttpApi:
    """The test tasks registered, so HTTP can trigger them by id."""
    for t in TEST_TASKS:
        await t.register()
    return http_api


async def trigger(api: HttpApi, task_id: str, payload: Any) -> tuple[str, str]:
    """Trigger over HTTP; returns (run id, the run's public access token)."""
    async with api.client() as c:
        r = await c.post(
            f"/api/v1/tasks/{task_id}/trigger", headers=api.headers(), json={"payload": payload}
        )
    assert r.status_code == 200, r.text
    return r.json()["id"], r.headers["x-trigger-jwt"]


async def wait_finished(run_id: str, timeout_s: float = 60) -> rayflow.Run:
    run: rayflow.Run = await asyncio.wait_for(rayflow.runs.wait(run_id), timeout_s)
    return run


# -- an SSE client that records what it got -------------------------------------------
@dataclass
class SSEResult:
    status: int
    headers: dict[str, str]
    #: the events, parsed by httpx-sse (an event without `event:` is "message")
    events: list[ServerSentEvent] = field(default_factory=list)
    #: the body of an answer that is not an event stream (an error's JSON)
    body: str = ""

    @property
    def records(self) -> list[dict[str, Any]]:
        out = []
        for ev in self.events:
            if ev.event == "batch":
                out.extend(json.loads(ev.data)["records"])
        return out

    @property
    def chunks(self) -> list[tuple[int, Any]]:
        """(index, data) of every record, in order."""
        return [(r["seq_num"], json.loads(r["body"])["data"]) for r in self.records]

    @property
    def done(self) -> bool:
        return any(ev.data == "[DONE]" for ev in self.events)


async def read_sse(
    api: HttpApi,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    max_records: int | None = None,
    timeout_s: float = 60,
) -> SSEResult:
    """GET an SSE path and read until the body ends (or `max_records`, then
    cut the connection)."""
    async with api.client(timeout=httpx.Timeout(timeout_s)) as c:
        hdrs = {"Accept": "text/event-stream", **api.headers(token), **(headers or {})}
        async with c.stream("GET", path, headers=hdrs) as r:
            result = SSEResult(status=r.status_code, headers=dict(r.headers))
            if not r.headers.get("content-type", "").startswith("text/event-stream"):
                result.body = (await r.aread()).decode()
                return result
            async with aclosing(EventSource(r).aiter_sse()) as events:
                async for event in events:
                    result.events.append(event)
                    if max_records is not None and len(result.records) >= max_records:
                        return result
    return result
