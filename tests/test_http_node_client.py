"""Trigger.dev's published Node client, unmodified, against rayflow's Serve app.

tests/node/sdk_client.mjs drives `@trigger.dev/sdk` (4.x, installed from
the npm registry by the fixture below): its own SSE stream reader
(`streams.read`), its input-stream sender (`streams.input().send`), its
`tasks.trigger` (whose token comes from our `x-trigger-jwt` header) and its
v1 stream writer. Only the base URL and the token differ from using
Trigger.dev's cloud.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _ci import skip_or_fail
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, trigger, wait_finished

import rayflow

pytestmark = [
    pytest.mark.parametrize("rf", ["sqlite"], indirect=True),
    pytest.mark.node,
]

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node_sdk() -> Path:
    """tests/node with its npm packages installed (once, from the registry)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_or_fail("Node.js and npm are needed for the npm-client tests")
    needed = [
        "@trigger.dev/sdk",
        "@trigger.dev/react-hooks",
        "@ai-sdk/react",
        "ai",
        "esbuild",
        "react-dom",
        "typescript",
    ]
    if not all((NODE_DIR / "node_modules" / name).is_dir() for name in needed):
        lock = (NODE_DIR / "package-lock.json").exists()
        proc = subprocess.run(
            ["npm", "ci" if lock else "install", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            pytest.fail(f"npm install in {NODE_DIR} failed:\n{proc.stderr[-2000:]}")
    return NODE_DIR


async def run_node(
    node_dir: Path,
    command: dict[str, Any],
    timeout_s: float = 90,
    *,
    fails: bool = False,
    script: str = "sdk_client.mjs",
) -> list[Any]:
    """Run one sdk_client.mjs command (or `script`'s); returns its JSON
    lines. Unless `fails`, the command must succeed."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        script,
        json.dumps(command),
        cwd=node_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node {command.get('op', script)} did not finish within {timeout_s} s")
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    if fails:
        assert proc.returncode != 0 and lines and lines[-1]["type"] == "error", lines
        return lines
    assert proc.returncode == 0 and lines and lines[-1]["type"] == "end", (
        f"node {command.get('op', script)} failed: {lines[-3:]}\n{err.decode()[-2000:]}"
    )
    return lines


def chunks_of(lines: list[Any]) -> list[Any]:
    return [line["data"] for line in lines if line["type"] == "chunk"]


async def test_sdk_stream_reader_gets_every_chunk_of_a_live_run(
    http_tasks: HttpApi, node_sdk: Path
) -> None:
    run_id, token = await trigger(http_tasks, "http-emit", {"n": 120, "delay_s": 0.02})
    lines = await run_node(
        node_sdk,
        {"op": "read", "baseURL": http_tasks.url, "token": token, "runId": run_id},
    )
    assert chunks_of(lines) == [{"i": i} for i in range(120)]
    run = await rayflow.runs.retrieve(run_id)
    assert run.status == "COMPLETED"  # the reader ended because the stream closed


async def test_sdk_stream_reader_starts_at_start_index_in_the_middle(
    http_tasks: HttpApi, node_sdk: Path
) -> None:
    run_id, token = await trigger(http_tasks, "http-emit", {"n": 80, "delay_s": 0.02})
    lines = await run_node(
        node_sdk,
        {
            "op": "read",
            "baseURL": http_tasks.url,
            "token": token,
            "runId": run_id,
            "startIndex": 30,
        },
    )
    assert chunks_of(lines) == [{"i": i} for i in range(30, 80)]


async def test_sdk_input_stream_send_reaches_the_task_with_the_run_token(
    http_tasks: HttpApi, node_sdk: Path
) -> None:
    run_id, token = await trigger(http_tasks, "http-approve", {"count": 1})
    lines = await run_node(
        node_sdk,
        {
            "op": "send",
            "baseURL": http_tasks.url,
            "token": token,
            "runId": run_id,
            "streamId": "approval",
            "data": {"approved": True, "reviewer": "node"},
        },
    )
    assert lines[0] == {"type": "sent"}
    run = await wait_finished(run_id)
    assert run.status == "COMPLETED", run.error
    assert run.output == {"received": [{"approved": True, "reviewer": "node"}]}
    # the SDK sees our refusal of a send to a finished run as Trigger.dev's
    failed = await run_node(
        node_sdk,
        {
            "op": "send",
            "baseURL": http_tasks.url,
            "token": token,
            "runId": run_id,
            "streamId": "approval",
            "data": {"approved": False, "reviewer": "late"},
        },
        fails=True,
    )
    assert failed[-1]["status"] == 400
    assert "Cannot send to input stream on a completed run" in failed[-1]["message"]


async def test_sdk_trigger_token_from_x_trigger_jwt_alone_reads_the_run(
    http_tasks: HttpApi, node_sdk: Path
) -> None:
    triggered = await run_node(
        node_sdk,
        {
            "op": "trigger",
            "baseURL": http_tasks.url,
            "token": http_tasks.secret_key,
            "taskId": "http-emit",
            "payload": {"n": 25, "key": "tokens"},
        },
    )
    handle = triggered[0]
    assert handle["type"] == "triggered" and handle["id"].startswith("run_")
    token = handle["publicAccessToken"]
    assert token != http_tasks.secret_key
    lines = await run_node(
        node_sdk,
        {
            "op": "read",
            "baseURL": http_tasks.url,
            "token": token,
            "runId": handle["id"],
            "key": "tokens",
        },
    )
    assert chunks_of(lines) == [{"i": i} for i in range(25)]
    run = await wait_finished(handle["id"])
    assert run.payload == {"n": 25, "key": "tokens"}  # superjson payload decoded


async def test_sdk_v1_stream_writer_pipes_into_a_running_run(
    http_tasks: HttpApi, node_sdk: Path
) -> None:
    run_id, _ = await trigger(http_tasks, "http-hold", {"hold_s": 60})
    chunks = [{"token": f"t{i}"} for i in range(40)]
    await run_node(
        node_sdk,
        {
            "op": "pipe",
            "baseURL": http_tasks.url,
            "token": http_tasks.secret_key,
            "runId": run_id,
            "key": "piped",
            "chunks": chunks,
        },
    )
    got = []
    async for chunk in rayflow.streams.read(run_id, "piped", timeout_s=2):
        got.append(chunk)
    assert got == chunks
    await rayflow.runs.cancel(run_id)
