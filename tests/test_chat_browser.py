"""AI SDK `useChat` (`ai` 7, `@ai-sdk/react`) with Trigger.dev's
`TriggerChatTransport` (`@trigger.dev/sdk` 4.8.3) in headless Chromium,
against a Python chat agent (`rayflow.chat`): only the base URL and the
token differ from Trigger.dev's cloud. Beside it on the page,
`useSessionStream` (`@trigger.dev/react-hooks`) follows the session's `.out`
and `useSessionStreamChannel` its `chat.snapshot` side channel.

One conversation covers what a user does: turns answered while the run
holds no process between them; a reload mid-answer that resumes the turn
without losing or repeating a chunk; a stop mid-answer; a second tab that
carries the conversation on, while the first tab's `useSessionStream` sees
its answer too. The model (`chat.FakeModel`) counts its calls: once per turn.

Sync tests in a module of their own: Playwright's sync API keeps an event
loop in the main thread (see tests/_browser_fixtures.py).
"""

from __future__ import annotations

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
from test_http_node_client import node_sdk  # noqa: F401  (fixture)

import rayflow
from rayflow import chat, sessions

pytestmark = [
    pytest.mark.parametrize("rf", ["sqlite", "postgres"], indirect=True),
    pytest.mark.browser,
    pytest.mark.node,
]

PAGES = Path(__file__).resolve().parent / "node" / "pages"
TASK = "browser-chat"


@chat.agent(id=TASK, idle_timeout="300s")
async def browser_chat(turn: chat.Turn):  # type: ignore[no-untyped-def]
    said = turn.message.text if turn.message else ""
    # "slow …" streams for a few seconds: long enough to reload or stop mid-answer
    model = chat.FakeModel(
        words=120 if said.startswith("slow") else 8,
        delay_s=0.03 if said.startswith("slow") else 0.0,
        calls=turn.metadata["calls"],
    )
    async for piece in model.stream(turn.messages):
        yield piece


@pytest.fixture(scope="module")
def chat_page(node_sdk: Path) -> Iterator[str]:  # noqa: F811
    """The page, type-checked and bundled; yields the URL it is served at."""
    build = node_sdk / ".build-chat"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    for name in ("chat.tsx", "chat.html"):
        shutil.copy(PAGES / name, build / name)
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
                "files": ["chat.tsx"],
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
            str(build / "chat.tsx"),
            "--bundle",
            "--format=esm",
            "--jsx=automatic",
            "--external:node:*",
            '--define:process.env.NODE_ENV="production"',
            f"--outfile={build / 'chat.js'}",
            "--log-level=warning",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bundle.returncode == 0, bundle.stderr
    with static_server(build) as url:
        yield f"{url}/chat.html"


def wait_json(page: Any, element_id: str, condition: str, timeout_s: float = 60) -> Any:  # noqa: F811
    """Wait until `condition` (JS, over `v` = the element's JSON) holds; returns `v`."""
    page.wait_for_function(
        f"() => {{ const el = document.getElementById({json.dumps(element_id)});"
        " if (!el || !el.textContent) return false;"
        f" const v = JSON.parse(el.textContent); return {condition}; }}",
        timeout=timeout_s * 1000,
    )
    return json.loads(page.text_content(f"#{element_id}") or "null")


def say(page: Any, text: str) -> None:  # noqa: F811
    page.fill("#text", text)
    page.click("#send")


def run_status(session_id: str) -> str:
    run_id = sessions.retrieve(session_id).result().current_run_id
    return rayflow.runs.retrieve(run_id).result().status


