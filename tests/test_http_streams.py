"""Reading output streams over SSE from the real Serve app (docs/wire.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from contextlib import aclosing

import httpx
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, SSEResult, read_sse, trigger, wait_finished
from conftest import eventually_async
from httpx_sse import EventSource

import rayflow
from rayflow._runtime.connection import current

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)


async def test_sse_read_from_start_gets_every_chunk_then_done(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-emit", {"n": 50})
    await wait_finished(run_id)
    origin = {"Origin": "https://app.example"}
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/default", headers=origin)
    assert res.status == 200
    assert res.headers["content-type"].startswith("text/event-stream")
    assert res.headers["x-stream-version"] == "v2"
    assert res.headers["cache-control"] == "no-cache, no-transform"
    assert res.headers["access-control-allow-origin"] == "https://app.example"
    assert res.chunks == [(i, {"i": i}) for i in range(50)]
    assert res.done
    assert res.events[-1].data == "[DONE]"
    # many records per batch event; the event id is the last seq_num in it
    batches = [ev for ev in res.events if ev.event == "batch"]
    assert len(batches) < 50
    for ev in batches:
        assert int(ev.id or -1) == json.loads(ev.data)["records"][-1]["seq_num"]
    # each body is a JSON string holding {"data", "id"} with a unique id
    bodies = [json.loads(r["body"]) for r in res.records]
    assert len({b["id"] for b in bodies}) == 50
    assert all(isinstance(r["timestamp"], int) for r in res.records)


@pytest.mark.parametrize("last_event_id", ["19", "19-0", "19,abc"])
async def test_sse_read_from_the_middle_resumes_after_last_event_id(
    http_tasks: HttpApi, last_event_id: str
) -> None:
    run_id, _ = await trigger(http_tasks, "http-emit", {"n": 50})
    await wait_finished(run_id)
    res = await read_sse(
        http_tasks,
        f"/realtime/v1/streams/{run_id}/default",
        headers={"Last-Event-ID": last_event_id},
    )
    assert res.chunks == [(i, {"i": i}) for i in range(20, 50)]
    assert res.done


async def test_sse_read_from_the_tail_gets_only_new_chunks(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    for i in range(5):
        await rayflow.streams.append("tail", {"old": i}, target=run_id)

    async def later() -> None:
        await asyncio.sleep(1.0)
        for i in range(3):
            await rayflow.streams.append("tail", {"new": i}, target=run_id)
        await rayflow.runs.cancel(run_id)

    writer = asyncio.create_task(later())
    res = await read_sse(
        http_tasks,
        f"/realtime/v1/streams/{run_id}/tail",
        headers={"X-Trigger-Stream-Start": "latest"},
    )
    await writer
    assert res.chunks == [(5, {"new": 0}), (6, {"new": 1}), (7, {"new": 2})]
    assert res.done  # the run was canceled: its streams closed, the body ended


async def test_sse_live_reader_resumed_after_20_cut_connections_gets_every_chunk_once(
    http_tasks: HttpApi,
) -> None:
    n = 600
    run_id, token = await trigger(http_tasks, "http-emit", {"n": n, "delay_s": 0.01})
    got: list[tuple[int, object]] = []
    cuts = 0
    last: int | None = None
    for _ in range(100):  # bounded: 20 cuts, then reads to the end
        headers = {} if last is None else {"Last-Event-ID": str(last)}
        cut_here = cuts < 20
        res = await read_sse(
            http_tasks,
            f"/realtime/v1/streams/{run_id}/default",
            token=token,
            headers=headers,
            max_records=10 if cut_here else None,
        )
        assert res.status == 200
        got.extend(res.chunks)
        if res.chunks:
            last = res.chunks[-1][0]
        if res.done:
            break
        cuts += 1
    assert cuts >= 20, "the stream ended before it could be cut 20 times"
    assert [i for i, _ in got] == list(range(n)), "a chunk was lost or delivered twice"
    assert [c for _, c in got] == [{"i": i} for i in range(n)]
    run = await rayflow.runs.retrieve(run_id)
    assert run.status == "COMPLETED"


async def test_sse_reader_goes_on_when_the_reader_that_came_first_leaves(
    http_tasks: HttpApi,
) -> None:
    """Readers of one stream in a replica share one upstream subscription,
    made while serving the first of them; when that client goes away the
    others must go on reading. (Ray makes the request being served the
    parent of every Ray call a task made then makes, and cancels them when
    the request ends: the shared long poll was cancelled and every other
    reader's body broke off.)"""
    run_id, token = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    await rayflow.streams.append("shared", {"i": 0}, target=run_id)
    path = f"/realtime/v1/streams/{run_id}/shared"
    hdrs = {"Accept": "text/event-stream", **http_tasks.headers(token)}

    async def follow(result: SSEResult, client: httpx.AsyncClient) -> None:
        async with (
            client.stream("GET", path, headers=hdrs) as r,
            aclosing(EventSource(r).aiter_sse()) as events,
        ):
            async for event in events:
                result.events.append(event)

    first, second = SSEResult(200, {}), SSEResult(200, {})
    async with (
        http_tasks.client(timeout=httpx.Timeout(60)) as c1,
        http_tasks.client(timeout=httpx.Timeout(60)) as c2,
    ):
        leaving = asyncio.create_task(follow(first, c1))
        await eventually_async(lambda: first.chunks, what="the first reader's chunk")
        staying = asyncio.create_task(follow(second, c2))
        await eventually_async(lambda: second.chunks, what="the second reader's chunk")
        leaving.cancel()  # the first client goes away
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        for i in range(1, 6):
            await rayflow.streams.append("shared", {"i": i}, target=run_id)
            await asyncio.sleep(0.3)  # paced: the replica sees the first client leave meanwhile
        await rayflow.runs.cancel(run_id)
        await asyncio.wait_for(staying, 60)  # raises if its body broke off
    assert second.chunks == [(i, {"i": i}) for i in range(6)]
    assert second.done


async def test_sse_caught_up_reader_gets_pings_then_done_after_idle_timeout(
    http_tasks: HttpApi,
) -> None:
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    await rayflow.streams.append("quiet", "only chunk", target=run_id)
    started = time.monotonic()
    res = await read_sse(
        http_tasks,
        f"/realtime/v1/streams/{run_id}/quiet",
        headers={"Timeout-Seconds": "12"},
    )
    elapsed = time.monotonic() - started
    assert res.chunks == [(0, "only chunk")]
    pings = [ev for ev in res.events if ev.event == "ping"]
    assert pings, "no ping while caught up for 12 s"
    assert isinstance(json.loads(pings[0].data)["timestamp"], int)
    assert res.done and 11.5 <= elapsed < 20
    await rayflow.runs.cancel(run_id)


async def test_sse_read_of_an_unknown_run_is_404_json(http_tasks: HttpApi) -> None:
    res = await read_sse(
        http_tasks,
        "/realtime/v1/streams/run_doesnotexist/default",
        headers={"Origin": "https://app.example"},
    )
    assert res.status == 404
    body = json.loads(res.body)
    assert body["ok"] is False and "run_doesnotexist" in body["error"]
    assert res.headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.parametrize(
    "headers",
    [
        {"Timeout-Seconds": "0"},
        {"Timeout-Seconds": "601"},
        {"Timeout-Seconds": "soon"},
        {"Last-Event-ID": "abc"},
    ],
)
async def test_sse_read_with_a_bad_header_is_400(
    http_tasks: HttpApi, headers: dict[str, str]
) -> None:
    run_id, _ = await trigger(http_tasks, "http-emit", {"n": 1})
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/default", headers=headers)
    assert res.status == 400
    assert json.loads(res.body)["ok"] is False


async def test_append_from_outside_is_read_back_as_a_string_chunk(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    async with http_tasks.client() as c:
        for i in range(3):
            r = await c.post(
                f"/realtime/v1/streams/{run_id}/self/logs/append",
                headers=http_tasks.headers(**{"X-Part-Id": f"part-{i}"}),
                content=f"line {i}",
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"ok": True}
    await rayflow.runs.cancel(run_id)
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/logs")
    assert res.chunks == [(0, "line 0"), (1, "line 1"), (2, "line 2")]
    assert [json.loads(r["body"])["id"] for r in res.records] == ["part-0", "part-1", "part-2"]


async def test_v1_ndjson_writer_resumes_without_duplicates(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    path = f"/realtime/v1/streams/{run_id}/self/ndjson"
    writer = {"X-Client-Id": "w1"}
    async with http_tasks.client() as c:
        created = await c.put(path, headers=http_tasks.headers())
        assert created.json() == {"version": "v1"}
        probe = await c.head(path, headers=http_tasks.headers(**writer))
        assert probe.headers["x-last-chunk-index"] == "-1"
        lines = b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(5))
        r = await c.post(path, headers=http_tasks.headers(**writer), content=lines)
        assert r.status_code == 200, r.text
        probe = await c.head(path, headers=http_tasks.headers(**writer))
        assert probe.headers["x-last-chunk-index"] == "4"
        # a writer that lost its connection resends from chunk 3: 3 and 4 are dropped
        resent = b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(3, 8))
        r = await c.post(
            path,
            headers=http_tasks.headers(**writer, **{"X-Resume-From-Chunk": "3"}),
            content=resent,
        )
        assert r.status_code == 200, r.text
        bad = await c.post(path, headers=http_tasks.headers(**writer), content=b"not json\n")
        assert bad.status_code == 400
    await rayflow.runs.cancel(run_id)
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/ndjson")
    assert res.chunks == [(i, {"n": i}) for i in range(8)]


async def test_many_concurrent_sse_readers_of_one_live_stream_all_get_every_chunk(
    http_tasks: HttpApi,
) -> None:
    # more than Serve's default max_ongoing_requests (5), which would hang the 6th
    readers, n = 100, 300
    run_id, token = await trigger(http_tasks, "http-emit", {"n": n, "delay_s": 0.01})
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/default", token=token)
            for _ in range(readers)
        )
    )
    elapsed = time.monotonic() - started
    for res in results:
        assert res.status == 200
        assert res.chunks == [(i, {"i": i}) for i in range(n)]
        assert res.done
    assert elapsed < 60


