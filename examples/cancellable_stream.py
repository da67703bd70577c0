"""Cancellable streaming: tokens are piped to an output stream while `.on()`
listens on a cancel stream; a cancel message stops the generator.

    python examples/cancellable_stream.py
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fake_llm import tokens

import rayflow
from rayflow import streams, task

ai_output = streams.define("ai-output", str)
cancel = streams.input("cancel", dict)


@task(id="cancellable-stream")
async def cancellable_stream(payload: dict) -> dict:
    stop = asyncio.Event()
    cancel.on(lambda _: stop.set())

    async def until_canceled(source: AsyncIterator[str]) -> AsyncIterator[str]:
        async for token in source:
            if stop.is_set():
                return
            yield token

    source = tokens(payload["prompt"], delay_s=0.05, words=payload.get("words", 400))
    pipe = ai_output.pipe(until_canceled(source))
    sent = await pipe.wait_until_complete()
    return {"tokens": sent, "canceled": stop.is_set()}


def main() -> None:
    rayflow.init()
    handle = cancellable_stream.trigger({"prompt": "a very long essay"}).result()
    print("run", handle.id)
    received = []
    for token in ai_output.read(handle.id, timeout_s=60):
        received.append(token)
        if len(received) == 10:
            cancel.send(handle.id, {"reason": "user pressed stop"}).result()
    run = rayflow.runs.wait(handle.id).result()
    print("received", len(received), "tokens; result:", run.output)
    assert run.output["canceled"] is True and run.output["tokens"] < 400


if __name__ == "__main__":
    main()
