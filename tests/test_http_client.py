"""rayflow.client.Client against the live Serve app: the in-cluster API's
names and errors over HTTP, blocking and async, and a stream read that
survives a cut connection exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi

import rayflow
from rayflow import errors, metadata, streams, task
from rayflow.client import Client

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)

ticks = streams.define("client-ticks", int)


@task(id="client-ticker")
async def client_ticker(payload: dict) -> int:  # type: ignore[type-arg]
    n = int(payload["n"])
    for i in range(n):
        await ticks.append(i)
        metadata.set("done", i + 1)
        if payload.get("delay_s"):
            await asyncio.sleep(float(payload["delay_s"]))
    return n


def test_blocking_calls_mirror_the_in_cluster_api(http_api: HttpApi) -> None:
    client = Client(http_api.url, http_api.secret_key)
    handle = client.trigger("client-ticker", {"n": 5}, tags=["client"]).result()
    assert handle.public_access_token.count(".") == 2
    assert list(client.streams.read(handle.id, "client-ticks")) == [0, 1, 2, 3, 4]
    run = client.runs.wait(handle.id).result(timeout_s=60)
    assert run.status == "COMPLETED" and run.output == 5
    assert run.metadata == {"done": 5} and run.tags == ["client"]
    assert handle.id in {r.id for r in client.runs.list(tag="client").result()}
    snapshots = list(client.runs.subscribe(handle.id))
    assert snapshots[-1].status == "COMPLETED" and snapshots[-1].finished_at is not None
    token = client.auth.create_public_token(handle.id).result()
    reader = Client(http_api.url, token)
    assert reader.runs.retrieve(handle.id).result().id == handle.id


def test_a_read_timeout_under_a_second_or_fractional_is_sent_in_whole_seconds(
    http_api: HttpApi,
) -> None:
    """`Timeout-Seconds: int(timeout_s)` was 0 for 0.5 s, which the server
    refuses (400) (issue 20, item 18)."""
    client = Client(http_api.url, http_api.secret_key)
    handle = client.trigger("client-ticker", {"n": 3}).result()
    assert client.runs.wait(handle.id).result(timeout_s=60).status == "COMPLETED"
    assert list(client.streams.read(handle.id, "client-ticks", timeout_s=0.5)) == [0, 1, 2]
    assert list(client.streams.read(handle.id, "client-ticks", timeout_s=2.5)) == [0, 1, 2]
    with pytest.raises(errors.InvalidArgument, match="at most 600"):
        client.streams.read(handle.id, "client-ticks", timeout_s=1200)


def test_each_http_error_is_the_same_rayflow_error(http_api: HttpApi) -> None:
    client = Client(http_api.url, http_api.secret_key)
    with pytest.raises(errors.RunNotFound):
        client.runs.retrieve("run_missing").result()
    with pytest.raises(errors.TaskNotFound):
        client.trigger("no-such-task", {}).result()
    with pytest.raises(errors.Unauthorized):
        Client(http_api.url, "wrong").runs.retrieve("run_x").result()
    handle = client.trigger("http-approve", {"count": 1, "timeout_s": 60}).result()
    other = client.trigger("client-ticker", {"n": 1}).result()
    with pytest.raises(errors.Forbidden):
        Client(http_api.url, handle.public_access_token).runs.retrieve(other.id).result()
    with pytest.raises(errors.ValidationError, match="reviewer"):
        client.send(handle.id, "approval", {"approved": "no"}).result()
    client.send(handle.id, "approval", {"approved": True, "reviewer": "c"}).result()
    assert client.runs.wait(handle.id).result(timeout_s=60).status == "COMPLETED"
    with pytest.raises(errors.RunFinished) as finished:
        client.send(handle.id, "approval", {"approved": True, "reviewer": "c"}).result()
    # the error body names the run and the stream, and the client keeps them
    assert (finished.value.run_id, finished.value.stream) == (handle.id, "approval")
    assert client.runs.cancel(handle.id).result() is False


def test_a_send_retried_with_its_idempotency_key_is_stored_once(http_api: HttpApi) -> None:
    client = Client(http_api.url, http_api.secret_key)
    handle = client.trigger("http-approve", {"count": 2, "timeout_s": 60}).result()
    first = {"approved": True, "reviewer": "first"}
    for _ in range(3):  # as a sender would retry after losing the answer
        client.send(handle.id, "approval", first, idempotency_key="k-1").result()
    client.send(handle.id, "approval", {"approved": True, "reviewer": "second"}).result()
    run = client.runs.wait(handle.id).result(timeout_s=60)
    assert [m["reviewer"] for m in run.output["received"]] == ["first", "second"]


async def test_async_calls_append_batch_and_cancel(http_api: HttpApi) -> None:
    client = Client(http_api.url, http_api.secret_key)
    handle = await client.trigger("http-hold", {"hold_s": 60})
    await client.streams.append(handle.id, "notes", {"from": "outside"})
    await client.streams.append(handle.id, "notes", "second")
    read = client.streams.read(handle.id, "notes", timeout_s=2)
    assert [c async for c in read] == [{"from": "outside"}, "second"]
    assert await client.runs.cancel(handle.id) is True
    assert (await client.runs.retrieve(handle.id)).status == "CANCELED"
    handles = await client.batch_trigger("client-ticker", [{"n": 1}, {"n": 2}])
    runs = [await client.runs.wait(h.id) for h in handles]
    assert [r.output for r in runs] == [1, 2]
    assert runs[0].batch_id is not None and runs[0].batch_id == runs[1].batch_id
    await client.aclose()


@contextlib.asynccontextmanager
async def cutting_proxy(target: str, cut_after_bytes: int) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP proxy to `target` that cuts its first connection once it has
    relayed `cut_after_bytes` of the server's response (a real cut)."""
    url = urlparse(target)
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(connections)
        connections.append(0)
        up_r, up_w = await asyncio.open_connection(url.hostname, url.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(4096):
                    dst.write(data)
                    await dst.drain()
                    if count:
                        connections[number] += len(data)
                        if number == 0 and connections[number] >= cut_after_bytes:
                            return

        tasks = [
            asyncio.ensure_future(pipe(reader, up_w, False)),
            asyncio.ensure_future(pipe(up_r, writer, True)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_w):
            w.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()


async def test_a_cut_read_resumes_with_last_event_id_exactly_once(http_api: HttpApi) -> None:
    handle = await Client(http_api.url, http_api.secret_key).trigger(
        "client-ticker", {"n": 300, "delay_s": 0.005}
    )
    async with cutting_proxy(http_api.url, cut_after_bytes=3000) as (url, connections):
        reader = Client(url, http_api.secret_key).streams.read(handle.id, "client-ticks")
        chunks = [c async for c in reader]
    assert chunks == list(range(300))
    assert reader.connections >= 2 and len(connections) >= 2
    assert reader.next_index == 300
    # history from an index, on a fresh reader
    again = Client(http_api.url, http_api.secret_key).streams.read(
        handle.id, "client-ticks", start_index=295
    )
    assert list(again) == [295, 296, 297, 298, 299]
    assert (await rayflow.runs.retrieve(handle.id)).status == "COMPLETED"