def wait_status(session_id: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while run_status(session_id) != status:
        assert time.monotonic() < deadline, f"the run never reached {status}"
        time.sleep(0.05)


def test_use_chat_talks_to_a_python_agent_through_reload_stop_and_a_second_tab(
    page: Any,  # noqa: F811
    chat_page: str,
    http_api: HttpApi,
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls"
    model = chat.FakeModel(calls=calls)
    chat_id = f"chat-{uuid.uuid4().hex[:8]}"
    # what the app's server does: create the session (its first run preloads)
    created = httpx.post(
        f"{http_api.url}/api/v1/sessions",
        headers=http_api.headers(),
        json={
            "type": "chat.agent",
            "externalId": chat_id,
            "taskIdentifier": TASK,
            "triggerConfig": {"basePayload": {"chatId": chat_id, "trigger": "preload"}},
        },
    )
    assert created.is_success and created.json()["isCached"] is False, created.text
    session_id = created.json()["id"]
    query = {
        "baseURL": http_api.url,
        "token": created.json()["publicAccessToken"],
        "chatId": chat_id,
        "task": TASK,
        "clientData": json.dumps({"calls": str(calls)}),
    }
    page.goto(str(httpx.URL(chat_page, params=query)))
    quick, slow = chat.FakeModel(words=8), chat.FakeModel(words=120)
    history: list[chat.UIMessage] = []

    def answered(tab: Any, n: int, done: str = "true") -> list[dict[str, Any]]:
        wait_json(
            tab,
            "messages",
            f"v.length === {2 * n} && v[{2 * n - 1}].role === 'assistant' && ({done})",
        )
        wait_json(tab, "status", "v === 'ready'")
        return json.loads(tab.text_content("#messages") or "[]")

    # turn 1, then the run suspends: no process until the next message
    say(page, "hello")
    history.append(chat.user_message("u", "hello"))
    assert answered(page, 1)[1]["text"] == quick.answer(history)
    wait_status(session_id, "WAITING")

    # turn 2 (the run revived): reloaded mid-answer, the page resumes the turn
    # from its start (the transport's cursor) — whole, no chunk lost or repeated
    say(page, "slow story")
    history.append(chat.user_message("u", "slow story"))
    wait_json(page, "messages", "v.length === 4 && v[3].text.includes(' w5')")
    page.reload()
    shown = answered(page, 2, "v[3].text.includes(' w119')")
    assert shown[3]["text"] == slow.answer(history)
    assert [m["role"] for m in shown] == ["user", "assistant"] * 2
    wait_json(page, "snapshot", "v === 4")  # useSessionStreamChannel: the agent's snapshot
    wait_status(session_id, "WAITING")

    # a second tab on the same chat (the app's stored state: the transport's
    # session and the messages) carries it on; the first tab's useSessionStream
    # sees that answer's records as they come
    before = len(wait_json(page, "records", "v.length > 0"))
    other = page.context.new_page()
    other.goto(str(httpx.URL(chat_page, params=query)))
    wait_json(other, "messages", "v.length === 4")
    say(other, "third")
    history.append(chat.user_message("u", "third"))
    assert answered(other, 3)[5]["text"] == quick.answer(history)
    records = wait_json(page, "records", f"v.length > {before} && v.at(-1) === 'finish'")
    assert records[before:][:3] == ["start", "start-step", "text-start"], records[before:]
    wait_json(page, "snapshot", "v === 6")
    control = wait_json(page, "control", "v && v.seqNum > 0")
    assert control["subtype"] == "turn-complete"
    assert [h[0] for h in control["headers"]][1:] == ["public-access-token", "session-in-event-id"]
    # the transport took the refreshed token from the turn-complete (its
    # onSessionChange state, which the page keeps): it reads and writes the chat
    stored = json.loads(page.evaluate(f"localStorage.getItem('chat-session:{chat_id}')"))
    assert stored["publicAccessToken"] != query["token"]
    r = httpx.get(
        f"{http_api.url}/api/v1/sessions/{chat_id}",
        headers={"Authorization": f"Bearer {stored['publicAccessToken']}"},
    )
    assert r.is_success and r.json()["id"] == session_id, r.text

    # turn 4: stopped mid-answer; the answer keeps what streamed, and the run waits again
    wait_status(session_id, "WAITING")
    say(other, "slow again")
    history.append(chat.user_message("u", "slow again"))
    wait_json(other, "messages", "v.length === 8 && v[7].text.includes(' w3')")
    other.click("#stop")
    wait_json(other, "status", "v === 'ready'")
    wait_status(session_id, "WAITING")
    partial = json.loads(other.text_content("#messages") or "[]")[7]["text"]
    assert slow.answer(history).startswith(partial) and " w119" not in partial
    for tab in (page, other):
        for errors in ("#error", "#records-error", "#snapshot-error"):
            assert tab.text_content(errors) == "", (errors, tab.text_content(errors))
    assert model.call_count() == 4  # once per turn: revivals never called it again
    other.close()
