"""A chat agent: user messages in through an input stream, assistant tokens
out through an output stream, and `.wait()` between turns — an idle chat
holds no process, however long the user takes to answer.

Each turn pipes the model's tokens: they stream live to every reader, and
the pipe's completion is journaled. A `.wait()` revives the run by running
it again from the top; a pipe the journal recorded as complete returns at
once without starting its generator, so the model is called once per turn
(not once more per later turn) and an answer never changes once streamed.

    python examples/chat_agent.py
"""

from __future__ import annotations

from fake_llm import tokens

import rayflow
from rayflow import streams, task

user = streams.input("user", str)
assistant = streams.define("assistant", str)


@task(id="chat-agent")
async def chat_agent(payload: dict) -> dict:
    history: list[str] = []
    while True:
        message = await user.wait(timeout="1d")  # suspended between turns
        if not message.ok or message.output == "bye":
            break
        # a real model would be given `history` too
        pipe = assistant.pipe(tokens(message.output, delay_s=0.002, words=5))
        # the tee: the tokens as they pass (on replay, read back from the stream)
        reply = "".join([token async for token in pipe.stream])
        await pipe.wait_until_complete()  # journaled: replays never call the model again
        await assistant.append("\n")  # end of this turn's answer
        history += [message.output, reply]
    return {"turns": len(history) // 2}


def main() -> None:
    rayflow.init()
    handle = chat_agent.trigger({}).result()
    print("chat", handle.id)
    reader = iter(assistant.read(handle.id, timeout_s=60))
    for question in ("hello", "what is rayflow?"):
        while rayflow.runs.retrieve(handle.id).result().status != "WAITING":
            pass  # between turns the run is suspended: no actor, no process
        print("user:", question, "(the run was WAITING)")
        user.send(handle.id, question).result()
        answer = ""
        for token in reader:
            if token == "\n":
                break
            answer += token
        print("assistant:", answer.strip())
    user.send(handle.id, "bye").result()
    run = rayflow.runs.wait(handle.id).result()
    print("result:", run.status, run.output)
    assert run.output == {"turns": 2}, run


if __name__ == "__main__":
    main()
