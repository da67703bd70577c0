"""Reading output streams over SSE from the real Serve app (WIRE.md)."""

from __future__ import annotations

import json

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, read_sse, trigger, wait_finished

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)


async def test_sse_read_from_start_gets_every_chunk_then_done(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-emit", {"n": 50})
    await wait_finished(run_id)
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/default")
    assert res.status == 200
    assert res.headers["content-type"].startswith("text/event-stream")
    assert res.headers["x-stream-version"] == "v2"
    run = await wait_finished(run_id)
    assert res.chunks == [(i, {"i": i}) for i in range(50)], (run.error, res.body[:300])
    assert res.done
    assert res.events[-1].data == "[DONE]"
    # many records per batch event, and the event id is the last seq_num in it
    batches = [ev for ev in res.events if ev.event == "batch"]
    assert len(batches) < 50
    for ev in batches:
        assert int(ev.id) == json.loads(ev.data)["records"][-1]["seq_num"]
