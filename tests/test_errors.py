"""One error tree: every error a user meets is a `rayflow.errors.RayflowError`
that names its run and stream and survives a trip through Ray."""

from __future__ import annotations

import pickle
import uuid
from typing import Any

import pytest

import rayflow
from rayflow import errors, streams, task

pytestmark = pytest.mark.usefixtures("rf")

notes = streams.input("notes", str)
out = streams.define("out", str)


@task(id="errors-parentless")
async def parentless(payload: dict) -> str:
    try:
        await out.append("x", target="parent")
    except errors.NoParentRun as e:
        return f"{type(e).__name__}:{e.run_id}"
    return "appended"


@task(id="errors-closed-stream")
async def write_after_close(payload: dict) -> str:
    await out.append("first")
    await out.close()
    try:
        await out.append("late")
    except errors.StreamClosed as e:
        return f"{type(e).__name__}:{e.run_id}:{e.stream}"
    return "appended"


@task(id="errors-quick")
async def quick(payload: dict) -> int:
    return 1


def test_every_public_error_is_a_rayflow_error_with_a_status() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.RayflowError), name
        assert 400 <= cls.http_status < 600, name
    # the builtins they replace still catch them
    assert issubclass(errors.InvalidArgument, ValueError)
    assert issubclass(errors.Unavailable, ConnectionError)


@pytest.mark.parametrize(
    "error",
    [
        errors.RunFinished("m", run_id="run_a", stream="s", status="COMPLETED"),
        errors.StreamTooLarge("m", run_id="run_a", stream="k", size=11, limit=10),
        errors.RunFailed("m", run_id="run_a", status="FAILED", error={"name": "X"}),
        errors.Unavailable("m", run_id="run_a", stream="s"),
    ],
)
def test_errors_keep_their_run_and_stream_when_pickled(error: Any) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == "m"
    assert again.__dict__ == error.__dict__


def test_a_send_to_a_finished_run_names_the_run_the_stream_and_how_it_ended() -> None:
    handle = quick.trigger({}).result()
    rayflow.runs.wait(handle.id).result()
    with pytest.raises(errors.RunFinished, match="input can only be sent") as got:
        notes.send(handle.id, "late").result()
    assert (got.value.run_id, got.value.stream, got.value.status) == (
        handle.id,
        "notes",
        "COMPLETED",
    )
    with pytest.raises(errors.RunNotFound) as missing:
        notes.send("run_nosuchrun", "hello").result()
    assert (missing.value.run_id, missing.value.stream) == ("run_nosuchrun", "notes")


def test_target_parent_in_a_run_without_one_is_no_parent_run_not_outside_task() -> None:
    handle = parentless.trigger({}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == f"NoParentRun:{handle.id}"
    assert not issubclass(errors.NoParentRun, errors.OutsideTask)


def test_a_write_to_a_stream_its_task_closed_is_stream_closed_not_run_finished() -> None:
    handle = write_after_close.trigger({}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == f"StreamClosed:{handle.id}:out"
    assert list(out.read(handle.id, timeout_s=5)) == ["first"]


def test_a_bad_duration_or_start_index_is_invalid_argument() -> None:
    with pytest.raises(errors.InvalidArgument, match="'5 parsecs'"):
        quick.trigger({}, max_duration="5 parsecs")
    with pytest.raises(errors.InvalidArgument, match="start_index"):
        list(out.read("run_whatever", start_index=-1))


def test_an_unknown_run_or_a_reused_key_names_the_run_it_is_about() -> None:
    for call in (rayflow.runs.retrieve, rayflow.runs.cancel, rayflow.runs.wait):
        with pytest.raises(errors.RunNotFound) as missing:
            call("run_nosuchrun").result()
        assert missing.value.run_id == "run_nosuchrun", call
    key = f"errors-{uuid.uuid4().hex}"
    first = quick.trigger({"n": 1}, idempotency_key=key).result()
    with pytest.raises(errors.IdempotencyConflict) as conflict:
        quick.trigger({"n": 2}, idempotency_key=key).result()
    assert conflict.value.run_id == first.id
