"""Malformed and oversized input over HTTP (issue 20, items 12 and 16): each
is a 400 (or a 413 for size) naming the parameter, never a 500, and nothing
is stored. Trigger.dev's limits hold: at most 10 tags of 1-128 characters,
metadata of at most 256 KiB."""

from __future__ import annotations

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, trigger

import rayflow
from rayflow._runtime.connection import current

pytestmark = pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True)

HUGE = "9" * 5000  # past Python's 4,300-digit limit of int()


async def test_huge_digit_strings_are_400_naming_the_parameter(http_tasks: HttpApi) -> None:
    run_id, token = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    h = http_tasks.headers()
    sse = {**h, "Timeout-Seconds": "1"}
    async with http_tasks.client() as c:
        cases = {
            "page[after]": await c.get(
                "/api/v1/runs", headers=h, params={"page[after]": HUGE + ":run_x"}
            ),
            "offset": await c.get(
                f"/realtime/v1/runs/{run_id}", headers=h, params={"offset": HUGE + "_1"}
            ),
            "Timeout-Seconds": await c.get(
                f"/realtime/v1/streams/{run_id}/k", headers={**h, "Timeout-Seconds": HUGE}
            ),
            "Last-Event-ID": await c.get(
                f"/realtime/v1/streams/{run_id}/k", headers={**sse, "Last-Event-ID": HUGE}
            ),
            "X-Resume-From-Chunk": await c.post(
                f"/realtime/v1/streams/{run_id}/self/k",
                headers={**h, "X-Resume-From-Chunk": HUGE, "X-Client-Id": "w"},
                content=b'{"a": 1}\n',
            ),
            "createdAt": await c.get(
                "/realtime/v1/runs", headers=h, params={"tags": "t", "createdAt": HUGE + "-01-01"}
            ),
            "expirationTime": await c.post(
                "/api/v1/auth/public-tokens",
                headers=h,
                json={"scopes": ["read:runs"], "expirationTime": HUGE + "s"},
            ),
            "streamId": await c.post(
                f"/realtime/v1/streams/{run_id}/input/{HUGE}", headers=h, json={"data": 1}
            ),
            # a digit `str.isdigit` takes and `int` refuses
            "Timeout-Seconds ²": await c.get(
                f"/realtime/v1/streams/{run_id}/k", headers={**h, "Timeout-Seconds": "²".encode()}
            ),
        }
        # a period of 5,000 digits is longer than time: every run (as a 30-digit one)
        period = await c.get(
            "/realtime/v1/runs", headers=h, params={"tags": "t", "createdAt": HUGE + "s"}
        )
    for name, r in cases.items():
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        body = r.json()
        assert name.split()[0] in body["error"], (name, body)
    assert period.status_code == 200, period.text[:300]
    await rayflow.runs.cancel(run_id)


async def test_a_tag_filter_longer_than_a_runs_tags_is_400(http_tasks: HttpApi) -> None:
    tags = ",".join(f"t{i}" for i in range(1200))
    h = http_tasks.headers()
    async with http_tasks.client() as c:
        listed = await c.get("/api/v1/runs", headers=h, params={"filter[tag]": tags})
        live = await c.get("/realtime/v1/runs", headers=h, params={"tags": tags})
        long_tag = await c.get("/api/v1/runs", headers=h, params={"filter[tag]": "x" * 129})
        ten = await c.get("/api/v1/runs", headers=h, params={"filter[tag]": tags[:29]})
    assert listed.status_code == 400 and "filter[tag]" in listed.json()["error"], listed.text
    assert live.status_code == 400 and "tags" in live.json()["error"], live.text
    assert long_tag.status_code == 400 and "filter[tag]" in long_tag.json()["error"]
    assert ten.status_code == 200, ten.text


async def test_trigger_time_tags_and_metadata_keep_trigger_devs_limits(
    http_tasks: HttpApi,
) -> None:
    before = len(current().store.list_runs(limit=1000))
    path = "/api/v1/tasks/http-emit/trigger"
    h = http_tasks.headers()
    big = {"blob": "x" * (256 * 1024)}
    async with http_tasks.client() as c:
        too_many = await c.post(
            path,
            headers=h,
            json={"payload": {"n": 0}, "options": {"tags": [f"t{i}" for i in range(11)]}},
        )
        too_long = await c.post(
            path, headers=h, json={"payload": {"n": 0}, "options": {"tags": ["x" * 129]}}
        )
        empty = await c.post(path, headers=h, json={"payload": {"n": 0}, "options": {"tags": [""]}})
        heavy = await c.post(
            path, headers=h, json={"payload": {"n": 0}, "options": {"metadata": big}}
        )
        batch = await c.post(
            "/api/v1/tasks/http-emit/batch",
            headers=h,
            json={
                "items": [
                    {"payload": {"n": 0}},
                    {"payload": {"n": 0}, "options": {"tags": [f"t{i}" for i in range(11)]}},
                ]
            },
        )
        fits = await c.post(
            path,
            headers=h,
            json={
                "payload": {"n": 0},
                "options": {
                    "tags": [f"t{i}" for i in range(9)] + ["x" * 128],
                    "metadata": {"blob": "x" * (200 * 1024)},
                },
            },
        )
    for r in (too_many, too_long, empty, batch):
        assert r.status_code == 400, r.text[:300]
        assert "options.tags" in r.json()["error"], r.text[:300]
    assert "batch item 1" in batch.json()["error"]
    assert heavy.status_code == 413, heavy.text[:300]
    assert "options.metadata" in heavy.json()["error"] and "256 KiB" in heavy.json()["error"]
    assert fits.status_code == 200, fits.text[:300]
    assert len(current().store.list_runs(limit=1000)) == before + 1
