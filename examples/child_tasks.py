"""Child tasks piping into their parent's stream: a parent fans work out to
children with `trigger_and_wait`; each child streams its progress straight
into the parent's `progress` stream (`target="parent"`), so a frontend that
watches the parent sees everything.

    python examples/child_tasks.py
"""

from __future__ import annotations

import rayflow
from rayflow import streams, task

progress = streams.define("progress", dict)


@task(id="summarize-chapter")
async def summarize_chapter(payload: dict) -> str:
    for percent in (50, 100):
        await progress.append({"chapter": payload["chapter"], "percent": percent}, target="parent")
    return f"summary of chapter {payload['chapter']}"


@task(id="summarize-book")
async def summarize_book(payload: dict) -> dict:
    summaries = []
    for chapter in range(1, payload["chapters"] + 1):
        result = await summarize_chapter.trigger_and_wait({"chapter": chapter})
        summaries.append(result.unwrap())
    await progress.append({"chapter": "all", "percent": 100})
    return {"summaries": summaries}


def main() -> None:
    rayflow.init()
    handle = summarize_book.trigger({"chapters": 3}).result()
    for chunk in progress.read(handle.id, timeout_s=60):
        print("progress:", chunk)
    run = rayflow.runs.wait(handle.id).result()
    print("result:", run.status, run.output)
    assert len(run.output["summaries"]) == 3, run


if __name__ == "__main__":
    main()