async def test_late_reader_far_behind_the_live_window_catches_up_from_the_store(
    http_tasks: HttpApi,
) -> None:
    # the replica keeps the newest few thousand records of a live stream for
    # its readers; one that joins 12k chunks late reads the rest by index
    n = 12_000
    run_id, token = await trigger(http_tasks, "http-emit", {"n": n, "hold_s": 4})
    path = f"/realtime/v1/streams/{run_id}/default"

    async def late() -> object:
        await asyncio.sleep(2.0)
        return await read_sse(http_tasks, path, token=token)

    early, late_res = await asyncio.gather(read_sse(http_tasks, path, token=token), late())
    for res in (early, late_res):
        assert [i for i, _ in res.chunks] == list(range(n))  # type: ignore[attr-defined]
        assert res.done  # type: ignore[attr-defined]


async def test_concurrent_http_appends_to_one_stream_are_each_stored_once(
    http_tasks: HttpApi,
) -> None:
    """Concurrent requests to one run and stream share the replica's appender
    (batched into few Ray calls): every chunk is stored, once, numbered by one
    writer of the replica (one `stream_writers` row, not one per request)."""
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    async with http_tasks.client() as c:

        async def post(i: int) -> int:
            r = await c.post(
                f"/realtime/v1/streams/{run_id}/self/burst/append",
                headers=http_tasks.headers(),
                content=f"chunk {i}",
            )
            return r.status_code

        statuses = await asyncio.gather(*(post(i) for i in range(100)))
    assert statuses == [200] * 100
    await rayflow.runs.cancel(run_id)
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/burst")
    assert [seq for seq, _ in res.chunks] == list(range(100))
    assert sorted(text for _, text in res.chunks) == sorted(f"chunk {i}" for i in range(100))
    writers = {
        w: n for (k, w), n in current().store.writer_positions(run_id).items() if k == "burst"
    }
    assert list(writers.values()) == [99], writers


