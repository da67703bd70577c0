"""A deterministic stand-in for an LLM, for tests, examples and benchmarks.

Its answer is a function of the conversation alone (the last user message
and how many there were), streamed word by word; `delay_s` spaces the words
so a turn streams for a while (long enough to stop or reload mid-turn).
`calls=` names a file it appends one line to per call, so a test can count
model calls across processes (a revived run must not call it again).

Messages that start with a keyword show the other parts an agent streams:
`think …` streams reasoning first, `weather …` calls a `weather` tool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from rayflow.chat import chunks
from rayflow.chat.messages import UIMessage


class FakeModel:
    """`async for piece in FakeModel().stream(messages)`: strings are text
    deltas, `chunks.Chunk`s the other parts (what `rayflow.chat.agent` takes)."""

    def __init__(
        self, *, words: int = 8, delay_s: float = 0.0, calls: str | Path | None = None
    ) -> None:
        self.words = words
        self.delay_s = delay_s
        self.calls = Path(calls) if calls is not None else None

    def answer(self, messages: Sequence[UIMessage]) -> str:
        """The whole text of the reply to `messages` (what `stream` yields as text)."""
        users = [m for m in messages if m.role == "user"]
        said = users[-1].text if users else ""
        tail = " ".join(f"w{i}" for i in range(self.words))
        return f"[{len(users)}] you said: {said} | {tail}"

    async def stream(self, messages: Sequence[UIMessage]) -> AsyncIterator[str | chunks.Chunk]:
        users = [m for m in messages if m.role == "user"]
        said = users[-1].text if users else ""
        if self.calls is not None:
            with self.calls.open("a") as f:
                f.write(f"{len(users)}:{said}\n")
        if said.startswith("think"):
            yield chunks.ReasoningStart(id="r0")
            yield chunks.ReasoningDelta(id="r0", delta=f"considering {said!r}")
            yield chunks.ReasoningEnd(id="r0")
        if said.startswith("weather"):
            call = f"call-{len(users)}"
            city = said.removeprefix("weather").strip() or "Paris"
            yield chunks.ToolInputAvailable(
                tool_call_id=call, tool_name="weather", input={"city": city}
            )
            yield chunks.ToolOutputAvailable(tool_call_id=call, output={"city": city, "c": 21})
        for i, word in enumerate(self.answer(messages).split(" ")):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield word if i == 0 else " " + word

    def call_count(self) -> int:
        """How many times `stream` was called (with `calls=`: across processes)."""
        if self.calls is None or not self.calls.exists():
            return 0
        return len(self.calls.read_text().splitlines())
