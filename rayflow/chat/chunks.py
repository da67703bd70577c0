"""AI SDK UI message chunks: what a chat agent streams to `useChat`.

The AI SDK (`ai` 5 to 7) renders an assistant message from a stream of
`UIMessageChunk`s; Trigger.dev's chat protocol carries them on a session's
`.out`, one per data record (`{"data": chunk, "id": part_id}`). These models
are those chunks, field for field (camelCase on the wire: dump them with
`wire()`). The AI SDK validates chunks loosely, so a chunk may carry fields
these models do not name (`extra="allow"`).

An agent rarely builds `start`/`finish`/`text-start`/`text-end` itself:
`rayflow.chat.agent` frames every turn and wraps plain strings in text
parts. It yields the rest: `Reasoning`, tool calls (`ToolInputAvailable`,
`ToolOutputAvailable`), `Data` parts, sources, files.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel


class Chunk(BaseModel):
    """One UI message chunk (the base of every kind below)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    type: str

    def wire(self) -> dict[str, Any]:
        """The chunk as the AI SDK reads it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Start(Chunk):
    type: Literal["start"] = "start"
    message_id: str | None = None
    message_metadata: Any = None


class Finish(Chunk):
    type: Literal["finish"] = "finish"
    finish_reason: (
        Literal["stop", "length", "content-filter", "tool-calls", "error", "interrupted", "other"]
        | None
    ) = None
    message_metadata: Any = None


class Abort(Chunk):
    type: Literal["abort"] = "abort"
    reason: str | None = None


class StartStep(Chunk):
    type: Literal["start-step"] = "start-step"


class FinishStep(Chunk):
    type: Literal["finish-step"] = "finish-step"


class TextStart(Chunk):
    type: Literal["text-start"] = "text-start"
    id: str


class TextDelta(Chunk):
    type: Literal["text-delta"] = "text-delta"
    id: str
    delta: str


class TextEnd(Chunk):
    type: Literal["text-end"] = "text-end"
    id: str


class ReasoningStart(Chunk):
    type: Literal["reasoning-start"] = "reasoning-start"
    id: str


class ReasoningDelta(Chunk):
    type: Literal["reasoning-delta"] = "reasoning-delta"
    id: str
    delta: str


class ReasoningEnd(Chunk):
    type: Literal["reasoning-end"] = "reasoning-end"
    id: str


class ToolInputStart(Chunk):
    type: Literal["tool-input-start"] = "tool-input-start"
    tool_call_id: str
    tool_name: str


class ToolInputDelta(Chunk):
    type: Literal["tool-input-delta"] = "tool-input-delta"
    tool_call_id: str
    input_text_delta: str


class ToolInputAvailable(Chunk):
    """The model called a tool with this input."""

    type: Literal["tool-input-available"] = "tool-input-available"
    tool_call_id: str
    tool_name: str
    input: Any


class ToolOutputAvailable(Chunk):
    """The tool's result (after `ToolInputAvailable` of the same call id)."""

    type: Literal["tool-output-available"] = "tool-output-available"
    tool_call_id: str
    output: Any


class ToolOutputError(Chunk):
    type: Literal["tool-output-error"] = "tool-output-error"
    tool_call_id: str
    error_text: str


class ToolApprovalRequest(Chunk):
    """Ask the user to approve a tool call; their answer comes back as the
    next `submit-message` (an assistant message whose tool part is
    `approval-responded`)."""

    type: Literal["tool-approval-request"] = "tool-approval-request"
    approval_id: str
    tool_call_id: str


class SourceUrl(Chunk):
    type: Literal["source-url"] = "source-url"
    source_id: str
    url: str
    title: str | None = None


class File(Chunk):
    type: Literal["file"] = "file"
    url: str
    media_type: str


class Data(Chunk):
    """A custom data part: `type` is `data-<name>`. With an `id`, a later
    part of the same type and id replaces it in the message; `transient`
    parts reach `onData` but are not added to the message."""

    type: str
    id: str | None = None
    data: Any = None
    transient: bool | None = None

    @field_validator("type")
    @classmethod
    def _data_prefix(cls, value: str) -> str:
        if not value.startswith("data-"):
            raise ValueError(f"a data part's type starts with 'data-' (got {value!r})")
        return value


class Error(Chunk):
    type: Literal["error"] = "error"
    error_text: str


class SteeringMessage(Chunk):
    """A user message that joined the turn while it streamed (`Turn.take_pending`)."""

    type: Literal["steering-message"] = "steering-message"
    id: str
    parts: list[dict[str, Any]] = Field(default_factory=list)


def data(name: str, value: Any, *, id: str | None = None, transient: bool = False) -> Data:
    """A `data-<name>` part carrying `value`."""
    return Data(type=f"data-{name}", data=value, id=id, transient=transient or None)
