"""The README's no-build HTML page runs as written, in headless Chromium,
against a real `rayflow dev`: it imports `/client.js` from the server,
streams the run's answer (`readStream`), shows its status (`watchRun`) and
approves it (`sendInput`). The harness only serves the page from another
origin (as a web app would be) and rewrites `127.0.0.1:8000` to the
server's port."""

from __future__ import annotations

import http.server
import re
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from _browser_fixtures import (  # noqa: F401  (fixtures)
    ROOT,
    browser,
    http_server,
    page,
    start_dev_server,
)

pytestmark = pytest.mark.browser

TASKS = """
from pydantic import BaseModel

from rayflow import streams, task

class Approval(BaseModel):
    approved: bool
    reviewer: str

tokens = streams.define("ai-output", str)
approval = streams.input("approval", Approval)

@task(id="readme-html")
async def readme_html(payload: dict) -> dict:
    pipe = tokens.pipe(f"word{i} " for i in range(12))
    await pipe.wait_until_complete()
    decision = await approval.wait(timeout="1h")
    return {"approved": decision.unwrap().approved, "by": decision.unwrap().reviewer}
"""


def html_block() -> str:
    blocks = re.findall(r"^```html\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, f"expected one ```html block in the README, found {len(blocks)}"
    return str(blocks[0])


def test_the_readme_html_page_streams_watches_and_approves_a_run(
    tmp_path: Path,
    page: Any,  # noqa: F811
) -> None:
    module = tmp_path / "readme_html_tasks.py"
    module.write_text(textwrap.dedent(TASKS))
    with start_dev_server(str(module), tmp_path / "data") as dev:
        html = html_block().replace("http://127.0.0.1:8000", dev.url)
        r = httpx.post(
            f"{dev.url}/api/v1/tasks/readme-html/trigger",
            json={"payload": {}},
            headers={"Authorization": f"Bearer {dev.secret_key}"},
            timeout=30,
        )
        r.raise_for_status()
        run_id, token = r.json()["id"], r.headers["x-trigger-jwt"]

        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        with http_server(Page) as site:
            page.goto(f"{site}/page.html?run={run_id}&token={token}")
            expected = "".join(f"word{i} " for i in range(12))
            page.wait_for_function(
                "t => document.getElementById('answer').textContent === t",
                arg=expected,
                timeout=60_000,
            )
            page.wait_for_function(
                "() => document.getElementById('status').textContent === 'WAITING'",
                timeout=60_000,
            )
            page.click("#approve")
            page.wait_for_function(
                "() => document.getElementById('status').textContent === 'COMPLETED'",
                timeout=60_000,
            )
        run = httpx.get(
            f"{dev.url}/api/v3/runs/{run_id}",
            headers={"Authorization": f"Bearer {dev.secret_key}"},
            timeout=10,
        ).json()
        assert run["output"] == {"approved": True, "by": "alice"}, run
