"""The published `@trigger.dev/react-hooks`, bundled into a React page and run
in headless Chromium against rayflow: run subscriptions with their streams,
tag and batch subscriptions, trigger-and-subscribe, input sends — with only
`baseURL` and the token changed. The page is type-checked (`tsc --noEmit`)
against the TypeScript that `GET /rayflow/v1/types.ts` generates from the
Python stream types.

Sync tests in a module of their own: Playwright's sync API keeps an event
loop in the main thread (see tests/_browser_fixtures.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _browser_fixtures import browser, page, static_server  # noqa: F401  (fixtures)
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi
from pydantic import BaseModel
from test_http_node_client import node_sdk  # noqa: F401  (fixture)

import rayflow
from rayflow import metadata, streams, task, wait

pytestmark = [
    pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True),
    pytest.mark.browser,
    pytest.mark.node,
]

PAGES = Path(__file__).resolve().parent / "node" / "pages"


class HooksProgress(BaseModel):
    percent: int
    step: str


class HooksGo(BaseModel):
    approved: bool


hooks_progress = streams.define("hooks-progress", HooksProgress)
hooks_go = streams.input("hooks-go", HooksGo)


@task(id="hooks-lifecycle")
async def hooks_lifecycle(payload: dict) -> dict:  # type: ignore[type-arg]
    await hooks_progress.append(HooksProgress(percent=10, step="draft"))
    metadata.set("progress", 10)
    decision = await hooks_go.wait(timeout="120s")  # WAITING: the run holds no process
    # a revival takes milliseconds now (recycled RunActors): stay EXECUTING
    # long enough for the page to be pushed that state before COMPLETED
    await asyncio.sleep(1.0)
    metadata.set("progress", 100)
    await hooks_progress.append(HooksProgress(percent=100, step="done"))
    return {"approved": bool(decision.output and decision.output.approved)}


hooks_tokens = streams.define("hooks-tokens", dict)


@task(id="hooks-token")
async def hooks_token(payload: dict) -> dict:  # type: ignore[type-arg]
    token = await wait.create_token(timeout="120s")
    await hooks_tokens.append({"id": token.id, "pat": token.public_access_token})
    result = await wait.for_token(token)  # WAITING: the run holds no process
    return {"ok": result.ok, "output": result.output}


@task(id="hooks-quick")
async def hooks_quick(payload: dict) -> dict:  # type: ignore[type-arg]
    metadata.set("n", payload["n"])
    return {"n": payload["n"]}


@pytest.fixture(scope="module")
def hooks_page(http_api: HttpApi, node_sdk: Path) -> Iterator[str]:  # noqa: F811
    """The page, type-checked against the generated stream types and bundled;
    yields the URL it is served at."""
    build = node_sdk / ".build"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(PAGES, build)
    types = httpx.get(
        f"{http_api.url}/rayflow/v1/types.ts",
        headers={"Authorization": f"Bearer {http_api.secret_key}"},
    )
    assert types.status_code == 200, types.text
    assert "export type HooksProgress = " in types.text
    (build / "rayflow-types.ts").write_text(types.text)
    (build / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "target": "ES2022",
                    "module": "ESNext",
                    "moduleResolution": "Bundler",
                    "jsx": "react-jsx",
                    "strict": True,
                    "noEmit": True,
                    "skipLibCheck": True,
                    "lib": ["ES2022", "DOM", "DOM.Iterable"],
                },
                "files": ["hooks.tsx"],
            }
        )
    )
    tsc = subprocess.run(
        ["node", str(node_sdk / "node_modules" / "typescript" / "bin" / "tsc"), "-p", str(build)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tsc.returncode == 0, f"tsc --noEmit failed:\n{tsc.stdout}\n{tsc.stderr}"
    bundle = subprocess.run(
        [
            str(node_sdk / "node_modules" / ".bin" / "esbuild"),
            str(build / "hooks.tsx"),
            "--bundle",
            "--format=esm",
            "--jsx=automatic",
            "--external:node:*",  # the SDK imports node:http2 lazily, never in a browser
            '--define:process.env.NODE_ENV="production"',
            f"--outfile={build / 'hooks.js'}",
            "--log-level=warning",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bundle.returncode == 0, bundle.stderr
    with static_server(build) as url:
        yield f"{url}/hooks.html"


def open_view(page: Any, base: str, api: HttpApi, token: str, **params: str) -> None:  # noqa: F811
    query = "&".join(f"{k}={v}" for k, v in {"baseURL": api.url, "token": token, **params}.items())
    page.goto(f"{base}?{query}")


def read_json(page: Any, element_id: str) -> Any:  # noqa: F811
    return json.loads(page.text_content(f"#{element_id}") or "null")


def wait_json(page: Any, element_id: str, condition: str, timeout_s: float = 60) -> Any:  # noqa: F811
    """Wait until `condition` (JS, over `v` = the element's JSON) holds."""
    page.wait_for_function(
        f"() => {{ const el = document.getElementById({json.dumps(element_id)});"
        " if (!el) return false;"
        f" const v = JSON.parse(el.textContent || 'null'); return {condition}; }}",
        timeout=timeout_s * 1000,
    )
    return read_json(page, element_id)


def test_use_realtime_run_with_streams_follows_a_run_through_a_wait(
    page: Any,  # noqa: F811
    hooks_page: str,
    http_api: HttpApi,
) -> None:
    handle = hooks_lifecycle.trigger({}).result()
    open_view(page, hooks_page, http_api, handle.public_access_token, view="run", runId=handle.id)
    run = wait_json(page, "run", "v && v.status === 'WAITING'")
    assert run["metadata"] == {"progress": 10}
    assert "hooks-progress" in run["realtimeStreams"]
    wait_json(page, "streams", "v['hooks-progress'] && v['hooks-progress'].length === 1")
    page.click("#send")  # useInputStreamSend
    run = wait_json(page, "run", "v && v.status === 'COMPLETED'")
    assert run["output"] == {"approved": True} and run["isSuccess"] is True
    assert run["metadata"] == {"progress": 100}
    assert run["finishedAt"] is not None
    streamed = wait_json(page, "streams", "v['hooks-progress'] && v['hooks-progress'].length === 2")
    assert streamed["hooks-progress"] == [
        {"percent": 10, "step": "draft"},
        {"percent": 100, "step": "done"},
    ]
    assert read_json(page, "parts") == streamed["hooks-progress"]  # useRealtimeStream
    # the page may open before the run suspends (EXECUTING first) or after
    # (WAITING first); then WAITING, then (the send revives it) QUEUED /
    # EXECUTING, then COMPLETED, each pushed as it happened (React may render
    # a short-lived status or not: the SDK test sees every one)
    statuses = page.evaluate("window.statuses")
    waiting = statuses.index("WAITING")
    assert set(statuses[:waiting]) <= {"QUEUED", "EXECUTING"}, statuses
    assert statuses[-1] == "COMPLETED", statuses
    assert {"QUEUED", "EXECUTING"} & set(statuses[waiting + 1 : -1]), statuses
    assert read_json(page, "error") is None or page.text_content("#error") == ""


def test_use_realtime_runs_with_tag_sees_new_runs_and_their_metadata(
    page: Any,  # noqa: F811
    hooks_page: str,
    http_api: HttpApi,
) -> None:
    tag = f"hooks-{uuid.uuid4().hex[:8]}"
    token = rayflow.auth.create_public_token(scopes=[f"read:tags:{tag}"])
    open_view(page, hooks_page, http_api, token, view="tag", tag=tag)
    wait_json(page, "runs", "Array.isArray(v)")
    ids = [hooks_quick.trigger({"n": n}, tags=[tag]).result().id for n in (1, 2)]
    runs = wait_json(
        page, "runs", "v.length === 2 && v.every(r => r.status === 'COMPLETED' && r.metadata)"
    )
    assert {r["id"]: r["metadata"] for r in runs} == {ids[0]: {"n": 1}, ids[1]: {"n": 2}}


def test_use_realtime_batch_follows_every_run_of_a_batch(
    page: Any,  # noqa: F811
    hooks_page: str,
    http_api: HttpApi,
) -> None:
    r = httpx.post(
        f"{http_api.url}/api/v1/tasks/hooks-quick/batch",
        headers={"Authorization": f"Bearer {http_api.secret_key}"},
        json={"items": [{"payload": {"n": n}} for n in (5, 6, 7)]},
    )
    assert r.status_code == 200, r.text
    open_view(
        page,
        hooks_page,
        http_api,
        r.headers["x-trigger-jwt"],
        view="batch",
        batchId=r.json()["batchId"],
    )
    runs = wait_json(page, "runs", "v.length === 3 && v.every(r => r.status === 'COMPLETED')")
    assert sorted(run["output"]["n"] for run in runs) == [5, 6, 7]


def test_use_realtime_task_trigger_triggers_and_subscribes(
    page: Any,  # noqa: F811
    hooks_page: str,
    http_api: HttpApi,
) -> None:
    token = rayflow.auth.create_public_token(scopes=["trigger:tasks:hooks-quick"])
    open_view(page, hooks_page, http_api, token, view="trigger", taskId="hooks-quick")
    page.click("#trigger")
    run = wait_json(page, "run", "v && v.status === 'COMPLETED'")
    assert run["output"] == {"n": 3} and run["metadata"] == {"n": 3}
    assert read_json(page, "handle")["id"] == run["id"]


def test_use_wait_token_completes_a_token_a_suspended_run_waits_on(
    page: Any,  # noqa: F811
    hooks_page: str,
    http_api: HttpApi,
) -> None:
    handle = hooks_token.trigger({}).result()
    made = next(iter(hooks_tokens.read(handle.id, timeout_s=30)))
    for _ in range(600):
        if rayflow.runs.retrieve(handle.id).result().status == "WAITING":
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"run {handle.id} did not suspend on its wait token")
    # the browser holds only the token's own public access token
    open_view(page, hooks_page, http_api, made["pat"], view="token", tokenId=made["id"])
    page.click("#complete")
    assert wait_json(page, "completed", "v === true") is True
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert run.output == {"ok": True, "output": {"approved": True, "by": "browser"}}
    assert page.text_content("#error") == ""
