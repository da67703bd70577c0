"""`rayflow.chat` agents on sessions, through the public API, on both stores:
the chat protocol's records on `.out` (UI message chunks as data records,
`turn-complete` control records carrying the `.in` seq they answer and a
refreshed public access token), the run
suspended between turns and revived without calling the model again, a
continuation run that rebuilds the conversation, stop, regenerate, actions.
A turn cut by a killed RunActor is answered again by the revived run, and
`.out` still holds each of its records once. (The browser side — `useChat`
with `TriggerChatTransport` — is tests/test_chat_browser.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually, run_actor_pid

import rayflow
from rayflow import _tokens, chat, sessions
from rayflow._runtime import connection

pytestmark = pytest.mark.usefixtures("rf")


async def echo(turn: chat.Turn):  # type: ignore[no-untyped-def]
    options = turn.metadata or {}
    model = chat.FakeModel(
        words=options.get("words", 8), delay_s=options.get("delay", 0.0), calls=options["calls"]
    )
    async for piece in model.stream(turn.messages):
        yield piece
    yield chat.data("turn", {"users": sum(m.role == "user" for m in turn.messages)})


echo_agent = chat.agent(id="chat-test-agent", idle_timeout="120s")(echo)


async def undo(action: Any, messages: list[chat.UIMessage]) -> list[chat.UIMessage] | None:
    if action == {"type": "undo"}:
        return messages[:-2]
    return None


action_agent = chat.agent(id="chat-test-actions", idle_timeout="120s", on_action=undo)(echo)


def message(text: str, calls: Path, **options: Any) -> dict[str, Any]:
    return {
        "kind": "message",
        "payload": {
            "chatId": "ignored-by-the-agent",
            "trigger": "submit-message",
            "message": {
                "id": f"u-{uuid.uuid4().hex[:6]}",
                "role": "user",
                "parts": [{"type": "text", "text": text}],
            },
            "metadata": {"calls": str(calls), **options},
        },
    }


def start(task_id: str, calls: Path, first: str | None = None, **options: Any) -> Any:
    chat_id = f"chat-{uuid.uuid4().hex[:8]}"
    base: dict[str, Any] = {"chatId": chat_id, "trigger": "preload"}
    base["metadata"] = {"calls": str(calls), **options}
    if first is not None:
        base.update(message(first, calls, **options)["payload"], chatId=chat_id)
    return sessions.start(
        type="chat.agent",
        task_id=task_id,
        external_id=chat_id,
        trigger_config={"base_payload": base},
    ).result()


def send(session_id: str, value: Any) -> int:
    return sessions.open(session_id).input.send(value).result().seq


class Out:
    """A reader of a session's `.out`, one turn at a time."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.output = sessions.open(session_id).output
        self.next = 0
        self.turn_completes: list[int] = []  # their seqs

    def turn(self, *, until: int | None = None) -> tuple[list[dict[str, Any]], list[list[str]]]:
        """The data chunks up to the next turn-complete, and its headers."""
        chunks: list[dict[str, Any]] = []

        while True:
            page = self.output.read(start=self.next, wait_s=30).result()
            assert page.records, f"no turn-complete on {self.session_id}/out"
            for record in page.records:
                self.next = record.seq_num + 1
                if record.command == "trim":  # the agent trims after each turn
                    continue
                if record.control == "turn-complete":
                    self.turn_completes.append(record.seq_num)
                    return chunks, record.headers
                chunks.append(record.value())

    def deltas(self, count: int) -> list[dict[str, Any]]:
        """Read until `count` text deltas have arrived (mid-turn)."""
        seen: list[dict[str, Any]] = []

        while sum(c["type"] == "text-delta" for c in seen) < count:
            page = self.output.read(start=self.next, wait_s=30).result()
            assert page.records, "the turn stalled"
            for record in page.records:
                self.next = record.seq_num + 1
                assert record.control is None
                if record.command is None:
                    seen.append(record.value())
        return seen


def refreshed(headers: list[list[str]], session: Any) -> list[list[str]]:
    """The headers without the refreshed token, which must be a token for
    the session (by id and external id) and its current run."""
    token = dict(headers)["public-access-token"]
    claims = _tokens.decode_token(connection.current().secret_key, token)
    run_id = sessions.retrieve(session.id).result().current_run_id
    assert sorted(claims["scopes"]) == sorted(
        [*_tokens.session_scopes(session.id, session.external_id), f"read:runs:{run_id}"]
    )
    return [h for h in headers if h[0] != "public-access-token"]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["delta"] for c in chunks if c["type"] == "text-delta")


