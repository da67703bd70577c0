"""Chat agents on sessions, speaking Trigger.dev's chat protocol: AI SDK
`useChat` with `TriggerChatTransport` talks to them as to a `chat.agent()`.

    from rayflow import chat

    @chat.agent(id="ai-chat")
    async def reply(turn: chat.Turn):
        async for piece in chat.FakeModel().stream(turn.messages):
            yield piece  # text, or chat.chunks.* (reasoning, tools, data parts)

See `rayflow.chat.agent` for the run's life (suspended between turns,
revived by the next message, continued by a new run when it ended).
"""

from __future__ import annotations

from rayflow.chat import chunks
from rayflow.chat._turn import Turn
from rayflow.chat.agent import agent
from rayflow.chat.chunks import data
from rayflow.chat.fake_model import FakeModel
from rayflow.chat.messages import UIMessage, user_message

__all__ = ["FakeModel", "Turn", "UIMessage", "agent", "chunks", "data", "user_message"]
