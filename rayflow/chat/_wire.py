"""The chat client protocol's records (Trigger.dev 4.8.3, `client-protocol.mdx`).

`.in` carries `ChatInputChunk`s: `{"kind": "message", "payload": ChatTaskWirePayload}`
or `{"kind": "stop"}`. `.out` carries data records (one UI message chunk
each) and control records (`turn-complete`, `session-closed`: headers only).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayflow.chat.messages import UIMessage

Trigger = Literal[
    "submit-message", "regenerate-message", "preload", "close", "action", "handover-prepare"
]

TRIGGER_CONTROL = "trigger-control"
TURN_COMPLETE = "turn-complete"
SESSION_CLOSED = "session-closed"
SESSION_IN_EVENT_ID = "session-in-event-id"
PUBLIC_ACCESS_TOKEN = "public-access-token"
SESSION_CLOSED_REASON = "session-closed-reason"


class WirePayload(BaseModel):
    """`ChatTaskWirePayload`: a run's payload, and the payload of every
    `kind: "message"` record on `.in`."""

    model_config = ConfigDict(extra="allow")

    chat_id: str | None = Field(None, alias="chatId")
    trigger: Trigger = "submit-message"
    message: UIMessage | None = None
    head_start_messages: list[UIMessage] | None = Field(None, alias="headStartMessages")
    message_id: str | None = Field(None, alias="messageId")
    metadata: Any = None
    action: Any = None
    continuation: bool | None = None
    previous_run_id: str | None = Field(None, alias="previousRunId")
    idle_timeout_in_seconds: float | None = Field(None, alias="idleTimeoutInSeconds")
    session_id: str | None = Field(None, alias="sessionId")


class InputRecord(BaseModel):
    """One `.in` record, decoded: a message (with its payload) or a stop."""

    seq: int | None  # None: the run's own payload (the session's first message)
    kind: Literal["message", "stop"]
    payload: WirePayload | None = None
    stop_message: str | None = None


def decode_input(seq: int | None, value: Any) -> InputRecord | None:
    """An `.in` value as the agent acts on it; None for one it cannot read
    (the protocol has the agent skip it: the HTTP route took any JSON)."""
    if not isinstance(value, dict):
        return None
    try:
        if value.get("kind") == "stop":
            message = value.get("message")
            return InputRecord(seq=seq, kind="stop", stop_message=message)
        if value.get("kind") == "message":
            payload = WirePayload.model_validate(value.get("payload") or {})
            return InputRecord(seq=seq, kind="message", payload=payload)
    except ValidationError:
        return None
    return None


def data_record(chunk: dict[str, Any], part_id: str) -> dict[str, Any]:
    """The `.out` value of a data record."""
    return {"data": chunk, "id": part_id}


def turn_complete_headers(in_seq: int | None, token: str | None = None) -> list[list[str]]:
    """A `turn-complete` record's headers: the `.in` seq the turn answered,
    and a refreshed public access token (the transport replaces its own
    with it, so a long chat's browser token never runs out)."""
    headers = [[TRIGGER_CONTROL, TURN_COMPLETE]]
    if token is not None:
        headers.append([PUBLIC_ACCESS_TOKEN, token])
    if in_seq is not None:
        headers.append([SESSION_IN_EVENT_ID, str(in_seq)])
    return headers


def control_of(value: Any) -> str | None:
    """The control subtype of an `.out` value (None: a data record)."""
    if isinstance(value, dict) and isinstance(value.get("headers"), list):
        for name, header_value in value["headers"]:
            if name == TRIGGER_CONTROL:
                return str(header_value)
    return None


def header_of(value: Any, name: str) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("headers"), list):
        for key, header_value in value["headers"]:
            if key == name:
                return str(header_value)
    return None
