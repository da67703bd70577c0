"""UI messages: the conversation as `useChat` holds it, and how a stream of
UI message chunks builds an assistant message (the AI SDK's
`processUIMessageStream`, for the parts an agent writes).

A message is `{"id", "role", "parts", "metadata"?}`; its parts are plain
dicts in the AI SDK's shape (`{"type": "text", "text": …}`,
`{"type": "tool-<name>", "toolCallId": …, "state": …}`, `data-*`, …), so what
the browser sends back is what the agent keeps.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_TOOL_STATES_DONE = ("output-available", "output-error", "output-denied")


class UIMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="allow")

    id: str
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]] = Field(default_factory=list)
    metadata: Any = None

    @property
    def text(self) -> str:
        """The message's text parts, joined."""
        return "".join(p.get("text", "") for p in self.parts if p.get("type") == "text")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def user_message(id: str, text: str) -> UIMessage:
    """A user message of one text part."""
    return UIMessage(id=id, role="user", parts=[{"type": "text", "text": text}])


class MessageBuilder:
    """Applies UI message chunks (wire dicts) to one assistant message."""

    def __init__(self, message_id: str) -> None:
        self.message = UIMessage(id=message_id, role="assistant")
        self._open: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, id) -> part
        self._tools: dict[str, dict[str, Any]] = {}  # toolCallId -> part

    def apply(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type", "")
        parts = self.message.parts
        if kind == "start":
            if chunk.get("messageId"):
                self.message.id = chunk["messageId"]
            if chunk.get("messageMetadata") is not None:
                self.message.metadata = chunk["messageMetadata"]
        elif kind in ("finish", "message-metadata"):
            if chunk.get("messageMetadata") is not None:
                self.message.metadata = chunk["messageMetadata"]
        elif kind == "start-step":
            parts.append({"type": "step-start"})
        elif kind in ("text-start", "reasoning-start"):
            part = {"type": kind.split("-")[0], "text": "", "state": "streaming"}
            self._open[(part["type"], chunk["id"])] = part
            parts.append(part)
        elif kind in ("text-delta", "reasoning-delta"):
            self._open[(kind.split("-")[0], chunk["id"])]["text"] += chunk["delta"]
        elif kind in ("text-end", "reasoning-end"):
            self._open.pop((kind.split("-")[0], chunk["id"]))["state"] = "done"
        elif kind.startswith("tool-"):
            self._tool(kind, chunk)
        elif kind == "source-url":
            parts.append({k: v for k, v in chunk.items()})
        elif kind == "file":
            parts.append({"type": "file", "url": chunk["url"], "mediaType": chunk["mediaType"]})
        elif kind.startswith("data-") and not chunk.get("transient"):
            part = {"type": kind, "data": chunk.get("data")}
            if chunk.get("id") is not None:
                part["id"] = chunk["id"]
                for i, old in enumerate(parts):
                    if old.get("type") == kind and old.get("id") == chunk["id"]:
                        parts[i] = part
                        return
            parts.append(part)

    def _tool(self, kind: str, chunk: dict[str, Any]) -> None:
        call = chunk["toolCallId"]
        part = self._tools.get(call)
        if part is None:
            name = chunk.get("toolName", "unknown")
            part = self._tools[call] = {"type": f"tool-{name}", "toolCallId": call}
            self.message.parts.append(part)
        if kind == "tool-input-start":
            part.update(state="input-streaming", input=None)
        elif kind == "tool-input-available":
            part.update(state="input-available", input=chunk.get("input"))
        elif kind == "tool-approval-request":
            part.update(state="approval-requested", approval={"id": chunk["approvalId"]})
        elif kind == "tool-output-available":
            part.update(state="output-available", output=chunk.get("output"))
        elif kind == "tool-output-error":
            part.update(state="output-error", errorText=chunk.get("errorText"))
        elif kind == "tool-output-denied":
            part.update(state="output-denied")

    def open_reasoning(self) -> list[str]:
        """The ids of the reasoning parts not ended yet."""
        return [id for kind, id in self._open if kind == "reasoning"]

    def finish(self) -> UIMessage:
        """The message, its open text parts closed (an aborted turn keeps what streamed)."""
        for part in self._open.values():
            part["state"] = "done"
        self._open.clear()
        return self.message


def overlay_tool_states(history: list[UIMessage], incoming: UIMessage) -> bool:
    """Apply the tool-state advances of `incoming` (an assistant message the
    browser sends back after an approval or `addToolOutput`) to the message of
    the same id in `history`. False when no message has that id."""
    for message in history:
        if message.id != incoming.id:
            continue
        by_call = {p.get("toolCallId"): p for p in message.parts if p.get("toolCallId")}
        for part in incoming.parts:
            target = by_call.get(part.get("toolCallId"))
            if target is None:
                continue
            for key in ("state", "output", "errorText", "approval"):
                if key in part:
                    target[key] = part[key]
        return True
    return False


def pending_tool_calls(message: UIMessage) -> list[dict[str, Any]]:
    """The tool parts of `message` that have no result yet."""
    return [
        p for p in message.parts if p.get("toolCallId") and p.get("state") not in _TOOL_STATES_DONE
    ]
