"""A Durable Streams append is sent to the change feed (a Ray call to the
RunEvents actor) only while a reader follows its stream
(rayflow/_runtime/named_signals.py), and a reader in another process is
still woken by it: no lost wake-up.

The writer is this test's process (a leased write, as the endpoint's POST
makes, committed here), the reader a long poll over HTTP in the Serve
replica: the reader takes a follow lease before it waits, so the commit
after it tells the replica through the feed. Without the lease the long poll
would answer 204 after `durable_streams_long_poll_s`; without the skip the
unfollowed commit would show up in the feed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi
from conftest import eventually

from rayflow._runtime import connection, named_appender, run_events
from rayflow._runtime.named_signals import feed_key
from rayflow.store.named import NamedWrite

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)


async def _feed_until(events: Any, after: int, key: str) -> tuple[int, list[str]]:
    """The feed's keys after `after` up to the poll where `key` shows up."""
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seq, changed = await events.wait.remote(after, 1.0)
        assert changed is not None, "the change feed was reset during the test"
        seen += changed
        after = seq
        if key in changed:
            return seq, seen
    pytest.fail(f"{key} never reached the change feed; it saw {seen[-20:]}")


async def test_an_append_tells_other_processes_only_while_a_reader_follows_its_stream(
    http_api: HttpApi, rf: Any
) -> None:
    name = f"follow-{uuid.uuid4().hex[:8]}"
    stream, marker = f"ds/{name}", f"ds/{name}-marker"
    url = f"/durable-streams/v1/stream/{name}"
    events = run_events.handle(rf.namespace)
    json_type = {"Content-Type": "application/json"}

    async def append(path: str, n: int, leased: bool) -> None:
        message = json.dumps({"n": n}).encode()
        write = NamedWrite(path, [message], "application/json", leased=leased)
        result = await named_appender.write(write)
        assert result.outcome.value == "ok", result

    async with http_api.client() as c:
        before, _ = await events.wait.remote(-1, 0)
        for path in (url, url + "-marker"):
            put = await c.put(path, headers=http_api.headers(**json_type))
            assert put.status_code == 201, put.text
        # creating tells the feed, always (in order): start after both got there
        seq0, _ = await _feed_until(events, before, feed_key(marker))

        # nobody follows the stream: its commit wakes no other process
        await append(stream, 0, leased=True)
        await append(marker, 0, leased=False)  # always told; after the first, in order
        _, seen = await _feed_until(events, seq0, feed_key(marker))
        assert feed_key(stream) not in seen, seen

        # a reader in the replica waits for the next message: it leases the
        # stream first, so this process's commit is told and wakes it
        head = await c.head(url, headers=http_api.headers())
        offset = head.headers["Stream-Next-Offset"]
        poll = asyncio.ensure_future(
            c.get(url, params={"offset": offset, "live": "long-poll"}, headers=http_api.headers())
        )
        store = connection.current().store

        def leased() -> bool:
            info = store.named_info(stream)
            return info is not None and info.followed_until is not None

        await asyncio.to_thread(eventually, leased, what="the long poll's follow lease")
        assert not poll.done()
        seq1, _ = await events.wait.remote(-1, 0)
        await append(stream, 1, leased=True)
        answer = await poll
        assert answer.status_code == 200, (answer.status_code, answer.headers)
        assert answer.json() == [{"n": 1}]
        await _feed_until(events, seq1, feed_key(stream))
