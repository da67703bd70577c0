"""Tasks are known once `rayflow.init()` ran, and the default stream works
everywhere without a key."""

from __future__ import annotations

import warnings

import pytest

import rayflow
from rayflow import errors, streams, task

pytestmark = pytest.mark.usefixtures("rf")


@task(id="registered-at-init")
async def registered_at_init(payload: dict) -> str:  # type: ignore[type-arg]
    return f"hello {payload['name']}"


@task(id="default-stream-writer")
async def default_stream_writer(payload: dict) -> int:  # type: ignore[type-arg]
    await streams.append("first")  # one argument: the value, into "default"
    pipe = streams.pipe(iter(["piped-1", "piped-2"]))
    await pipe.wait_until_complete()
    async with streams.writer() as w:
        w.write("written")
    await streams.append("other", "keyed")  # two arguments: key and value
    return 4


def test_a_task_defined_before_init_is_triggerable_by_id_without_registering() -> None:
    # nothing in this module called .register() or .trigger(): init did it
    handle = rayflow.trigger("registered-at-init", {"name": "ray"}).result()
    assert rayflow.runs.wait(handle.id).result(timeout_s=60).output == "hello ray"


def test_a_task_defined_after_init_is_registered_when_defined() -> None:
    @task(id="defined-after-init")
    async def defined_after_init(payload: int) -> int:
        return payload * 2

    handle = rayflow.trigger("defined-after-init", 21).result()
    assert rayflow.runs.wait(handle.id).result(timeout_s=60).output == 42


def test_redefining_a_task_id_with_other_code_is_reported() -> None:
    @task(id="redefined-task")
    async def first(payload: int) -> str:
        return "first version"

    with pytest.warns(RuntimeWarning, match="redefined-task") as caught:

        @task(id="redefined-task")
        async def second(payload: int) -> str:
            return "second version"

    text = " ".join(str(w.message) for w in caught)
    assert "first" in text and "second" in text
    handle = rayflow.trigger("redefined-task", 1).result()
    assert rayflow.runs.wait(handle.id).result(timeout_s=60).output == "second version"


def test_the_same_code_defined_twice_is_not_reported() -> None:
    def make() -> object:
        @task(id="defined-twice-same-code")
        async def same(payload: int) -> int:
            return payload

        return same

    make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make()


def test_a_chat_agent_redefined_with_other_turn_code_is_reported() -> None:
    """An agent's task runs a wrapper shared by every agent: its version must
    still come from the user's turn function."""
    from rayflow import chat

    @chat.agent("redefined-agent")
    async def first(turn: chat.Turn):  # type: ignore[no-untyped-def]
        yield "first version"

    with pytest.warns(RuntimeWarning, match="redefined-agent"):

        @chat.agent("redefined-agent")
        async def second(turn: chat.Turn):  # type: ignore[no-untyped-def]
            yield "second version"

    assert first.fingerprint != second.fingerprint


def test_the_default_stream_is_used_when_no_key_is_given() -> None:
    handle = default_stream_writer.trigger({}).result()
    assert list(streams.read(handle.id, timeout_s=30)) == [
        "first",
        "piped-1",
        "piped-2",
        "written",
    ]
    assert list(streams.read(handle.id, "other", timeout_s=30)) == ["keyed"]


def test_pipe_with_only_a_key_says_what_is_missing() -> None:
    with pytest.raises(TypeError, match="needs an iterable"):
        streams.pipe("tokens")


def test_append_outside_a_task_still_needs_a_target() -> None:
    with pytest.raises(errors.OutsideTask):
        streams.append("value").result()
