"""rayflow's listener answers a Durable Streams append itself, in raw ASGI
(`serve/ds_append.py`), for a producer's hot path; the FastAPI app answers
it through its route (as under Serve's proxy or direct ingress). Both must
give the same answer to the same request: the same status, headers and
body, CORS headers, body limits and refusals included.

The FastAPI app is the deployed one, behind Serve's proxy (`http_api`);
the listener is rayflow's (`serve/listener.py` serving `listener_app`),
started in this process, which is connected to the same deployment. Each
side writes a stream of its own (`…-l` / `…-a`), with the same requests in
the same order.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, free_port

from serve import listener
from serve.api import create_app, listener_app
from serve.middleware import CORS

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)

#: what the server or Serve's proxy adds, not the app
_TRANSPORT = {"date", "server", "x-request-id"}


def _answer(r: httpx.Response, names: list[str]) -> tuple[int, list[tuple[str, str]], str]:
    headers = [(k.lower(), v) for k, v in r.headers.multi_items() if k.lower() not in _TRANSPORT]
    text = r.text
    for name in names:
        text = text.replace(name, "NAME")
    return r.status_code, headers, text


async def test_the_listener_answers_appends_as_the_app_does(http_api: HttpApi, rf: Any) -> None:
    app = create_app(rf, http_api.secret_key)
    ours = await listener.start(listener_app(app), "127.0.0.1", free_port())
    base = f"ds-eq-{uuid.uuid4().hex[:8]}"
    names = {"listener": f"{base}-l", "app": f"{base}-a"}
    auth = http_api.headers()
    json_type = {**auth, "Content-Type": "application/json"}
    producer = {**json_type, "Producer-Id": "p", "Producer-Epoch": "0"}
    # a token that may read both streams, not write them
    reader = app.state.rayflow.mint([f"read:streams:{n}" for n in names.values()])
    big = b"x" * (4 * 1024 * 1024 + 1)
    # (suffix of the stream's name, headers, body), each a POST
    steps: list[tuple[str, dict[str, str], bytes | None]] = [
        ("", {**producer, "Producer-Seq": "0"}, b'{"n": 0}'),
        ("", {**producer, "Producer-Seq": "0"}, b'{"n": 0}'),  # duplicate
        ("", {**producer, "Producer-Seq": "5"}, b'{"n": 5}'),  # gap
        ("", {**producer, "Producer-Seq": "x"}, b'{"n": 5}'),  # not a number
        ("", {**json_type, "Producer-Id": "p"}, b"1"),  # not all three
        ("", json_type, b"[1, 2, 3]"),
        ("", json_type, b"[]"),
        ("", json_type, b"{not json"),
        ("", json_type, b"NaN"),
        ("", json_type, b""),
        ("", {**auth, "Content-Type": "text/plain"}, b"text"),
        ("", {**json_type, "Origin": "http://app.example"}, b'"cors"'),
        ("", {"Content-Type": "application/json"}, b"1"),  # no key
        ("", {"Content-Type": "application/json", "Authorization": "Basic x"}, b"1"),
        ("-missing", json_type, b"1"),
        ("", json_type, big),  # over the body limit (Content-Length)
        ("", {**json_type, "Stream-Closed": "true"}, None),
        ("", json_type, b"1"),  # closed
        ("/../x", json_type, b"1"),
        ("", {"Authorization": f"Bearer {reader}"}, b"1"),  # may only read
    ]
    answers: dict[str, list[Any]] = {}
    try:
        for side, url in (("listener", f"http://127.0.0.1:{ours.port}"), ("app", http_api.url)):
            name = names[side]
            got = answers[side] = []
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                stream = f"/durable-streams/v1/stream/{name}"
                put = await client.put(stream, headers=json_type)
                assert put.status_code == 201, put.text
                for suffix, headers, body in steps:
                    r = await client.post(stream + suffix, headers=headers, content=body)
                    got.append(_answer(r, list(names.values())))
    finally:
        ours.stop()
        await ours.stopped()
    for step, mine, theirs in zip(steps, answers["listener"], answers["app"], strict=True):
        assert mine == theirs, (step[:2], mine, theirs)
    statuses = [a[0] for a in answers["listener"]]
    assert statuses[:3] == [200, 204, 409], statuses
    assert statuses[12:] == [401, 401, 404, 413, 204, 409, 404, 403], statuses
    cors = dict(answers["listener"][11][1])
    assert cors["access-control-allow-origin"] == "http://app.example", cors
    assert cors["access-control-expose-headers"] == CORS["expose_headers"][0], cors
