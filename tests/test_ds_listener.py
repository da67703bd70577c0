"""rayflow's listener answers a Durable Streams append itself, for a
producer's hot path: below ASGI when its body comes whole
(`serve/ds_protocol.py`, `serve/ds_append.py: DirectAppends`; the route's
own way in a task for a body that is not JSON), in raw ASGI otherwise (a
chunked body, one over the limit); the FastAPI app answers it through its
route (as under Serve's proxy or direct ingress). All must give the same
answer to the same request: the same status, headers and body, CORS
headers, body limits and refusals included; and a connection's pipelined
requests are answered in order.

The FastAPI app is the deployed one, behind Serve's proxy (`http_api`);
the listener is rayflow's (`serve/listener.py` serving `listener_app`),
started in this process, which is connected to the same deployment. Each
side writes a stream of its own (`…-l` / `…-a`), with the same requests in
the same order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, comparable_answer, free_port

from serve import listener
from serve.api import create_app, listener_app, listener_protocol
from serve.middleware import CORS

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)


async def test_the_listener_answers_appends_as_the_app_does(http_api: HttpApi, rf: Any) -> None:
    app = create_app(rf, http_api.secret_key)
    ours = await listener.start(listener_app(app), "127.0.0.1", free_port(), listener_protocol(app))
    base = f"ds-eq-{uuid.uuid4().hex[:8]}"
    names = {"listener": f"{base}-l", "app": f"{base}-a"}
    auth = http_api.headers()
    json_type = {**auth, "Content-Type": "application/json"}
    producer = {**json_type, "Producer-Id": "p", "Producer-Epoch": "0"}
    # a token that may read both streams, not write them
    reader = app.state.rayflow.mint([f"read:streams:{n}" for n in names.values()])
    big = b"x" * (4 * 1024 * 1024 + 1)
    # (suffix of the stream's name, headers, body), each a POST; a list body
    # is sent chunked (the listener's raw-ASGI way)
    steps: list[tuple[str, dict[str, str], bytes | list[bytes] | None]] = [
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
        ("", {**producer, "Producer-Seq": "1"}, [b'{"n":', b" 1}"]),  # chunked
        ("", json_type, [b"[1,", b" 2]"]),
        ("", json_type, [b"x" * 65536] * 65),  # chunked, over the limit
        ("-missing", json_type, b"{not json"),  # 404 first
        (
            "",
            {
                **json_type,
                "Producer-Id": "p",
                "Producer-Epoch": "0",
                "Producer-Seq": "2",
                "Stream-Closed": "true",
            },
            b"2",
        ),  # close with the last append
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
                    content = _chunked(body) if isinstance(body, list) else body
                    r = await client.post(stream + suffix, headers=headers, content=content)
                    got.append(comparable_answer(r, list(names.values())))
    finally:
        ours.stop()
        await ours.stopped()
    for step, mine, theirs in zip(steps, answers["listener"], answers["app"], strict=True):
        assert mine == theirs, (step[:2], mine, theirs)
    statuses = [a[0] for a in answers["listener"]]
    assert statuses[:3] == [200, 204, 409], statuses
    assert statuses[12:] == [401, 401, 404, 413, 200, 204, 413, 404, 200, 204, 409, 404, 403]
    cors = dict(answers["listener"][11][1])
    assert cors["access-control-allow-origin"] == "http://app.example", cors
    assert cors["access-control-expose-headers"] == CORS["expose_headers"][0], cors


async def _chunked(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_the_listener_answers_pipelined_appends_in_order(http_api: HttpApi, rf: Any) -> None:
    """Requests written back to back on one connection, before any answer:
    appends (the direct way while none is in flight), a chunked append and
    a read (queued behind them) are answered in the order sent, each as
    itself."""
    app = create_app(rf, http_api.secret_key)
    ours = await listener.start(listener_app(app), "127.0.0.1", free_port(), listener_protocol(app))
    name = f"ds-pipe-{uuid.uuid4().hex[:8]}"
    stream = f"/durable-streams/v1/stream/{name}"
    auth = http_api.headers()["Authorization"]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ours.port}") as client:
            put = await client.put(
                stream, headers={"Authorization": auth, "Content-Type": "application/json"}
            )
            assert put.status_code == 201, put.text

        def append(seq: int) -> bytes:
            body = b'{"n": %d}' % seq
            return (
                f"POST {stream} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                "Content-Type: application/json\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\n"
                f"Producer-Seq: {seq}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body

        chunked = (
            f"POST {stream} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            "Content-Type: application/json\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\n"
            'Producer-Seq: 2\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{"n": 2}\r\n0\r\n\r\n'
        ).encode()
        read = f"GET {stream}?offset=-1 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", ours.port)
        writer.write(append(0) + append(1) + chunked + append(3) + read.encode())
        answers = [await _read_answer(reader) for _ in range(5)]
        writer.close()
    finally:
        ours.stop()
        await ours.stopped()
    assert [a[0] for a in answers] == [200, 200, 200, 200, 200], answers
    assert [a[1].get("producer-seq") for a in answers[:4]] == ["0", "1", "2", "3"], answers
    offsets = [a[1]["stream-next-offset"] for a in answers]
    assert offsets == sorted(offsets) and len(set(offsets[:4])) == 4, offsets
    assert answers[4][2] == b'[{"n":0},{"n":1},{"n":2},{"n":3}]', answers[4]


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length (or none: no body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body
