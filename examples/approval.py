"""Publish a post after a human approves it: `.wait(timeout="7d")` suspends
the run, so a pending approval holds no process however long it takes.

    python examples/approval.py
"""

from __future__ import annotations

from pydantic import BaseModel

import rayflow
from rayflow import step, streams, task


class Approval(BaseModel):
    approved: bool
    reviewer: str


approval = streams.input("approval", Approval)
progress = streams.define("progress", dict)


async def prepare_draft(post_id: str) -> str:
    return f"draft of {post_id}"


@task(id="publish-post")
async def publish_post(payload: dict) -> dict:
    draft = await step("prepare", prepare_draft, payload["post_id"])
    await progress.append({"step": "draft", "percent": 50})
    result = await approval.wait(timeout="7d")
    if not result.ok:
        await progress.append({"step": "expired", "percent": 100})
        return {"published": False, "reason": "no decision within 7 days"}
    decision = result.unwrap()
    await progress.append({"step": "decided", "percent": 100})
    return {"published": decision.approved, "reviewer": decision.reviewer, "draft": draft}


def main() -> None:
    rayflow.init()
    handle = publish_post.trigger({"post_id": "p1"}).result()
    print("run", handle.id)
    reader = iter(progress.read(handle.id, timeout_s=60))
    print("progress:", next(reader))
    while rayflow.runs.retrieve(handle.id).result().status != "WAITING":
        pass
    print("status: WAITING — the run holds no process now")
    approval.send(handle.id, {"approved": True, "reviewer": "alice"}).result()
    for chunk in reader:
        print("progress:", chunk)
    run = rayflow.runs.wait(handle.id).result()
    print("result:", run.status, run.output)
    assert run.output["published"] is True, run


if __name__ == "__main__":
    main()