async def test_a_reader_from_a_far_future_index_holds_back_no_other_reader(
    http_tasks: HttpApi,
) -> None:
    """A client whose Last-Event-ID names a chunk nobody wrote yet (up to
    2^53) comes first: the replica's shared subscription of the stream must
    not start there, or every later reader of the stream waits for chunks
    it would never deliver (until the reader's Timeout-Seconds)."""
    run_id, token = await trigger(http_tasks, "http-hold", {"hold_s": 120})
    await rayflow.streams.append("future", {"i": 0}, target=run_id)
    path = f"/realtime/v1/streams/{run_id}/future"
    hdrs = {"Accept": "text/event-stream", "Timeout-Seconds": "60", **http_tasks.headers(token)}
    far_future = {**hdrs, "Last-Event-ID": str(2**53 - 1)}
    connected = asyncio.Event()

    async def follow(result: SSEResult, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        async with client.stream("GET", path, headers=headers) as r:
            connected.set()
            async with aclosing(EventSource(r).aiter_sse()) as events:
                async for event in events:
                    result.events.append(event)

    ahead, reader = SSEResult(200, {}), SSEResult(200, {})
    async with (
        http_tasks.client(timeout=httpx.Timeout(90)) as c1,
        http_tasks.client(timeout=httpx.Timeout(90)) as c2,
    ):
        first = asyncio.create_task(follow(ahead, c1, far_future))
        await asyncio.wait_for(connected.wait(), 30)
        second = asyncio.create_task(follow(reader, c2, hdrs))
        await eventually_async(lambda: reader.chunks, what="the history chunk")
        for i in range(1, 4):
            await rayflow.streams.append("future", {"i": i}, target=run_id)
        # live, in well under the reader's Timeout-Seconds
        await eventually_async(
            lambda: len(reader.chunks) == 4, timeout_s=20, what="the live chunks"
        )
        await rayflow.runs.cancel(run_id)
        await asyncio.wait_for(asyncio.gather(first, second), 60)
    assert reader.chunks == [(i, {"i": i}) for i in range(4)]
    assert reader.done and ahead.done and ahead.chunks == []


async def test_a_replicas_window_of_a_stream_is_bounded_in_bytes(http_tasks: HttpApi) -> None:
    """The window a replica keeps of a live stream for its clients holds at
    most ~WINDOW_BYTES of chunk data however large the chunks (4,096 chunks
    of 1 MiB would be 4 GiB); a client behind it reads the Store."""
    from serve import fanout

    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 120})
    big = "x" * (1 << 20)
    n = 2 * fanout.WINDOW_BYTES // len(big) + 8
    for i in range(n):
        await rayflow.streams.append("big", f"{i}:{big}", target=run_id)
    source = fanout.HubSource(run_id, "big", 0)
    got: list[int] = []
    try:
        while len(got) < n:
            batch = await source.next_batch(30)
            got.extend(r.seq for r in batch.records)
            hub = source._hub
            assert hub is not None
            held = sum(len(r.data) for r in hub.records)
            assert held <= 2 * fanout.WINDOW_BYTES + len(big) + 64, held
        assert got == list(range(n))
        await eventually_async(lambda: hub.next_seq == n, what="the hub at the end")
        held = sum(len(r.data) for r in hub.records)
        assert held <= 2 * fanout.WINDOW_BYTES + len(big) + 64, held
    finally:
        await source.aclose()
        await rayflow.runs.cancel(run_id)
