"""A local stand-in for an LLM: yields tokens of a canned answer, with a
small delay, so the examples stream like the real thing without a provider.
Set OPENAI_API_KEY to have `tokens()` call a real model instead (optional)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator


async def tokens(prompt: str, *, delay_s: float = 0.01, words: int = 30) -> AsyncIterator[str]:
    if os.environ.get("OPENAI_API_KEY"):
        async for token in _openai(prompt):
            yield token
        return
    base = f"Thinking about {prompt!r}: " + " ".join(f"point-{i}" for i in range(words))
    for word in base.split(" "):
        await asyncio.sleep(delay_s)
        yield word + " "


async def _openai(prompt: str) -> AsyncIterator[str]:  # pragma: no cover - needs a key
    import httpx

    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream(
            "POST",
            "https://api.openai.com/v1/chat/completions",
            headers={"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"},
            json={
                "model": os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            },
        ) as response,
    ):
        import json

        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    yield delta
