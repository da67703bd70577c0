"""A FastAPI route outside any task piping into a run's stream: a webhook
receiver forwards what it gets into a running task's `events` stream, with
the async form of the API (`await streams.append(...)`).

    python examples/fastapi_pipe.py
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

import rayflow
from rayflow import streams, task

events = streams.define("events", dict)
done = streams.input("done", dict)

app = FastAPI()


@app.post("/webhook/{run_id}")
async def webhook(run_id: str, body: dict) -> dict:
    # outside any task: the run id is the target
    index = await events.append(body, target=run_id)
    return {"stored_as": index}


@task(id="collect-webhooks")
async def collect_webhooks(payload: dict) -> dict:
    (await done.wait(timeout="1h")).unwrap()
    return {"collected": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    rayflow.init()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    handle = collect_webhooks.trigger({}).result()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for i in range(3):
            print("webhook:", client.post(f"/webhook/{handle.id}", json={"delivery": i}).json())
    done.send(handle.id, {}).result()
    got = list(events.read(handle.id, timeout_s=30))
    print("events in the run's stream:", got)
    run = rayflow.runs.wait(handle.id).result()
    print("result:", run.status, run.output)
    server.should_exit = True
    assert got == [{"delivery": i} for i in range(3)], got
    asyncio.run(asyncio.sleep(0))


if __name__ == "__main__":
    main()
