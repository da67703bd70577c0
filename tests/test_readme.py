"""The README's Python snippets run as written, and quickly.

The four ```python blocks are taken from README.md as they are: the
five-minute tour (embedded rayflow), then, in the same process, the HTTP
client against the API that process serves, then the FastAPI route that
awaits the client (called in-process through httpx's ASGI transport), then
the chat agent, answering one message of a session. The
harness adds only what the README leaves to the reader: the two helpers the
tour's task calls (`prepare_draft`, `generate`), starting the HTTP API,
`SECRET_KEY` and `RAYFLOW_SECRET_KEY` for the route. The
API listens on a free port: the snippet's `127.0.0.1:8000` is rewritten to
it. A tour that waits out its read's idle timeout (60 s) before it sends
the approval fails the time limit.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from _embedded import run_script

README = Path(__file__).resolve().parent.parent / "README.md"

#: the tour must not stall: far below the 60 s idle timeout of its read
TOUR_LIMIT_S = 40.0

HELPERS = """
import time as _time
_started = _time.monotonic()

def prepare_draft(post_id):
    return f"a draft for {post_id}"

def generate(draft):
    yield from draft.split()
"""

BRIDGE = """
print(f"tour took {_time.monotonic() - _started:.1f} s")
from serve import app as _serve_app

_settings = rayflow.init()
_serve_app.start(_settings)
SECRET_KEY = _settings.secret_key
"""


ROUTE_CALL = """
import asyncio as _asyncio
import httpx as _httpx

async def _call_route():
    transport = _httpx.ASGITransport(app=api)
    async with _httpx.AsyncClient(transport=transport, base_url="http://backend") as c:
        r = await c.post("/posts/p2/publish")
        r.raise_for_status()
        return r.json()

_route = _asyncio.run(_call_route())
print("route:", sorted(_route), _route["run"].startswith("run_"), bool(_route["token"]))
"""


CHAT_CALL = """
from rayflow import sessions as _sessions

_first = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}
_started = _sessions.start(
    type="chat.agent",
    task_id="ai-chat",
    external_id="readme-chat",
    trigger_config={"base_payload": {"chatId": "readme-chat", "trigger": "submit-message",
                                     "message": _first}},
).result()
_text, _at, _done = "", 0, False
while not _done:
    _page = _sessions.open(_started.id).output.read(start=_at, wait_s=30).result()
    assert _page.records, "the chat agent wrote no turn-complete"
    for _record in _page.records:
        _at = _record.seq_num + 1
        if _record.control == "turn-complete":
            _done = True
        elif _record.value()["type"] == "text-delta":
            _text += _record.value()["delta"]
print("chat:", _text)
"""


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_has_the_tour_and_the_client_snippets() -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 4, f"expected the tour, two client snippets, a chat, found {len(blocks)}"
    assert "rayflow.init()" in blocks[0] and "publish_post.trigger" in blocks[0]
    assert "from rayflow.client import Client" in blocks[1]
    assert "await rayflow_client.trigger" in blocks[2] and "FastAPI" in blocks[2]
    assert "@chat.agent" in blocks[3]


def test_readme_snippets_run_as_written_and_quickly(tmp_path: Path) -> None:
    tour, client, route, chat = python_blocks(README.read_text())
    port = free_port()
    assert "http://127.0.0.1:8000" in client and "http://127.0.0.1:8000" in route
    client = client.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
    route = route.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
    script = tmp_path / "readme_snippets.py"
    key = '\nimport os as _os\n_os.environ["RAYFLOW_SECRET_KEY"] = SECRET_KEY\n'
    script.write_text(
        HELPERS
        + tour
        + BRIDGE
        + client
        + '\nprint("token:", bool(token))\n'
        + key
        + route
        + ROUTE_CALL
        + chat
        + CHAT_CALL
    )
    stdout = run_script(script, tmp_path, env={"RAYFLOW_HTTP_PORT": str(port)})
    lines = stdout.splitlines()
    # the tour: the progress chunk, then the run's output once approved
    assert "{'step': 'draft', 'percent': 50}" in lines, stdout
    assert "{'published': True}" in lines, stdout
    took = next(float(m.group(1)) for line in lines if (m := re.match(r"tour took (\S+) s", line)))
    assert took < TOUR_LIMIT_S, f"the tour stalled: {took} s\n{stdout}"
    # the client: a second run, approved over HTTP, seen COMPLETED, a token minted
    tail = lines[lines.index(f"tour took {took:.1f} s") :]
    assert "{'step': 'draft', 'percent': 50}" in tail, stdout
    assert any(line.startswith("COMPLETED") for line in tail), stdout
    assert "token: True" in tail, stdout
    # the FastAPI route: a third run triggered with `await`, its token for the page
    assert "route: ['run', 'token'] True True" in tail, stdout
    # the chat agent: its first answer, as the fake model gives it
    assert any(line.startswith("chat: [1] you said: hi | w0") for line in tail), stdout
