"""The Durable Streams protocol's published clients read a live rayflow run's
output stream at `/durable-streams/v1/stream/runs/{run_id}/{key}`: the PyPI
`durable-streams` client (long-poll) and npm `@durable-streams/client`
(SSE, tests/node/ds_client.mjs). Each reads part of the stream while the
run writes it, is cut off, resumes from the offset it was given, and must
end with every chunk exactly once, in order, when the run's end closes the
stream. Also: the endpoint's auth (the secret key, stream-scoped tokens).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import durable_streams
import httpx
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, trigger, wait_finished
from _node import node_packages

from rayflow._tokens import mint_token

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)

NODE_DIR = Path(__file__).resolve().parent / "node"
CHUNKS = 40


def _ds_url(api: HttpApi, path: str) -> str:
    return f"{api.url}/durable-streams/v1/stream/{path}"


def _read_python(url: str, token: str, cut_after: int) -> tuple[list[Any], list[Any]]:
    """Read with the PyPI client until `cut_after` items, drop the session,
    resume from its offset until the stream is closed."""
    headers = {"Authorization": f"Bearer {token}"}
    first: list[Any] = []
    # the client sends no offset unless given one, and a long poll needs one
    with durable_streams.stream(
        url, offset="-1", live="long-poll", headers=headers, timeout=30
    ) as res:
        for batch in res.iter_json_batches():
            first.extend(batch)
            if len(first) >= cut_after:
                break
        offset = res.offset
    rest: list[Any] = []
    with durable_streams.stream(
        url, offset=offset, live="long-poll", headers=headers, timeout=30
    ) as res:
        for batch in res.iter_json_batches():
            rest.extend(batch)
            if len(first) + len(rest) >= CHUNKS:
                break
    return first, rest


async def test_the_pypi_client_reads_a_live_run_is_cut_off_and_resumes_without_loss(
    http_api: HttpApi,
) -> None:
    run_id, _ = await trigger(http_api, "http-emit", {"n": CHUNKS, "key": "ds", "delay_s": 0.05})
    url = _ds_url(http_api, f"runs/{run_id}/ds")
    first, rest = await asyncio.to_thread(_read_python, url, http_api.secret_key, 5)
    assert len(first) >= 5
    assert first + rest == [{"i": i} for i in range(CHUNKS)]
    # the run's end closes the stream: a look at it says so
    await wait_finished(run_id)
    async with http_api.client() as c:
        tail = await c.head(url, headers=http_api.headers())
        assert tail.headers["Stream-Closed"] == "true"


@pytest.mark.node
async def test_the_npm_client_reads_a_live_run_over_sse_is_cut_off_and_resumes(
    http_api: HttpApi,
) -> None:
    node_packages("@durable-streams/client")
    run_id, _ = await trigger(http_api, "http-emit", {"n": CHUNKS, "key": "ds", "delay_s": 0.05})
    args = {
        "url": _ds_url(http_api, f"runs/{run_id}/ds"),
        "token": http_api.secret_key,
        "live": "sse",
        "cut_after": 5,
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        "ds_client.mjs",
        json.dumps(args),
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert proc.returncode == 0 and lines[-1]["type"] == "end", (lines[-3:], err.decode()[-2000:])
    cut = next(i for i, line in enumerate(lines) if line["type"] == "cut")
    before = [x for line in lines[:cut] for x in line.get("items", [])]
    after = [x for line in lines[cut:] for x in line.get("items", [])]
    assert len(before) >= 5 and after, "the cut fell after the last chunk: nothing was resumed"
    assert before + after == [{"i": i} for i in range(CHUNKS)]


async def test_stream_tokens_reach_their_prefix_only_and_run_streams_are_read_only(
    http_api: HttpApi,
) -> None:
    key = http_api.secret_key
    writer = mint_token(key, ["write:streams:team-a", "read:streams:team-a"], 300)
    reader = mint_token(key, ["read:streams:team-a/notes"], 300)
    async with http_api.client() as c:

        def at(token: str, **headers: str) -> dict[str, str]:
            return http_api.headers(token, **headers)

        put = await c.put(
            _ds_url(http_api, "team-a/notes"),
            content=b"hello",
            headers=at(writer, **{"Content-Type": "text/plain"}),
        )
        assert put.status_code == 201
        read = await c.get(_ds_url(http_api, "team-a/notes"), headers=at(reader))
        assert read.status_code == 200 and read.content == b"hello"
        for path, token in (("team-ab/x", writer), ("team-b/x", writer)):
            refused = await c.put(_ds_url(http_api, path), headers=at(token))
            assert refused.status_code == 403, refused.text
        denied = await c.post(
            _ds_url(http_api, "team-a/notes"),
            content=b"!",
            headers=at(reader, **{"Content-Type": "text/plain"}),
        )
        assert denied.status_code == 403 and denied.json()["code"] == "Forbidden"
        anonymous = await c.get(_ds_url(http_api, "team-a/notes"))
        assert anonymous.status_code == 401
        run_id, _ = await trigger(http_api, "http-emit", {"n": 1, "key": "k"})
        write_run = await c.post(
            _ds_url(http_api, f"runs/{run_id}/k"),
            content=b"[1]",
            headers=http_api.headers(**{"Content-Type": "application/json"}),
        )
        assert write_run.status_code == 405
        missing = await c.get(_ds_url(http_api, "runs/run_nope/k"), headers=http_api.headers())
        assert missing.status_code == 404


def test_anonymous_durable_streams_are_refused_off_loopback(rf: Any) -> None:
    from rayflow._config import Settings
    from rayflow.errors import RayflowError
    from serve.app import application

    settings = Settings(http_host="0.0.0.0", durable_streams_anonymous=True, secret_key="k")
    with pytest.raises(RayflowError, match="loopback"):
        application(settings)


async def test_an_append_wakes_a_long_poll_at_once(http_api: HttpApi) -> None:
    url = _ds_url(http_api, "wake/one")
    async with http_api.client() as c:
        headers = http_api.headers(**{"Content-Type": "application/json"})
        assert (await c.put(url, headers=headers)).status_code == 201
        tail = (await c.head(url, headers=headers)).headers["Stream-Next-Offset"]
        loop = asyncio.get_running_loop()
        poll = asyncio.ensure_future(
            c.get(url, params={"offset": tail, "live": "long-poll"}, headers=headers)
        )
        await asyncio.sleep(0.3)
        sent = loop.time()
        assert (await c.post(url, content=b'{"x":1}', headers=headers)).status_code == 204
        got: httpx.Response = await poll
        woke_s = loop.time() - sent
    assert got.status_code == 200 and got.json() == [{"x": 1}]
    assert woke_s < 2.0, f"the long poll answered {woke_s:.2f} s after the append"
