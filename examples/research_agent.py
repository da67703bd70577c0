"""The research agent: researches in steps, takes follow-up questions while it
works (`.on()`), stops on a wrap-up, then streams a report.

    python examples/research_agent.py
"""

from __future__ import annotations

import asyncio

from fake_llm import tokens

import rayflow
from rayflow import step, streams, task

status = streams.define("status", dict)  # {"percent": ..., "note": ...}
report = streams.define("report", str)
follow_up = streams.input("follow-up", str)
wrap_up = streams.input("wrap-up", dict)


async def research(topic: str) -> str:
    words = [t async for t in tokens(topic, delay_s=0.005, words=5)]
    return "".join(words).strip()


@task(id="research-agent", max_duration="10m")
async def research_agent(payload: dict) -> dict:
    questions: list[str] = [payload["topic"]]
    done = asyncio.Event()
    follow_up.on(questions.append)
    wrap_up.on(lambda _: done.set())
    findings: list[str] = []
    asked = 0
    while not done.is_set() or asked < len(questions):
        if asked < len(questions):
            question = questions[asked]
            asked += 1
            findings.append(await step(f"research:{question}", research, question))
            await status.append({"percent": min(90, 10 * asked), "note": f"researched {question}"})
        else:
            await asyncio.sleep(0.05)
        if asked >= payload.get("max_questions", 20):
            break
    await status.append({"percent": 95, "note": "writing the report"})
    pipe = report.pipe(tokens(f"a report on {len(findings)} findings", delay_s=0.002))
    await pipe.wait_until_complete()
    await status.append({"percent": 100, "note": "done"})
    return {"questions": questions[:asked], "findings": len(findings)}


def main() -> None:
    rayflow.init()
    handle = research_agent.trigger({"topic": "durable execution"}).result()
    print("run", handle.id)
    reader = iter(status.read(handle.id, timeout_s=60))
    print("status:", next(reader))
    follow_up.send(handle.id, "how does Ray spill objects?").result()
    follow_up.send(handle.id, "what does Trigger.dev do?").result()
    wrap_up.send(handle.id, {}).result()
    for chunk in reader:
        print("status:", chunk)
    print("report:", "".join(report.read(handle.id, timeout_s=30)))
    run = rayflow.runs.retrieve(handle.id).result()
    print("result:", run.status, run.output)
    assert run.status == "COMPLETED", run.error


if __name__ == "__main__":
    main()
