"""Sending to input streams over HTTP (docs/wire.md), and reading their log back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, approval, read_sse, trigger, wait_finished

import rayflow
from rayflow import task
from rayflow._runtime.connection import current

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)

MiB = 1024 * 1024


def inbox(run_id: str, stream_id: str) -> list[str]:
    return [m.data for m in current().store.inbox_read(run_id, stream_id, 0, 10_000)]


async def send(
    api: HttpApi, run_id: str, stream_id: str, token: str | None = None, **kw: Any
) -> httpx.Response:
    async with api.client() as c:
        return await c.post(
            f"/realtime/v1/streams/{run_id}/input/{stream_id}",
            headers=api.headers(
                token, **{"Content-Type": "application/json", "Origin": "https://app.example"}
            ),
            **kw,
        )


async def test_send_with_the_run_token_reaches_the_waiting_task(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-approve", {"count": 2})
    for reviewer in ("alice", "bob"):
        r = await send(
            http_tasks,
            run_id,
            "approval",
            token,
            json={"data": {"approved": True, "reviewer": reviewer}},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True}
        assert r.headers["access-control-allow-origin"] == "https://app.example"
    run = await wait_finished(run_id)
    assert run.status == "COMPLETED", run.error
    assert run.output == {
        "received": [
            {"approved": True, "reviewer": "alice"},
            {"approved": True, "reviewer": "bob"},
        ]
    }


async def test_input_log_is_readable_as_sse(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    for i in range(3):
        r = await send(http_tasks, run_id, "notes", token, json={"data": {"n": i}})
        assert r.status_code == 200, r.text
    await rayflow.runs.cancel(run_id)
    res = await read_sse(http_tasks, f"/realtime/v1/streams/{run_id}/input/notes", token=token)
    assert res.status == 200
    assert res.chunks == [(0, {"n": 0}), (1, {"n": 1}), (2, {"n": 2})]
    assert res.done
    tail = await read_sse(
        http_tasks,
        f"/realtime/v1/streams/{run_id}/input/notes",
        token=token,
        headers={"Last-Event-ID": "1"},
    )
    assert tail.chunks == [(2, {"n": 2})]


async def test_send_to_an_unknown_run_is_404_run_not_found(http_tasks: HttpApi) -> None:
    r = await send(http_tasks, "run_nosuchrun", "approval", json={"data": {}})
    assert r.status_code == 404
    assert r.json()["ok"] is False and r.json()["error"] == "Run not found"
    assert r.headers["access-control-allow-origin"] == "https://app.example"


async def test_send_to_a_finished_run_is_400_and_stores_nothing(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-emit", {"n": 1})
    await wait_finished(run_id)
    r = await send(http_tasks, run_id, "approval", token, json={"data": {"late": True}})
    assert r.status_code == 400
    assert r.json() == {
        "ok": False,
        "error": "Cannot send to input stream on a completed run",
        "code": "RunFinished",
        "status": 400,
        "detail": r.json()["detail"],
        "runId": run_id,
        "stream": "approval",
    }
    assert run_id in r.json()["detail"]
    assert inbox(run_id, "approval") == []


@pytest.mark.parametrize(
    ("what", "kwargs", "status"),
    [
        ("missing data", {"json": {"payload": 1}}, 400),
        ("malformed JSON", {"content": b'{"data": '}, 422),
        ("not an object", {"content": b"[1, 2]"}, 422),
        ("over 1 MiB", {"json": {"data": "x" * (MiB + 10)}}, 413),
        ("over 1 MiB, chunked", {"content": "chunked"}, 413),
    ],
)
async def test_bad_send_is_refused_with_json_and_changes_nothing(
    http_tasks: HttpApi, what: str, kwargs: dict[str, object], status: int
) -> None:
    run_id, token = await trigger(http_tasks, "http-hold", {"hold_s": 120})
    if kwargs.get("content") == "chunked":
        # no Content-Length: the body is counted as it arrives and cut off

        async def body() -> AsyncIterator[bytes]:
            for part in (b'{"data": "', b"x" * (MiB + 10), b'"}'):
                yield part

        kwargs = {"content": body()}
    try:
        r = await send(http_tasks, run_id, "approval", token, **kwargs)
        assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
        body = r.json()
        assert body["ok"] is False and body["error"], what
        assert "Traceback" not in r.text
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert inbox(run_id, "approval") == [], f"{what} stored a message"
        assert (await rayflow.runs.retrieve(run_id)).status in ("QUEUED", "EXECUTING")
    finally:
        await rayflow.runs.cancel(run_id)


async def test_a_wrongly_typed_send_is_422_with_pydantics_error_and_stores_nothing(
    http_tasks: HttpApi,
) -> None:
    # http-approve receives on `approval` (an Approval model): registering the
    # task recorded that, so the edge checks the type before storing anything
    run_id, token = await trigger(http_tasks, "http-approve", {"count": 1, "timeout_s": 60})
    r = await send(http_tasks, run_id, "approval", token, json={"data": {"approved": "nope"}})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["ok"] is False and body["code"] == "ValidationError"
    assert "approved" in body["error"] and "reviewer" in body["error"]  # pydantic's message
    assert inbox(run_id, "approval") == []
    good = {"data": {"approved": True, "reviewer": "alice"}}
    assert (await send(http_tasks, run_id, "approval", token, json=good)).status_code == 200
    run = await wait_finished(run_id)
    assert run.status == "COMPLETED", run.error
    assert run.output == {"received": [{"approved": True, "reviewer": "alice"}]}


@task(id="http-typed-receive")
async def http_typed_receive(payload: dict) -> dict:  # type: ignore[type-arg]
    first = await approval.once(timeout_s=60)
    second = await approval.once(timeout_s=60)
    return {
        "first": {"ok": first.ok, "error": str(first.error)},
        "second": second.unwrap().model_dump(),
    }


async def test_a_message_that_no_longer_fits_is_a_failed_result_not_a_failed_run(
    http_tasks: HttpApi,
) -> None:
    # an untyped sender (or a type changed under a waiting run) gets a message
    # past the edge; the task's typed receive turns it into a failed Result
    await http_typed_receive.register()
    run_id, _ = await trigger(http_tasks, "http-typed-receive", {})
    await rayflow.streams.send(run_id, "approval", {"approved": "nope"})
    await approval.send(run_id, {"approved": False, "reviewer": "bob"})
    run = await wait_finished(run_id)
    assert run.status == "COMPLETED", run.error
    assert run.output["first"]["ok"] is False
    assert "does not fit Approval" in run.output["first"]["error"]
    assert run.output["second"] == {"approved": False, "reviewer": "bob"}
