"""Readers naming a stream key that does not exist (issue 11, item 4): they
cost no reader and no RunActor buffer, and wait for the stream to be created
(or the run to end) instead of polling; a key created later is still read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from contextlib import aclosing

import httpx
import pytest
import ray
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, approval, read_sse, trigger, wait_finished
from conftest import eventually_async
from httpx_sse import EventSource

import rayflow
from rayflow import streams, task
from rayflow._runtime import push_outbox
from rayflow._runtime.connection import current

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)


@task(id="unknown-keys-wait")
async def suspends(payload: dict) -> str:  # type: ignore[type-arg]
    """Suspend (no actor, no process) until an approval arrives."""
    await approval.wait(timeout="10m")
    return "woke"


async def run_actor(run_id: str) -> object:
    async def found() -> object:
        _, actor = await current().controller.locate.remote(run_id)
        return actor

    return await eventually_async(found, timeout_s=60, what=f"the RunActor of {run_id}")


async def test_many_unknown_keys_allocate_no_actor_buffer(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-emit", {"n": 2, "key": "real", "hold_s": 60})
    actor = await run_actor(run_id)
    await eventually_async(
        lambda: "real" in ray.get(actor.stream_stats.remote(run_id)),  # type: ignore[attr-defined]
        timeout_s=60,
        what="the run's own stream",
    )
    # 40 browsers, each naming a key of its own, over HTTP with the run's token
    results = await asyncio.gather(
        *(
            read_sse(
                http_tasks,
                f"/realtime/v1/streams/{run_id}/made-up-{i}",
                token=token,
                headers={"Timeout-Seconds": "1"},
            )
            for i in range(40)
        )
    )
    assert all(r.status == 200 and r.done and not r.records for r in results)
    # and Python readers, which long-poll the RunActor itself
    for i in range(5):
        assert list(streams.read(run_id, f"py-made-up-{i}", timeout_s=0.5)) == []
    stats = ray.get(actor.stream_stats.remote(run_id))  # type: ignore[attr-defined]
    assert set(stats) == {"real"}, stats
    await rayflow.runs.cancel(run_id)


async def test_a_reader_of_a_key_created_later_gets_its_chunks(http_tasks: HttpApi) -> None:
    await suspends.register()
    for task_id, payload in (("http-hold", {"hold_s": 60}), ("unknown-keys-wait", {})):
        run_id, token = await trigger(http_tasks, task_id, payload)
        if task_id == "unknown-keys-wait":  # a suspended run: no actor, no polling of the Store

            async def waiting(rid: str = run_id) -> bool:
                return (await rayflow.runs.retrieve(rid)).status == "WAITING"

            await eventually_async(
                waiting,
                timeout_s=60,
                what="the run to suspend",
            )
        reader = asyncio.create_task(
            read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/later", token=token)
        )
        async with http_tasks.client() as c:
            for i in range(3):
                r = await c.post(
                    f"/realtime/v1/streams/{run_id}/self/later/append",
                    headers=http_tasks.headers(),
                    content=f"chunk {i}".encode(),
                )
                assert r.status_code == 200, r.text
        if task_id == "unknown-keys-wait":
            await streams.send(run_id, "approval", {"approved": True, "reviewer": "x"})
            await wait_finished(run_id)
        else:
            await rayflow.runs.cancel(run_id)
        result = await asyncio.wait_for(reader, 60)
        assert result.status == 200 and result.done, (task_id, result.body)
        assert result.chunks == [(i, f"chunk {i}") for i in range(3)], task_id


async def test_a_reader_of_an_unknown_key_of_a_run_that_ends_ends(http_tasks: HttpApi) -> None:
    finished, token = await trigger(http_tasks, "http-emit", {"n": 1})
    await wait_finished(finished)
    started = time.monotonic()
    result = await read_sse(http_tasks, f"/realtime/v1/streams/{finished}/nope", token=token)
    assert result.status == 200 and result.done and not result.records
    assert time.monotonic() - started < 10  # not the 60 s idle timeout

    # a live run: the reader waits, and ends when the run does
    live, token = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    reader = asyncio.create_task(
        read_sse(http_tasks, f"/realtime/v1/streams/{live}/nope", token=token)
    )
    async with http_tasks.client() as c:
        r = await c.get(f"/api/v3/runs/{live}", headers=http_tasks.headers())
        assert r.status_code == 200
    await rayflow.runs.cancel(live)
    result = await asyncio.wait_for(reader, 30)
    assert result.status == 200 and result.done and not result.records


async def test_a_new_stream_of_a_live_run_is_followed_at_its_run_actor(
    http_tasks: HttpApi,
) -> None:
    """An SSE reader (and a Python one) waiting for a stream a live run has
    not written yet follows the key at the run's RunActor before the stream
    exists (issue 23): the first commit comes to it from the actor, not
    through the change feed and a Store look after it (14-24 ms), and the
    actor's answer to the outside writer's first `published` call names the
    replica, so the writer pushes the second chunk straight to it."""
    run_id, token = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    actor = await run_actor(run_id)
    key = "first-chunks"
    got: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    async def sse() -> None:
        headers = {"Accept": "text/event-stream", **http_tasks.headers(token)}
        async with (
            http_tasks.client(timeout=httpx.Timeout(60)) as c,
            c.stream("GET", f"/realtime/v1/streams/{run_id}/{key}", headers=headers) as r,
        ):
            assert r.status_code == 200, (await r.aread()).decode()
            async with aclosing(EventSource(r).aiter_sse()) as events:
                async for ev in events:
                    for rec in json.loads(ev.data)["records"] if ev.event == "batch" else []:
                        got.put_nowait((rec["seq_num"], json.loads(rec["body"])["data"]))

    async def python() -> list[str]:
        out: list[str] = []
        async for value in streams.read(run_id, key, timeout_s=60):
            out.append(value)
            if len(out) == 2:
                return out
        return out

    sse_reader, py_reader = asyncio.create_task(sse()), asyncio.create_task(python())

    async def both_follow() -> bool:
        # the replica and this process, at the RunActor before anyone wrote the key
        return bool(await actor.follower_count.remote(run_id) == 2)  # type: ignore[attr-defined]

    await eventually_async(both_follow, timeout_s=30, what="both readers at the RunActor")
    frames = push_outbox.frames
    await streams.append(key, "c0", target=run_id)
    assert await asyncio.wait_for(got.get(), 30) == (0, "c0")
    await eventually_async(
        lambda: push_outbox.following(run_id) >= 1, timeout_s=10, what="the writer to learn"
    )
    await streams.append(key, "c1", target=run_id)
    assert await asyncio.wait_for(got.get(), 30) == (1, "c1")
    assert push_outbox.frames > frames, "the second chunk was not pushed to the replica"
    assert await asyncio.wait_for(py_reader, 30) == ["c0", "c1"]
    sse_reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sse_reader
    await rayflow.runs.cancel(run_id)


async def test_an_unknown_run_is_404(http_tasks: HttpApi) -> None:
    async with http_tasks.client() as c:
        r = await c.get("/realtime/v1/streams/run_nope/anything", headers=http_tasks.headers())
    assert r.status_code == 404 and r.json()["code"] == "RunNotFound"
    assert isinstance(r, httpx.Response)


async def test_a_hub_stops_even_if_a_cancellation_is_swallowed(http_tasks: HttpApi) -> None:
    """The last SSE client of a stream ends its body only after the stream's
    hub stopped. On Python 3.11 `asyncio.wait_for` can swallow a cancellation
    that meets its result (a run change arriving as the hub stops): stopping
    must not wait on such a task forever (a CI run saw an SSE body of a
    cancelled run never end)."""
    from serve.fanout import StreamHub

    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    hub = StreamHub(run_id, "swallow", 0)
    hub._watch.cancel()

    async def swallows_one_cancel() -> None:
        while not hub._stopped:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)

    hub._watch = asyncio.create_task(swallows_one_cancel())
    await asyncio.sleep(0)
    started = time.monotonic()
    await asyncio.wait_for(hub.stop(), 10)
    assert time.monotonic() - started < 5
    await asyncio.wait_for(hub._watch, 5)  # it saw _stopped after its swallowed cancel
    await rayflow.runs.cancel(run_id)
