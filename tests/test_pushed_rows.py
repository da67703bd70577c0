"""Writers outside a run push their commits' rows straight to the processes
following it (issue 23: `push_inbox`, `push_outbox`): one process crossing
after the commit instead of two through the RunActor, which still carries
every chunk. Whichever way a chunk comes first, every reader gets every
chunk once, in the Store's order — beside the run's own writes and other
writers' commits (the gaps a push cannot fill), and with a follower that
does not listen."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import ray
from _http_fixtures import HttpApi
from _http_fixtures import http_api as http_api  # the fixture
from _outside_writers import outside_writers
from conftest import eventually_async
from httpx_sse import EventSource

import rayflow
from rayflow import streams, task
from rayflow._runtime import push_inbox, push_outbox
from rayflow._runtime.reader import ChunkReader

mix = streams.define("pr-mix", str)
done = streams.input("pr-done", dict)


@task(id="pr-writer")
async def writer(payload: dict) -> str:  # type: ignore[type-arg]
    """Writes its own chunks among the outside writers' ones, then waits to
    be told to finish."""
    for i in range(payload["n"]):
        await mix.append(f"in{i}")
        await asyncio.sleep(0.01)
    await done.once(timeout_s=300)
    return "done"


async def read_sse(api: HttpApi, run_id: str, first: asyncio.Event) -> list[str]:
    got: list[str] = []
    headers = {"Accept": "text/event-stream", **api.headers()}
    async with (
        api.client(timeout=httpx.Timeout(60)) as c,
        c.stream("GET", f"/realtime/v1/streams/{run_id}/{mix.id}", headers=headers) as r,
    ):
        assert r.status_code == 200, (await r.aread()).decode()
        async with aclosing(EventSource(r).aiter_sse()) as events:
            async for ev in events:
                if ev.data == "[DONE]":
                    return got
                if ev.event == "batch":
                    for rec in json.loads(ev.data)["records"]:
                        assert rec["seq_num"] == len(got), (rec["seq_num"], len(got))
                        got.append(json.loads(rec["body"])["data"])
                        first.set()
    raise AssertionError("the SSE stream ended without [DONE]")


async def read_pushed(run_id: str, first: asyncio.Event) -> list[str]:
    """A reader in this process that takes pushed rows, as a replica's hubs do."""
    got: list[str] = []
    async with aclosing(ChunkReader(run_id, mix.id, 0, timeout_s=60, pushed=True).batches()) as b:
        async for rows in b:
            assert [r[0] for r in rows] == list(range(len(got), len(got) + len(rows)))
            got += [json.loads(r[1]) for r in rows]
            first.set()
    return got


async def test_pushed_and_relayed_rows_reach_each_reader_once_in_order(
    rf: Any, http_api: HttpApi
) -> None:
    with outside_writers(rf, 2) as writers:
        handle = await writer.trigger({"n": 60})

        async def executing() -> bool:
            return (await rayflow.runs.retrieve(handle.id)).status == "EXECUTING"

        await eventually_async(executing, timeout_s=60, what="run executing")
        await mix.append("start", target=handle.id)
        taken_before = push_inbox.taken
        seen = [asyncio.Event(), asyncio.Event()]
        readers = [
            asyncio.create_task(read_sse(http_api, handle.id, seen[0])),
            asyncio.create_task(read_pushed(handle.id, seen[1])),
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in seen)), 30)
        # this process writes too, told of a follower that does not listen:
        # its commits are acknowledged and read all the same
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        node = ray.get_runtime_context().get_node_id()
        push_outbox.learn({handle.id: [(node, dead_port, secrets.token_hex(16))]})

        async def mine() -> None:
            for i in range(60):
                await mix.append(f"D{i}", target=handle.id)
                await asyncio.sleep(0.01)

        values = {name: [f"{name}{i}" for i in range(150)] for name in "AB"}
        written = await asyncio.gather(
            *(
                w.append.remote(handle.id, mix.id, values[name], pause_s=0.01)
                for name, w in zip("AB", writers, strict=True)
            ),
            mine(),
        )
        for acknowledged, refused in written[:2]:
            assert len(acknowledged) == 150 and not refused, refused
        pushed = [await w.pushed_frames.remote() for w in writers]
        await done.send(handle.id, {})
        assert (await rayflow.runs.wait(handle.id)).status == "COMPLETED"
        by_sse, by_push = await asyncio.wait_for(asyncio.gather(*readers), 60)

    # the writer processes end with their block (they used to live on for the session)
    for w in writers:
        with pytest.raises(ray.exceptions.RayActorError):
            await asyncio.wait_for(w.pid.remote(), 30)
    here = push_inbox._inboxes.pop(asyncio.get_running_loop(), None)
    if here is not None:  # this test's loop ends with the test
        here.close()
    stored = [x async for x in mix.read(handle.id, timeout_s=1)]
    assert len(stored) == 1 + 60 + 300 + 60
    for name, n in (("in", 60), ("A", 150), ("B", 150), ("D", 60)):
        assert [x for x in stored if x[: len(name)] == name and x[len(name)].isdigit()] == [
            f"{name}{i}" for i in range(n)
        ]
    assert by_sse == stored
    assert by_push == stored
    # the outside writers pushed to the readers' processes (the replica, this
    # one), and this process's reader took some of its rows that way
    assert all(n > 0 for n in pushed), pushed
    assert push_inbox.taken > taken_before


@pytest.mark.usefixtures("ray_cluster")
async def test_an_inbox_takes_frames_only_from_writers_that_know_its_token() -> None:
    """A connection without the inbox's token, or that sends what no writer
    sends, is closed and its frames dropped; a writer's frames are taken."""
    delivered: list[tuple[str, str, list[Any]]] = []

    def deliver(run_id: str, key: str, rows: list[Any]) -> int:
        delivered.append((run_id, key, rows))
        return len(rows)

    inbox = push_inbox.Inbox(deliver)
    address = await inbox.start()
    assert address is not None and address[2] == inbox.token
    good = [["run_x", "k", [[0, '"a"', 1, None], [1, '"b"', 2, "rec"]]]]

    def frame(body: Any) -> bytes:
        data = json.dumps(body).encode()
        return push_inbox.HEADER.pack(len(data)) + data

    async def send(data: bytes) -> bytes:
        """What the inbox answers before it closes (b"": it closed)."""
        reader, w = await asyncio.open_connection("127.0.0.1", address[1])
        w.write(data)
        await w.drain()
        try:
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            w.close()

    try:
        assert await send(b"0" * len(inbox.token) + frame(good)) == b""
        # a frame with one bad row: none of it is delivered
        bad = good + [["run_y", "k", [[0, 1, 2, None]]]]
        assert await send(inbox.token.encode() + frame(bad)) == b""
        too_long = push_inbox.HEADER.pack(push_inbox.MAX_FRAME + 1)
        assert await send(inbox.token.encode() + too_long) == b""
        assert delivered == []
        reader, w = await asyncio.open_connection("127.0.0.1", address[1])
        w.write(inbox.token.encode() + frame(good) + frame(good))
        await w.drain()
        await eventually_async(lambda: len(delivered) == 2, what="two frames taken")
        assert delivered[0] == ("run_x", "k", [(0, '"a"', 1, None), (1, '"b"', 2, "rec")])
        w.close()
    finally:
        inbox.close()
