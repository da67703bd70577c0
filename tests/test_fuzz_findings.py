"""What the API fuzzer (tests/test_fuzz_api.py) found, each pinned by a test
that fails on the code before its fix (docs/fuzzing.md lists them)."""

from __future__ import annotations

import json

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, trigger

import rayflow
from rayflow._runtime.connection import current

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)


async def test_a_negative_max_duration_is_422_and_creates_no_run(http_tasks: HttpApi) -> None:
    """Found by the fuzzer: `options.maxDuration: -1` reached the runtime's
    duration parser and came back as a 500."""
    store = current().store
    newest = [r.id for r in store.list_runs(limit=1)]
    for path, body in (
        ("/api/v1/tasks/http-hold/trigger", {"payload": {}, "options": {"maxDuration": -1}}),
        ("/api/v1/tasks/http-hold/batch", {"items": [{"options": {"maxDuration": -5}}]}),
    ):
        async with http_tasks.client() as c:
            r = await c.post(path, headers=http_tasks.headers(), json=body)
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "ValidationError" and "maxDuration" in r.json()["error"]
    assert [r.id for r in store.list_runs(limit=1)] == newest


async def test_the_openapi_document_describes_errors_events_and_links(
    http_tasks: HttpApi,
) -> None:
    """Found by the fuzzer's conformance checks: the document promised
    FastAPI's `{"detail": [...]}` for a 422 (rayflow sends its error body),
    text/plain errors for types.ts, a JSON body on HEAD, and SSE events as
    plain strings."""
    async with http_tasks.client() as c:
        doc = (await c.get("/openapi.json")).json()
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert responses["4XX"]["content"] == error, (method, path)
            assert "HTTPValidationError" not in json.dumps(responses), (method, path)
            if method == "head":
                assert "content" not in responses["200"], path
    sse = doc["paths"]["/realtime/v1/streams/{run_id}/{key}"]["get"]["responses"]["200"]
    event = sse["content"]["text/event-stream"]["schema"]
    assert event["type"] == "object" and "data" in event["properties"]
    trigger_links = doc["paths"]["/api/v1/tasks/{task_id}/trigger"]["post"]["responses"]["200"][
        "links"
    ]
    linked = {link["operationId"] for link in trigger_links.values()}
    on_a_run = {
        op["operationId"]
        for path, ops in doc["paths"].items()
        if "{run_id}" in path
        for op in ops.values()
    }
    assert linked == on_a_run and len(linked) >= 10


BIG = "9" * 30  # past any 64-bit integer


async def test_numbers_past_64_bits_are_400_not_500(http_tasks: HttpApi) -> None:
    """Found probing what the fuzzer's strings do not reach: a 30-digit
    cursor, `Last-Event-ID` or `X-Resume-From-Chunk` overflowed the Store's
    integers (500, or an SSE body cut off after its 200)."""
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    before = current().store.list_streams(run_id)
    h = http_tasks.headers()
    sse = {**h, "Timeout-Seconds": "1", "Last-Event-ID": BIG}
    async with http_tasks.client() as c:
        answers = [
            await c.get("/api/v1/runs", headers=h, params={"page[after]": BIG + ":run_x"}),
            await c.get(f"/realtime/v1/streams/{run_id}/k", headers=sse),
            await c.get(f"/realtime/v1/streams/{run_id}/input/approval", headers=sse),
            await c.post(
                f"/realtime/v1/streams/{run_id}/self/k",
                headers={**h, "X-Resume-From-Chunk": BIG, "X-Client-Id": "w"},
                content=b'{"a": 1}\n',
            ),
        ]
        period = await c.get(
            "/realtime/v1/runs", headers=h, params={"tags": "t", "createdAt": BIG + "d"}
        )
    for r in answers:
        assert r.status_code == 400, (r.request.url, r.text)
        body = r.json()
        assert body["code"] == "BadRequest", body
        assert any(w in body["error"] for w in ("below", "cursor", "whole number")), body
    assert period.status_code == 200, period.text  # a period longer than time: every run
    assert current().store.list_streams(run_id) == before
    await rayflow.runs.cancel(run_id)


async def test_nan_and_infinity_are_refused_wherever_json_comes_in(http_tasks: HttpApi) -> None:
    """Found probing: Python's JSON parser takes NaN and 1e999 (Infinity);
    stored in a payload, metadata or input message they break every
    JavaScript reader of the run (the NDJSON writer already refused them)."""
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    store = current().store
    newest = [r.id for r in store.list_runs(limit=1)]
    h = {**http_tasks.headers(), "Content-Type": "application/json"}
    bodies = [
        ("/api/v1/tasks/http-hold/trigger", b'{"payload": {"x": NaN}}'),
        ("/api/v1/tasks/http-hold/trigger", b'{"payload": [1e999]}'),
        (
            "/api/v1/tasks/http-hold/trigger",
            b'{"payload": 1, "options": {"metadata": {"m": -Infinity}}}',
        ),
        (
            "/api/v1/tasks/http-hold/trigger",
            b'{"payload": "{\\"x\\": NaN}", "options": {"payloadType": "application/json"}}',
        ),
        ("/api/v1/tasks/http-hold/batch", b'{"items": [{"payload": {"x": NaN}}]}'),
        (f"/realtime/v1/streams/{run_id}/input/notes", b'{"data": {"x": NaN}}'),
        (f"/realtime/v1/streams/{run_id}/input/notes", b'{"data": 1e999}'),
    ]
    async with http_tasks.client() as c:
        for path, body in bodies:
            r = await c.post(path, headers=h, content=body)
            assert r.status_code == 422, (path, body, r.text)
            assert r.json()["code"] == "ValidationError" and "not JSON" in r.json()["error"]
    assert [r.id for r in store.list_runs(limit=1)] == newest
    assert store.inbox_usage(run_id) == {}
    await rayflow.runs.cancel(run_id)
