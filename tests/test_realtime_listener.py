"""rayflow's listener answers a backend's append to a run's stream (`POST
/realtime/v1/streams/{run_id}/{target}/{key}/append`) itself, in raw ASGI
(`serve/realtime_append.py`); the FastAPI app answers it through its route
(as under Serve's proxy or direct ingress). Both must give the same answer
to the same request: the same status, headers and body, CORS headers, body
limits and refusals included — and store the same chunks.

The FastAPI app is the deployed one, behind Serve's proxy (`http_api`);
the listener is rayflow's (`serve/listener.py` serving `listener_app`),
started in this process, which is connected to the same deployment. Each
side writes streams of its own (`…-l` / `…-a`) of the same runs, with the
same requests in the same order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, comparable_answer, free_port, read_sse, trigger, wait_finished

import rayflow
from rayflow.streams import close_stream
from serve import listener
from serve.api import create_app, listener_app
from serve.deps import MAX_APPEND_BYTES
from serve.middleware import CORS

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)


async def _chunked(n: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"x" * size


async def test_the_listener_answers_run_stream_appends_as_the_app_does(
    http_tasks: HttpApi, rf: Any
) -> None:
    app = create_app(rf, http_tasks.secret_key)
    ours = await listener.start(listener_app(app), "127.0.0.1", free_port())
    live, token = await trigger(http_tasks, "http-hold", {"hold_s": 120})
    done, _ = await trigger(http_tasks, "http-emit", {"n": 0})
    await wait_finished(done)
    base = f"rt-eq-{uuid.uuid4().hex[:8]}"
    names = {"listener": f"{base}-l", "app": f"{base}-a"}
    for name in names.values():  # a stream of the live run that is closed
        await rayflow.streams.append(f"{name}-closed", "first", target=live)
        await close_stream(live, f"{name}-closed")
    auth = http_tasks.headers()
    origin = {**auth, "Origin": "http://app.example"}
    # (path with {name} for the side's stream, headers, body), each a POST
    steps: list[tuple[str, dict[str, str], Any]] = [
        (f"{live}/self/{{name}}", auth, b"hello"),
        (f"{live}/self/{{name}}", {**auth, "X-Part-Id": "part-1"}, b'{"a": 1}'),
        (f"{live}/parent/{{name}}", auth, b"to the parent: none, so the run itself"),
        (f"{live}/root/{{name}}", auth, b""),
        (f"{live}/self/{{name}}", origin, "ünïcode".encode()),
        (f"{live}/self/{{name}}", auth, b"\xff\xfe not UTF-8"),
        (f"{live}/self/{{name}}", {}, b"no key"),
        (f"{live}/self/{{name}}", {"Authorization": "Basic eDp5"}, b"not a bearer"),
        (f"{live}/self/{{name}}", {"Authorization": "Bearer"}, b"a bearer without a token"),
        (f"{live}/self/{{name}}", {"Authorization": "Bearer nope"}, b"a wrong key"),
        (f"{live}/self/{{name}}", {"Authorization": f"Bearer {token}"}, b"a reader's token"),
        (f"{live}/self/{{name}}", {"Origin": "http://app.example"}, b"no key, with CORS"),
        ("run_nope/self/{name}", auth, b"an unknown run"),
        ("run_nope/parent/{name}", auth, b"an unknown run's parent"),
        (f"{done}/self/{{name}}", auth, b"a finished run"),
        (f"{live}/self/{{name}}-closed", auth, b"a closed stream"),
        (f"{live}/self/{{name}}", auth, b"x" * (MAX_APPEND_BYTES + 1)),  # Content-Length
        (f"{live}/self/{{name}}", auth, "chunked"),  # over the limit as it is read
        (f"{live}/self/{{name}}", auth, b"last"),
    ]
    answers: dict[str, list[Any]] = {}
    try:
        for side, url in (("listener", f"http://127.0.0.1:{ours.port}"), ("app", http_tasks.url)):
            got = answers[side] = []
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                for path, headers, body in steps:
                    content = _chunked(3, MAX_APPEND_BYTES // 2) if body == "chunked" else body
                    r = await client.post(
                        f"/realtime/v1/streams/{path.format(name=names[side])}/append",
                        headers=headers,
                        content=content,
                    )
                    got.append(comparable_answer(r, list(names.values())))
    finally:
        ours.stop()
        await ours.stopped()
    for step, mine, theirs in zip(steps, answers["listener"], answers["app"], strict=True):
        assert mine == theirs, (step[:2], mine, theirs)
    statuses = [a[0] for a in answers["listener"]]
    assert statuses[:16] == [200] * 5 + [400, 401, 401, 401, 401, 403, 401, 404, 404, 400, 409]
    assert statuses[16:] == [413, 413, 200], statuses
    for i in (4, 11):  # CORS on an answer and on a refusal
        cors = dict(answers["listener"][i][1])
        assert cors["access-control-allow-origin"] == "http://app.example", cors
        assert cors["access-control-expose-headers"] == CORS["expose_headers"][0], cors
    codes = [a[2] for a in answers["listener"][5:16]]
    assert all('"code":"' in c for c in codes), codes
    assert ("x-should-retry", "false") in answers["listener"][15][1]  # the 409
    # what each side stored, in request order
    stored = {}
    for side, name in names.items():
        res = await read_sse(http_tasks, f"/realtime/v1/streams/{live}/{name}", max_records=6)
        stored[side] = [(i, str(data)) for i, data in res.chunks]
    assert stored["listener"] == stored["app"], stored
    assert [c for _, c in stored["listener"]] == [
        "hello",
        '{"a": 1}',
        "to the parent: none, so the run itself",
        "",
        "ünïcode",
        "last",
    ]
    await rayflow.runs.cancel(live)
