"""Triggering and the runs API over HTTP; bad requests never reach the runtime."""

from __future__ import annotations

import json
import uuid

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, trigger, wait_finished

import rayflow

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)

MiB = 1024 * 1024


async def test_trigger_accepts_the_sdk_payload_encodings(http_tasks: HttpApi) -> None:
    bodies = [
        {"payload": {"n": 2, "key": "plain"}},
        {
            "payload": json.dumps({"json": {"n": 2, "key": "superjson"}}),
            "options": {"payloadType": "application/super+json"},
        },
        {
            "payload": json.dumps({"n": 2, "key": "json-string"}),
            "options": {"payloadType": "application/json"},
        },
    ]
    async with http_tasks.client() as c:
        for body in bodies:
            r = await c.post(
                "/api/v1/tasks/http-emit/trigger", headers=http_tasks.headers(), json=body
            )
            assert r.status_code == 200, r.text
            run = await wait_finished(r.json()["id"])
            assert run.status == "COMPLETED", run.error
            assert run.payload["n"] == 2 and run.payload["key"] in (
                "plain",
                "superjson",
                "json-string",
            )


async def test_trigger_with_an_idempotency_key_returns_the_same_run_cached(
    http_tasks: HttpApi,
) -> None:
    key = uuid.uuid4().hex
    body = {"payload": {"n": 1}, "options": {"idempotencyKey": key, "tags": ["a", "b"]}}
    async with http_tasks.client() as c:
        first = await c.post(
            "/api/v1/tasks/http-emit/trigger", headers=http_tasks.headers(), json=body
        )
        second = await c.post(
            "/api/v1/tasks/http-emit/trigger", headers=http_tasks.headers(), json=body
        )
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["isCached"] is False and second.json()["isCached"] is True


async def test_retrieve_list_and_cancel_in_trigger_dev_shapes(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 120})
    async with http_tasks.client() as c:
        got = (await c.get(f"/api/v3/runs/{run_id}", headers=http_tasks.headers())).json()
        assert got["id"] == run_id and got["taskIdentifier"] == "http-hold"
        assert got["status"] in ("QUEUED", "EXECUTING")
        assert got["isCompleted"] is False and got["payload"] == {"hold_s": 120}
        for field in ("createdAt", "updatedAt", "tags", "attemptCount", "relatedRuns"):
            assert field in got
        listed = await c.get(
            "/api/v1/runs",
            headers=http_tasks.headers(),
            params={"filter[taskIdentifier]": "http-hold", "page[size]": "100"},
        )
        assert listed.status_code == 200
        assert run_id in [r["id"] for r in listed.json()["data"]]
        assert all(r["taskIdentifier"] == "http-hold" for r in listed.json()["data"])
        canceled = await c.post(f"/api/v2/runs/{run_id}/cancel", headers=http_tasks.headers())
        assert canceled.json() == {"id": run_id}
        after = (await c.get(f"/api/v3/runs/{run_id}", headers=http_tasks.headers())).json()
        assert after["status"] == "CANCELED" and after["isCancelled"]
        # Trigger.dev's meaning (its SDK computes the same from the status):
        # a canceled run is finished but did not complete
        assert after["isCompleted"] is False and after["finishedAt"]
        done = await c.get(
            "/api/v1/runs",
            headers=http_tasks.headers(),
            params={"filter[status]": "CANCELED", "page[size]": "100"},
        )
        assert all(r["status"] == "CANCELED" for r in done.json()["data"])


@pytest.mark.parametrize(
    ("what", "method", "path", "kwargs", "status"),
    [
        ("malformed JSON", "POST", "/api/v1/tasks/http-emit/trigger", {"content": b"{"}, 422),
        ("wrong body type", "POST", "/api/v1/tasks/http-emit/trigger", {"json": [1]}, 422),
        (
            "bad payloadType",
            "POST",
            "/api/v1/tasks/http-emit/trigger",
            {"json": {"payload": "{", "options": {"payloadType": "application/json"}}},
            422,
        ),
        (
            "unknown task",
            "POST",
            "/api/v1/tasks/no-such-task/trigger",
            {"json": {"payload": {}}},
            404,
        ),
        (
            "body over 4 MiB",
            "POST",
            "/api/v1/tasks/http-emit/trigger",
            {"json": {"payload": "x" * (4 * MiB)}},
            413,
        ),
        ("unknown run", "GET", "/api/v3/runs/run_nosuchrun", {}, 404),
        ("cancel unknown run", "POST", "/api/v2/runs/run_nosuchrun/cancel", {}, 404),
        (
            "append to unknown run",
            "POST",
            "/realtime/v1/streams/run_nosuchrun/self/logs/append",
            {"content": b"x"},
            404,
        ),
        ("unknown route", "GET", "/api/v9/nothing", {}, 404),
        ("bad page size", "GET", "/api/v1/runs?page[size]=0", {}, 422),
    ],
)
async def test_bad_request_gets_json_error_with_cors_and_starts_nothing(
    http_tasks: HttpApi, what: str, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    before = len(await rayflow.runs.list(limit=1000))
    headers = http_tasks.headers(**{"Origin": "https://app.example"})
    if "content" in kwargs:
        headers["Content-Type"] = "application/json"
    async with http_tasks.client() as c:
        r = await c.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
    body = r.json()
    assert body["ok"] is False and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert len(await rayflow.runs.list(limit=1000)) == before, f"{what} created a run"


async def test_append_limits_and_finished_runs(http_tasks: HttpApi) -> None:
    run_id, _ = await trigger(http_tasks, "http-emit", {"n": 1})
    await wait_finished(run_id)
    async with http_tasks.client() as c:
        big = await c.post(
            f"/realtime/v1/streams/{run_id}/self/logs/append",
            headers=http_tasks.headers(),
            content=b"x" * (512 * 1024 + 1),
        )
        assert big.status_code == 413
        finished = await c.post(
            f"/realtime/v1/streams/{run_id}/self/logs/append",
            headers=http_tasks.headers(),
            content=b"late",
        )
        assert finished.status_code == 400 and finished.json()["code"] == "RunFinished"


async def test_cors_preflight_allows_the_realtime_headers(http_tasks: HttpApi) -> None:
    async with http_tasks.client() as c:
        r = await c.options(
            "/realtime/v1/streams/run_x/input/approval",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, x-custom",
            },
        )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    allowed = r.headers["access-control-allow-headers"].lower()
    for name in ("authorization", "content-type", "x-custom"):
        assert name in allowed
    assert "POST" in r.headers["access-control-allow-methods"]


