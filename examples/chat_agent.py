"""A chat agent on a session: the protocol AI SDK `useChat` talks through
Trigger.dev's `TriggerChatTransport`, driven here from Python.

Each user message is a turn: the agent streams the model's answer to the
session's `.out` as UI message chunks, then a `turn-complete` record. Between
turns the run waits holding no process; the next message revives it, and
the turn is journaled, so a revival never calls the model again.

The model: any OpenAI-compatible endpoint when `OPENAI_API_KEY` (and
optionally `OPENAI_BASE_URL`, `OPENAI_MODEL`) is set — streamed with httpx,
no SDK — else rayflow's deterministic stand-in, `chat.FakeModel`.

    python examples/chat_agent.py
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Sequence

import rayflow
from rayflow import chat, sessions


async def openai_stream(messages: Sequence[chat.UIMessage]) -> AsyncIterator[str]:
    """The answer's text deltas from an OpenAI-compatible `/chat/completions`."""
    import httpx

    base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
    body = {
        "model": os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        "stream": True,
        "messages": [{"role": m.role, "content": m.text} for m in messages],
    }
    headers = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{base}/chat/completions", json=body, headers=headers) as response,
    ):
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                delta = choices[0].get("delta", {}).get("content")
                if delta:
                    yield delta


@chat.agent(id="chat-agent", idle_timeout="1d")
async def chat_agent(turn: chat.Turn) -> AsyncIterator[str | chat.chunks.Chunk]:
    if os.environ.get("OPENAI_API_KEY"):
        async for delta in openai_stream(turn.messages):
            yield delta
    else:
        async for piece in chat.FakeModel(words=6, delay_s=0.002).stream(turn.messages):
            yield piece
    yield chat.data("usage", {"messages": len(turn.messages)})


def read_turn(session_id: str, start: int) -> tuple[str, int]:
    """The answer's text, reading `.out` from `start` to the next turn-complete."""
    output, text = sessions.open(session_id).output, ""
    while True:
        page = output.read(start=start, wait_s=60).result()
        for record in page.records:
            start = record.seq_num + 1
            if record.control == "turn-complete":
                return text, start
            chunk = record.value()
            if chunk["type"] == "text-delta":
                text += chunk["delta"]


def user(text: str) -> dict:
    return {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}


def main() -> None:
    rayflow.init()
    chat_id = f"chat-{uuid.uuid4().hex[:8]}"
    # what `POST /api/v1/sessions` does for TriggerChatTransport: the session
    # and its first run, which answers the first message at once
    first = {"chatId": chat_id, "trigger": "submit-message", "message": user("hello")}
    session = sessions.start(
        type="chat.agent",
        task_id="chat-agent",
        external_id=chat_id,
        trigger_config={"base_payload": first},
    ).result()
    print("chat", chat_id, "session", session.id)
    answer, cursor = read_turn(session.id, 0)
    print("user: hello\nassistant:", answer)
    for question in ("what is rayflow?",):
        run_id = sessions.retrieve(session.id).result().current_run_id
        while rayflow.runs.retrieve(run_id).result().status != "WAITING":
            pass  # between turns the run is suspended: no actor, no process
        print("user:", question, "(the run was WAITING)")
        payload = {"chatId": chat_id, "trigger": "submit-message", "message": user(question)}
        sessions.open(session.id).input.send({"kind": "message", "payload": payload}).result()
        answer, cursor = read_turn(session.id, cursor)
        print("assistant:", answer)
    # the client closes the conversation: the run's wait ends, and so does the run
    sessions.close(session.id).result()
    run = rayflow.runs.wait(session.run_id).result()
    print("result:", run.status, run.output)
    assert run.output["turns"] == 2, run


if __name__ == "__main__":
    main()