def run_status(session_id: str) -> str:
    run_id = sessions.retrieve(session_id).result().current_run_id
    return rayflow.runs.retrieve(run_id).result().status


def test_turns_stream_ui_chunks_the_run_waits_between_them_and_the_model_is_called_once_per_turn(
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls"
    model = chat.FakeModel(calls=calls)
    session = start("chat-test-agent", calls, first="hello")
    out = Out(session.id)

    chunks, headers = out.turn()
    kinds = [c["type"] for c in chunks]
    assert kinds[:3] == ["start", "start-step", "text-start"], kinds
    assert kinds[-4:] == ["text-end", "data-turn", "finish-step", "finish"], kinds
    assert text_of(chunks) == model.answer([chat.user_message("u", "hello")])
    assert chunks[-3]["data"] == {"users": 1}
    # the payload's message: no .in seq; a refreshed token for the transport
    assert refreshed(headers, session) == [["trigger-control", "turn-complete"]]

    history = [chat.user_message("u1", "hello")]
    for text, extra in (
        ("think twice", "reasoning-delta"),
        ("weather Oslo", "tool-output-available"),
    ):
        eventually(lambda: run_status(session.id) == "WAITING", what="the run suspended")
        seq = send(session.id, message(text, calls))
        chunks, headers = out.turn()
        history.append(chat.user_message("u", text))
        assert extra in [c["type"] for c in chunks]
        assert text_of(chunks) == model.answer(history)  # the run kept the conversation
        assert refreshed(headers, session) == [
            ["trigger-control", "turn-complete"],
            ["session-in-event-id", str(seq)],
        ]
    assert model.call_count() == 3  # two revivals replayed the earlier turns without the model

    # after each turn-complete .out is trimmed back to the previous one, and
    # the snapshot channel keeps the last snapshot only
    def out_records() -> list[Any]:
        return list(sessions.open(session.id).output.read().result().records)

    # (the trim follows the turn-complete just read)
    records = eventually(
        lambda: (r := out_records())[0].seq_num == out.turn_completes[-2] and r,
        what="the trim after the third turn",
    )
    assert records[0].control == "turn-complete"
    assert [r.command for r in records].count("trim") == 2
    snapshots = sessions.open(session.id).channel("chat.snapshot").output.read().result()
    assert [len(r.value()["messages"]) for r in snapshots.records if r.command is None] == [6]

    # the run ends (cancelled while it waits): the next message continues the
    # session with a new run, which starts from the conversation's snapshot
    first_run = sessions.retrieve(session.id).result().current_run_id
    rayflow.runs.cancel(first_run).result()
    eventually(lambda: run_status(session.id) == "CANCELED", what="the run cancelled")
    send(session.id, message("still there?", calls))
    chunks, headers = out.turn()
    refreshed(headers, session)  # names the new run
    history.append(chat.user_message("u", "still there?"))
    assert text_of(chunks) == model.answer(history)
    assert sessions.retrieve(session.id).result().current_run_id != first_run
    assert model.call_count() == 4


def test_stop_regenerate_and_an_action_edit_the_conversation(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    model = chat.FakeModel(calls=calls)
    session = start("chat-test-actions", calls)
    out = Out(session.id)

    send(session.id, message("tell me a long story", calls, words=400, delay=0.02))
    streamed = out.deltas(3)
    stop_seq = send(session.id, {"kind": "stop"})
    chunks, headers = out.turn()
    kinds = [c["type"] for c in streamed + chunks]
    assert kinds[-4:] == ["text-end", "finish-step", "abort", "finish"], kinds
    partial = text_of(streamed + chunks)
    full = chat.FakeModel(words=400).answer([chat.user_message("u", "tell me a long story")])
    assert full.startswith(partial) and len(partial) < len(full)
    assert int(dict(headers)["session-in-event-id"]) < stop_seq

    # regenerate: the stopped answer is dropped and the same message answered again
    options = {"calls": str(calls), "words": 400}
    regenerate = {"trigger": "regenerate-message", "metadata": options}
    regen = send(session.id, {"kind": "message", "payload": regenerate})
    chunks, headers = out.turn()
    assert text_of(chunks) == full
    assert dict(headers)["session-in-event-id"] == str(regen)

    # an action (undo the last exchange) is no turn: a turn-complete, no chunks
    act = send(
        session.id,
        {"kind": "message", "payload": {"trigger": "action", "action": {"type": "undo"}}},
    )
    chunks, headers = out.turn()
    assert chunks == [] and dict(headers)["session-in-event-id"] == str(act)
    send(session.id, message("again", calls))
    chunks, _ = out.turn()
    assert text_of(chunks) == model.answer([chat.user_message("u", "again")])  # one user message
    assert model.call_count() == 3  # the stopped turn, the regenerated one, "again"


async def aenumerate(items: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    n = 0
    async for item in items:
        yield n, item
        n += 1


async def steered(turn: chat.Turn):  # type: ignore[no-untyped-def]
    model = chat.FakeModel(words=60, delay_s=0.02, calls=turn.metadata["calls"])
    # "long one" streams until the test's steering message has come (not
    # for a fixed time: a reader behind on a busy box must not see the turn
    # end before it sends); bounded, so a lost message fails the test
    hold = turn.messages[-1].text == "long one"
    deadline = time.monotonic() + 30
    async for n, piece in aenumerate(model.stream(turn.messages)):
        yield piece
        pending = turn.take_pending()
        while hold and n >= 5 and not pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            pending = turn.take_pending()
        hold = hold and not pending
        for message_ in pending:
            yield f" [steered: {message_.text}]"


steering_agent = chat.agent(id="chat-test-steering", idle_timeout="120s", steering=True)(steered)


def test_a_message_sent_mid_turn_steers_it_or_is_the_next_turn(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    session = start("chat-test-steering", calls)
    out = Out(session.id)
    send(session.id, message("long one", calls))
    streamed = out.deltas(3)
    steer = send(session.id, message("also this", calls))
    chunks, headers = out.turn()
    kinds = [c["type"] for c in streamed + chunks]
    assert "steering-message" in kinds
    assert " [steered: also this]" in text_of(streamed + chunks)
    assert dict(headers)["session-in-event-id"] == str(steer)  # the turn took it
    # taken into that turn, it is not answered again: the next message is
    send(session.id, message("next", calls))
    chunks, _ = out.turn()
    assert text_of(chunks).startswith("[3] you said: next")  # long one, also this, next
    assert chat.FakeModel(calls=calls).call_count() == 2


def test_a_turn_cut_by_a_killed_run_actor_is_answered_once_on_out(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    model = chat.FakeModel(words=60, calls=calls)
    session = start("chat-test-agent", calls)
    run_id = sessions.retrieve(session.id).result().current_run_id
    out = Out(session.id)
    eventually(lambda: run_status(session.id) == "WAITING", what="the run suspended")
    first = send(session.id, message("a long answer", calls, words=60, delay=0.05))
    streamed = out.deltas(3)
    pid = eventually(lambda: run_actor_pid(run_id), what="the run's RunActor")
    os.kill(pid, signal.SIGKILL)
    # revived from its journal: the cut turn runs again (its model too) and
    # its records stored before the kill are not stored twice (`chat:<id>`)
    chunks, headers = out.turn()
    kinds = [c["type"] for c in streamed + chunks]
    assert kinds.count("start") == 1 and kinds.count("finish") == 1, kinds
    history = [chat.user_message("u", "a long answer")]
    assert text_of(streamed + chunks) == model.answer(history)
    assert dict(headers)["session-in-event-id"] == str(first)
    assert model.call_count() == 2
    # the next message is the next turn of the same run: nothing taken twice or lost
    eventually(lambda: run_status(session.id) == "WAITING", what="the revived run suspended")
    nxt = send(session.id, message("next", calls))
    chunks, headers = out.turn()
    history.append(chat.user_message("u", "next"))
    assert text_of(chunks) == chat.FakeModel(words=8).answer(history)
    assert dict(headers)["session-in-event-id"] == str(nxt)
    assert sessions.retrieve(session.id).result().current_run_id == run_id
    records = sessions.open(session.id).output.read().result().records
    ids = [json.loads(r.body)["id"] for r in records if r.body]  # part ids
    assert len(ids) == len(set(ids)) and model.call_count() == 3

    # the run is cancelled mid-turn: that message was never answered, so the
    # run that continues the session (on the next message) answers it first
    eventually(lambda: run_status(session.id) == "WAITING", what="the run suspended")
    cut = send(session.id, message("cut short", calls, words=40, delay=0.05))
    out.deltas(3)
    rayflow.runs.cancel(run_id).result()
    eventually(lambda: run_status(session.id) == "CANCELED", what="the run cancelled")
    after = send(session.id, message("after the cut", calls))
    for text, seq in (("cut short", cut), ("after the cut", after)):
        chunks, headers = out.turn()
        history.append(chat.user_message("u", text))
        if seq == cut:  # its first records are the cancelled run's (stored once)
            assert chat.FakeModel(words=40).answer(history).endswith(text_of(chunks))
        else:
            assert text_of(chunks) == chat.FakeModel(words=8).answer(history)
        assert dict(headers)["session-in-event-id"] == str(seq)
    assert sessions.retrieve(session.id).result().current_run_id != run_id
