"""Stream, then wait: a revived run never calls its token source again, and a
stream's chunks never change after a reader saw the writer that wrote them
complete (issue 24). The token source stands in for a model: it counts its
starts in a file, and every start after the first answers differently (and
longer), so a replay that consumed it again would show in the stream."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import eventually, run_actor_pid

import rayflow
from rayflow import streams, task

pytestmark = pytest.mark.usefixtures("rf")

prompt = streams.input("sj-prompt", str)
poke = streams.input("sj-poke", str)
answer = streams.define("sj-answer", str)


def _start(log: str, prompt_text: str) -> int:
    """Record a start of the model for `prompt_text`; how many came before."""
    path = Path(log)
    earlier = path.read_text().splitlines() if path.exists() else []
    with path.open("a") as f:
        f.write(prompt_text + "\n")
    return earlier.count(prompt_text)


def _tokens(prompt_text: str, start: int) -> list[str]:
    # the first answer has 20 tokens; every later one differs and is longer
    return [f"{prompt_text}.{start}.{i}" for i in range(20 + 10 * start)]


async def model(log: str, prompt_text: str, delay_s: float = 0.0) -> AsyncIterator[str]:
    for token in _tokens(prompt_text, _start(log, prompt_text)):
        await asyncio.sleep(delay_s)
        yield token


def sync_model(log: str, prompt_text: str) -> Iterator[str]:
    yield from _tokens(prompt_text, _start(log, prompt_text))


def starts(log: str, prompt_text: str) -> int:
    path = Path(log)
    return path.read_text().splitlines().count(prompt_text) if path.exists() else 0


def first_answer(prompt_text: str) -> list[str]:
    return _tokens(prompt_text, 0)


def stream_of(run_id: str) -> list[str]:
    return list(answer.read(run_id, timeout_s=0.5))


def read_until(reader: Iterator[str], end: str) -> list[str]:
    got = []
    for chunk in reader:
        got.append(chunk)
        if chunk == end:
            return got
    raise AssertionError(f"the stream ended before {end!r}: {got}")


def wait_status(run_id: str, status: str) -> None:
    eventually(
        lambda: rayflow.runs.retrieve(run_id).result().status == status,
        timeout_s=60,
        what=f"run {run_id} to be {status}",
    )


# -- pipe, then wait (the chat pattern) ----------------------------------------


@task(id="sj-chat")
async def chat(payload: dict) -> int:
    turns = 0
    while True:
        message = await prompt.wait(timeout="1h")
        if message.output == "bye":
            return turns
        pipe = answer.pipe(model(payload["log"], message.output))
        count = await pipe.wait_until_complete()
        await answer.append(f"<end {count}>")
        turns += 1


def test_a_piped_model_is_called_once_per_turn_and_its_answer_never_changes(
    tmp_path: Path,
) -> None:
    log = str(tmp_path / "starts")
    handle = chat.trigger({"log": log}).result()
    reader = iter(answer.read(handle.id, timeout_s=60))
    seen: list[str] = []
    for turn in ("t1", "t2", "t3"):
        wait_status(handle.id, "WAITING")
        prompt.send(handle.id, turn).result()
        seen += read_until(reader, "<end 20>")
    wait_status(handle.id, "WAITING")
    prompt.send(handle.id, "bye").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == 3
    # three revivals replayed turn 1: its model still started once
    assert [starts(log, t) for t in ("t1", "t2", "t3")] == [1, 1, 1]
    expected = [c for t in ("t1", "t2", "t3") for c in [*first_answer(t), "<end 20>"]]
    assert seen == expected
    assert stream_of(handle.id) == expected


@task(id="sj-chat-held")
async def chat_held(payload: dict) -> int:
    pipe = answer.pipe(model(payload["log"], "held"))
    count = await pipe.wait_until_complete()
    await answer.append(f"<end {count}>")
    (await poke.once(timeout_s=120)).unwrap()  # holds its process: killed here
    pipe = answer.pipe(model(payload["log"], "after"))
    count = await pipe.wait_until_complete()
    await answer.append(f"<end {count}>")
    return count


def test_a_run_killed_while_it_waits_does_not_call_its_model_again(tmp_path: Path) -> None:
    log = str(tmp_path / "starts")
    handle = chat_held.trigger({"log": log}).result()
    reader = iter(answer.read(handle.id, timeout_s=60))
    seen = read_until(reader, "<end 20>")
    pid = eventually(lambda: run_actor_pid(handle.id), what="the run's RunActor")
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: (run_actor_pid(handle.id) or pid) != pid, timeout_s=60, what="a new actor")
    poke.send(handle.id, "go").result()
    seen += read_until(reader, "<end 20>")
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == 20
    assert starts(log, "held") == 1 and starts(log, "after") == 1
    expected = [*first_answer("held"), "<end 20>", *first_answer("after"), "<end 20>"]
    assert seen == expected
    assert stream_of(handle.id) == expected


# -- a pipe cut by a crash mid-stream ------------------------------------------


@task(id="sj-cut")
async def cut(payload: dict) -> int:
    pipe = answer.pipe(model(payload["log"], "cut", delay_s=0.05))
    return await pipe.wait_until_complete()


def test_a_pipe_cut_mid_stream_restarts_its_source_after_what_was_committed(
    tmp_path: Path,
) -> None:
    log = str(tmp_path / "starts")
    handle = cut.trigger({"log": log}).result()
    reader = iter(answer.read(handle.id, timeout_s=60))
    before = [next(reader) for _ in range(5)]
    pid = eventually(lambda: run_actor_pid(handle.id), what="the run's RunActor")
    os.kill(pid, signal.SIGKILL)
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED"
    assert starts(log, "cut") == 2  # cut before it completed: its source restarts
    stored = stream_of(handle.id)
    committed = sum(1 for c in stored if c.startswith("cut.0."))
    # what was committed before the crash stays; the rest is the new attempt's
    assert committed >= 5 and before == stored[:5]
    assert stored == first_answer("cut")[:committed] + _tokens("cut", 1)[committed:]
    assert run.output == len(_tokens("cut", 1))


# -- appends in a loop, writer().merge, target="parent", .on() handlers --------


@task(id="sj-append-loop")
async def append_loop(payload: dict) -> int:
    turns = 0
    while True:
        message = await prompt.wait(timeout="1h")
        if message.output == "bye":
            return turns
        for token in sync_model(payload["log"], message.output):  # the task's own loop
            await answer.append(token)
        await answer.append("<end>")
        turns += 1


def test_appends_replayed_after_a_wait_never_write_past_what_the_run_had_written(
    tmp_path: Path,
) -> None:
    log = str(tmp_path / "starts")
    handle = append_loop.trigger({"log": log}).result()
    for turn in ("t1", "t2", "t3"):
        wait_status(handle.id, "WAITING")
        prompt.send(handle.id, turn).result()
    wait_status(handle.id, "WAITING")
    prompt.send(handle.id, "bye").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == 3
    # the loop is the task's code: it runs again on replay, its appends do not
    assert starts(log, "t1") == 4
    assert stream_of(handle.id) == [
        c for t in ("t1", "t2", "t3") for c in [*first_answer(t), "<end>"]
    ]


@task(id="sj-merge")
async def merge_turns(payload: dict) -> int:
    turns = 0
    while True:
        message = await prompt.wait(timeout="1h")
        if message.output == "bye":
            return turns
        async with answer.writer() as w:
            w.merge(model(payload["log"], message.output))
        async with answer.writer() as w:
            w.write("<end>")
        turns += 1


def test_a_merged_model_is_called_once_per_turn(tmp_path: Path) -> None:
    log = str(tmp_path / "starts")
    handle = merge_turns.trigger({"log": log}).result()
    for turn in ("t1", "t2"):
        wait_status(handle.id, "WAITING")
        prompt.send(handle.id, turn).result()
    wait_status(handle.id, "WAITING")
    prompt.send(handle.id, "bye").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == 2
    assert [starts(log, t) for t in ("t1", "t2")] == [1, 1]
    assert stream_of(handle.id) == [c for t in ("t1", "t2") for c in [*first_answer(t), "<end>"]]


@task(id="sj-child")
async def child(payload: dict) -> str:
    pipe = answer.pipe(model(payload["log"], "child"), target="parent")
    await pipe.wait_until_complete()
    message = await prompt.wait(timeout="1h")
    return message.output


@task(id="sj-parent")
async def parent(payload: dict) -> str:
    result = await child.trigger_and_wait(payload, tags=[payload["tag"]])
    return result.unwrap()


def test_a_child_writing_to_its_parent_does_not_call_its_model_again(tmp_path: Path) -> None:
    log, tag = str(tmp_path / "starts"), f"sj-{tmp_path.name}"
    handle = parent.trigger({"log": log, "tag": tag}).result()
    child_id = eventually(
        lambda: [r.id for r in rayflow.runs.list(tag=tag).result()], what="the child run"
    )[0]
    wait_status(child_id, "WAITING")
    prompt.send(child_id, "done").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == "done"
    assert starts(log, "child") == 1
    assert stream_of(handle.id) == first_answer("child")


@task(id="sj-on")
async def on_streamer(payload: dict) -> str:
    answered = asyncio.Event()

    async def handle_poke(text: str) -> None:
        pipe = answer.pipe(model(payload["log"], text))
        await pipe.wait_until_complete()
        answered.set()

    poke.on(handle_poke)
    await answered.wait()
    message = await prompt.wait(timeout="1h")
    return message.output


def test_an_on_handler_that_streams_does_not_call_its_model_again(tmp_path: Path) -> None:
    log = str(tmp_path / "starts")
    handle = on_streamer.trigger({"log": log}).result()
    poke.send(handle.id, "poked").result()
    wait_status(handle.id, "WAITING")
    prompt.send(handle.id, "done").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == "done"
    assert starts(log, "poked") == 1
    assert stream_of(handle.id) == first_answer("poked")


# -- a replayed pipe's tee -----------------------------------------------------


@task(id="sj-tee")
async def tee(payload: dict) -> list[str]:
    history: list[str] = []
    while True:
        message = await prompt.wait(timeout="1h")
        if message.output == "bye":
            return history
        pipe = answer.pipe(model(payload["log"], message.output))
        history.append(" ".join([token async for token in pipe.stream]))
        await pipe.wait_until_complete()


def test_a_replayed_pipe_tees_the_chunks_it_stored(tmp_path: Path) -> None:
    log = str(tmp_path / "starts")
    handle = tee.trigger({"log": log}).result()
    for turn in ("t1", "t2"):
        wait_status(handle.id, "WAITING")
        prompt.send(handle.id, turn).result()
    wait_status(handle.id, "WAITING")
    prompt.send(handle.id, "bye").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED"
    assert run.output == [" ".join(first_answer(t)) for t in ("t1", "t2")]
    assert [starts(log, t) for t in ("t1", "t2")] == [1, 1]