async def test_openapi_document_lists_the_wire_endpoints(http_tasks: HttpApi) -> None:
    async with http_tasks.client() as c:
        doc = (await c.get("/openapi.json")).json()
        assert (await c.get("/docs")).status_code == 200
    paths = doc["paths"]
    for path in (
        "/api/v1/tasks/{task_id}/trigger",
        "/api/v3/runs/{run_id}",
        "/realtime/v1/streams/{run_id}/{key}",
        "/realtime/v1/streams/{run_id}/input/{stream_id}",
        "/realtime/v1/streams/{run_id}/{target}/{key}/append",
    ):
        assert path in paths
    assert "SendInputBody" in json.dumps(doc["components"])
    # who may call: the bearer scheme, declared on the authenticated routes
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    read = doc["paths"]["/realtime/v1/streams/{run_id}/{key}"]["get"]
    assert read["security"] == [{"bearer": []}]


async def test_the_http_app_listens_on_loopback_only(http_tasks: HttpApi) -> None:
    import psutil
    import ray

    node = ray._private.worker._global_node
    raylet = [p.process.pid for p in node.all_processes.get("raylet", [])]
    assert raylet, "no raylet found for this Ray session"
    serve_procs = [
        p
        for p in psutil.Process(raylet[0]).children(recursive=True)
        if p.name().startswith(("ray::Serve", "ray::ProxyActor"))
    ]
    assert serve_procs, "no Serve processes found"
    for proc in serve_procs:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                assert conn.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), (
                    f"{proc.name()} (pid {proc.pid}) listens on {conn.laddr}"
                )


async def test_an_error_about_a_run_names_the_run_and_stream_in_its_body(
    http_tasks: HttpApi,
) -> None:
    """A client can tell which run (and stream) a refusal concerns from the JSON
    body alone: `runId` and `stream` beside `error` and `code`."""
    run_id, _ = await trigger(http_tasks, "http-emit", {"n": 1})
    await wait_finished(run_id)
    key = uuid.uuid4().hex
    trigger_path = "/api/v1/tasks/http-emit/trigger"
    async with http_tasks.client() as c:
        h = http_tasks.headers()
        unknown = [
            await c.get("/api/v3/runs/run_nosuchrun", headers=h),
            await c.post("/api/v2/runs/run_nosuchrun/cancel", headers=h),
            await c.post("/rayflow/v1/runs/run_nosuchrun/tokens", headers=h),
        ]
        unknown_input = await c.post(
            "/realtime/v1/streams/run_nosuchrun/input/approval", headers=h, json={"data": {}}
        )
        finished_append = await c.post(
            f"/realtime/v1/streams/{run_id}/self/logs/append", headers=h, content=b"late"
        )
        finished_writer = await c.put(f"/realtime/v1/streams/{run_id}/self/logs", headers=h)
        finished_input = await c.post(
            f"/realtime/v1/streams/{run_id}/input/notes", headers=h, json={"data": {}}
        )
        first = await c.post(
            trigger_path, headers=h, json={"payload": {"n": 1}, "options": {"idempotencyKey": key}}
        )
        conflict = await c.post(
            trigger_path, headers=h, json={"payload": {"n": 2}, "options": {"idempotencyKey": key}}
        )

    for r in unknown:
        assert (r.status_code, r.json()["code"]) == (404, "RunNotFound"), r.text
        assert r.json()["runId"] == "run_nosuchrun" and "stream" not in r.json()
    assert unknown_input.status_code == 404, unknown_input.text
    assert unknown_input.json()["error"] == "Run not found"
    assert (unknown_input.json()["runId"], unknown_input.json()["stream"]) == (
        "run_nosuchrun",
        "approval",
    )
    for r, stream in [(finished_append, "logs"), (finished_writer, "logs")]:
        assert (r.status_code, r.json()["code"]) == (400, "RunFinished"), r.text
        assert (r.json()["runId"], r.json()["stream"]) == (run_id, stream)
    assert finished_input.status_code == 400, finished_input.text
    assert (finished_input.json()["runId"], finished_input.json()["stream"]) == (run_id, "notes")
    # a key reused with another payload: the 409 names the run the key already has
    assert first.status_code == 200, first.text
    assert (conflict.status_code, conflict.json()["code"]) == (409, "IdempotencyConflict")
    assert conflict.json()["runId"] == first.json()["id"]
