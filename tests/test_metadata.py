"""Run metadata (`rayflow.metadata`) and tags: set inside a task, durable,
the same after a replay, visible in runs.retrieve, over HTTP and in run
subscriptions; runs filtered by tag."""

from __future__ import annotations

import json
import uuid

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi
from conftest import eventually

import rayflow
from rayflow import errors, metadata, streams, task

pytestmark = pytest.mark.usefixtures("rf")

resume = streams.input("metadata-resume", dict)


@task(id="metadata-steps")
async def metadata_steps(payload: dict) -> dict:  # type: ignore[type-arg]
    metadata.set("stage", "start")
    metadata.increment("count")
    metadata.append("log", "one")
    await metadata.flush()
    await resume.wait(timeout="120s")  # suspends: the run replays from the top on revival
    metadata.increment("count", 2)
    metadata.append("log", "two")
    metadata.decrement("count", 0.5)
    metadata.set("stage", "done")
    metadata.delete("scratch")
    return {"seen": metadata.current()}


@task(id="metadata-bad")
async def metadata_bad(payload: dict) -> str:  # type: ignore[type-arg]
    metadata.set("word", "x")
    try:
        metadata.increment("word")
    except errors.ValidationError as e:
        return str(e)
    return "no error"


def test_metadata_is_durable_visible_and_the_same_after_a_replay() -> None:
    handle = metadata_steps.trigger({}, metadata={"scratch": 1, "owner": "t"}).result()

    def waiting() -> rayflow.Run | None:
        run = rayflow.runs.retrieve(handle.id).result()
        return run if run.status == "WAITING" else None

    run = eventually(waiting, what="the run to suspend")
    assert run.metadata == {
        "scratch": 1,
        "owner": "t",
        "stage": "start",
        "count": 1,
        "log": ["one"],
    }
    resume.send(handle.id, {}).result()
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert run.status == "COMPLETED", run.error
    # the revived run replayed `increment("count")` and `append("log", "one")`:
    # rebuilt, not applied twice
    expected = {"owner": "t", "stage": "done", "count": 2.5, "log": ["one", "two"]}
    assert run.metadata == expected
    assert run.output == {"seen": expected}


nudge = streams.input("metadata-nudge", int)
carry_on = streams.input("metadata-carry-on", dict)


@task(id="metadata-in-handler")
async def metadata_in_handler(payload: dict) -> dict:  # type: ignore[type-arg]
    metadata.set("main", 1)
    await metadata.flush()
    nudge.on(lambda n: metadata.set("from_handler", n))
    (await carry_on.once(timeout_s=120)).unwrap()
    metadata.set("main2", 2)
    return metadata.current()


def test_metadata_set_in_an_on_handler_is_the_runs_metadata() -> None:
    """A handler's metadata joins the task's: neither overwrites the other."""
    handle = metadata_in_handler.trigger({}, metadata={"given": "t"}).result()

    def stored() -> dict:  # type: ignore[type-arg]
        return rayflow.runs.retrieve(handle.id).result().metadata

    eventually(lambda: stored().get("main") == 1, what="the task's metadata stored")
    nudge.send(handle.id, 7).result()
    after_handler = eventually(
        lambda: (m := stored()).get("from_handler") == 7 and m, what="the handler's metadata"
    )
    assert after_handler == {"given": "t", "main": 1, "from_handler": 7}
    carry_on.send(handle.id, {}).result()
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    expected = {"given": "t", "main": 1, "from_handler": 7, "main2": 2}
    assert run.status == "COMPLETED", run.error
    assert run.output == expected
    assert run.metadata == expected


def test_metadata_rejects_what_it_cannot_hold() -> None:
    handle = metadata_bad.trigger({}).result()
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert "not a number" in run.output
    with pytest.raises(errors.OutsideTask):
        metadata.set("k", 1)


def test_runs_list_filters_by_tag() -> None:
    tag = f"tag-{uuid.uuid4().hex[:8]}"
    both = metadata_bad.trigger({}, tags=[tag, "both"]).result()
    one = metadata_bad.trigger({}, tags=[tag]).result()
    metadata_bad.trigger({}, tags=[tag.upper()]).result()
    assert {r.id for r in rayflow.runs.list(tag=tag).result()} == {both.id, one.id}
    assert [r.id for r in rayflow.runs.list(tag=[tag, "both"]).result()] == [both.id]


@pytest.mark.parametrize("rf", ["sqlite"], indirect=True)
async def test_metadata_and_tags_over_http(http_tasks: HttpApi) -> None:
    await metadata_steps.register()
    tag = f"h-{uuid.uuid4().hex[:8]}"
    body = {"payload": {}, "options": {"tags": [tag], "metadata": {"from": "http"}}}
    async with http_tasks.client() as c:
        r = await c.post(
            "/api/v1/tasks/metadata-steps/trigger", headers=http_tasks.headers(), json=body
        )
        run_id, token = r.json()["id"], r.headers["x-trigger-jwt"]
        run = await c.get(f"/api/v3/runs/{run_id}", headers=http_tasks.headers(token))
        assert run.json()["metadata"]["from"] == "http"
        listed = await c.get(
            "/api/v1/runs", params={"filter[tag]": tag}, headers=http_tasks.headers()
        )
        assert [d["id"] for d in listed.json()["data"]] == [run_id]

        async def row_metadata() -> dict | None:  # type: ignore[type-arg]
            shape = await c.get(f"/realtime/v1/runs/{run_id}", headers=http_tasks.headers(token))
            row = shape.json()[0]["value"]
            value = json.loads(row["metadata"]) if row["metadata"] else {}
            return value if value.get("stage") == "start" else None

        from conftest import eventually_async

        value = await eventually_async(row_metadata, what="metadata in the subscription row")
        assert value["from"] == "http" and value["count"] == 1
        await resume.send(run_id, {})
