"""The dashboard and /client.js in real headless Chromium (Debian's `chromium` + Playwright).

`scripts/browser.sh` installs both when missing. The end-to-end test starts
`rayflow dev` with the research agent example as a subprocess on a free
loopback port and drives the dashboard like a user: trigger, watch chunks,
send a follow-up and a wrap-up from the page, see the run complete. Its
screenshot is saved to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from _browser_fixtures import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    RESEARCH_AGENT,
    ROOT,
    DevServer,
    browser,
    dev_server,
    free_port,
    http_server,
    page,
)

pytestmark = pytest.mark.browser

DASHBOARD = ROOT / "serve" / "dashboard"


# -- /client.js against a scripted server that speaks docs/wire.md ------------------------------
class _ScriptedAPI(BaseHTTPRequestHandler):
    """Serves client.js and one SSE stream of N chunks that it cuts (mid-chunked-body,
    an error for the client, not a clean end) every `cut_every` records; resends the
    last record already delivered after each resume, which the client must drop."""

    protocol_version = "HTTP/1.1"
    total = 50
    cut_every = 7
    requests: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path in ("/client.js", "/"):
            body = (
                (DASHBOARD / "client.js").read_bytes()
                if path == "/client.js"
                else b"<!doctype html><meta charset=utf-8><title>t</title>"
            )
            self.send_response(200)
            ctype = "text/javascript" if path == "/client.js" else "text/html"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path == "/realtime/v1/streams/run_x/tokens":
            self.requests.append({k.lower(): v for k, v in self.headers.items()})
            last = self.headers.get("Last-Event-ID")
            start = int(last) if last is not None else 0  # resends record `last` on purpose
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for sent, seq in enumerate(range(start, self.total), start=1):
                rec = {
                    "seq_num": seq,
                    "timestamp": 1730000000000 + seq,
                    "body": json.dumps({"data": f"t{seq}", "id": f"r{seq}"}),
                }
                self._chunk(f"event: batch\nid: {seq}\ndata: {json.dumps({'records': [rec]})}\n\n")
                if seq > start and sent % self.cut_every == 0:
                    time.sleep(0.2)  # let the client take what was sent, then cut
                    self.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk
                    self.close_connection = True
                    return
            self._chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self._send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.requests.append({"path": self.path, "body": body, **headers})
        if self.path == "/realtime/v1/streams/run_x/input/approval":
            self._send_json(200, {"ok": True})
        elif self.path == "/realtime/v1/streams/run_done/input/approval":
            self._send_json(
                400, {"ok": False, "error": "Cannot send to input stream on a completed run"}
            )
        else:
            self._send_json(404, {"detail": "Not Found"})

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


@contextlib.contextmanager
def _scripted_api() -> Iterator[str]:
    _ScriptedAPI.requests = []
    with http_server(_ScriptedAPI) as base:
        yield base


def test_client_js_resumes_a_cut_stream_and_yields_every_chunk_once(page: Any) -> None:  # noqa: F811
    with _scripted_api() as base:
        page.goto(base + "/")
        got = page.evaluate(
            """async () => {
                const { RayflowClient } = await import('/client.js');
                const rf = new RayflowClient({ accessToken: 'sk_test' });
                const out = [];
                for await (const c of rf.readStream('run_x', 'tokens', { maxRetries: 50 })) {
                    out.push([c.index, c.data]);
                }
                return out;
            }"""
        )
    assert got == [[i, f"t{i}"] for i in range(_ScriptedAPI.total)]
    reads = [r for r in _ScriptedAPI.requests if "path" not in r]
    assert len(reads) > 3, "the scripted server should have cut the stream several times"
    assert all(r.get("authorization") == "Bearer sk_test" for r in reads)
    assert all(r.get("accept") == "text/event-stream" for r in reads)
    resumed = [r.get("last-event-id") for r in reads[1:]]
    assert all(v is not None and v.isdigit() for v in resumed), resumed


def test_client_js_starts_from_an_index_and_sends_input(page: Any) -> None:  # noqa: F811
    with _scripted_api() as base:
        page.goto(base + "/")
        got = page.evaluate(
            """async () => {
                const { RayflowClient, RayflowHTTPError } = await import('/client.js');
                const rf = new RayflowClient({ accessToken: 'tok' });
                const first = [];
                for await (const c of rf.readStream('run_x', 'tokens', { startIndex: 45 })) {
                    first.push(c.index);
                    if (first.length === 3) break;
                }
                const ok = await rf.sendInput('run_x', 'approval', { approved: true });
                let err = null;
                try { await rf.sendInput('run_done', 'approval', { approved: true }); }
                catch (e) { err = [e instanceof RayflowHTTPError, e.status, e.message]; }
                return { first, ok, err };
            }"""
        )
    assert got["first"] == [45, 46, 47]
    assert _ScriptedAPI.requests[0].get("last-event-id") == "44"
    assert got["ok"] == {"ok": True}
    assert got["err"] == [True, 400, "HTTP 400: Cannot send to input stream on a completed run"]
    sent = [r for r in _ScriptedAPI.requests if r.get("path", "").endswith("/run_x/input/approval")]
    assert sent and sent[0]["body"] == {"data": {"approved": True}}
    assert sent[0].get("authorization") == "Bearer tok"


# -- the real thing: rayflow dev + the research agent + the dashboard -----------------------
def _wait(pg: Any, selector: str, what: str, timeout_s: float = 60) -> Any:
    try:
        return pg.wait_for_selector(selector, timeout=timeout_s * 1000)
    except Exception as e:
        error = pg.text_content("#error") or ""
        raise AssertionError(
            f"{what}: {selector!r} did not appear in {timeout_s} s; {error}"
        ) from e


def _stream_lengths(pg: Any) -> dict[str, int]:
    lengths: dict[str, int] = pg.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('section.stream')]
            .map(s => [s.dataset.key, Number(s.dataset.length || 0)]))"""
    )
    return lengths


def _wait_for_growth(pg: Any, before: dict[str, int], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = _stream_lengths(pg)
        if any(n > before.get(k, 0) for k, n in now.items()):
            return
        pg.wait_for_timeout(200)
    raise AssertionError(f"{what}: no stream grew in {timeout_s} s (lengths {before})")


def _send_from_form(pg: Any, stream_id: str, data: Any) -> None:
    form = f"form.input-form[data-stream-id='{stream_id}']"
    if pg.query_selector(form) is None:
        # the run may not list the stream before it first listens to it: add its form by hand
        with contextlib.suppress(Exception):
            pg.wait_for_selector(form, timeout=5000)
    if pg.query_selector(form) is None:
        pg.fill("#add-input-id", stream_id)
        pg.click("#add-input-form button[type=submit]")
    sent_before = int(pg.get_attribute(form, "data-sent") or 0)
    pg.fill(f"{form} textarea", json.dumps(data))
    pg.click(f"{form} button.send")
    _wait(pg, f"{form}[data-sent='{sent_before + 1}']", f"sending to {stream_id}", 30)
    result = pg.text_content(f"{form} .result") or ""
    assert result.startswith("sent"), f"sending to {stream_id} failed: {result}"


def test_research_agent_runs_to_completion_from_the_dashboard(
    page: Any,  # noqa: F811
    dev_server: DevServer,  # noqa: F811
) -> None:
    base = dev_server.url
    page.goto(f"{base}/dashboard/#key={dev_server.secret_key}")
    _wait(page, "#runs", "the run list")

    page.fill("#task-input", RESEARCH_AGENT.task_id)
    page.fill("#payload-input", json.dumps(RESEARCH_AGENT.payload))
    page.click("#trigger-button")
    page.wait_for_url("**/run.html?id=*", timeout=30_000)
    run_id = page.text_content("#run-id")
    assert run_id and run_id.startswith("run_"), run_id

    # chunks appear live on some output stream
    _wait(page, "section.stream[data-length]:not([data-length='0'])", "first chunks", 90)
    before = _stream_lengths(page)

    _send_from_form(page, RESEARCH_AGENT.follow_up_stream, RESEARCH_AGENT.follow_up)
    _wait_for_growth(page, before, "the agent's answer to the follow-up")
    _send_from_form(page, RESEARCH_AGENT.wrap_up_stream, RESEARCH_AGENT.wrap_up)

    _wait(page, "#run-status[data-status='COMPLETED']", "the run completing", 120)
    output = page.text_content("#run-output") or ""
    assert output and output != "not finished", output
    _wait_for_growth(page, before, "the report")
    assert page.query_selector("#run-error-box:not([hidden])") is None

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-research-agent.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # history from an index: reload the first stream from index 1 on
    first = page.query_selector("section.stream")
    assert first is not None
    key = first.get_attribute("data-key")
    total = int(first.get_attribute("data-length") or 0)
    if total > 1:
        panel = f"section.stream[data-key='{key}']"
        page.fill(f"{panel} input.start-index", "1")
        page.click(f"{panel} button.reload")
        _wait(page, f"{panel}[data-ended='true'][data-length='{total}']", "history reload", 30)
        assert "(from #1)" in (page.text_content(f"{panel} .count") or "")

    # the run list shows it, completed
    page.goto(f"{base}/dashboard/")
    _wait(page, f"tr[data-run-id='{run_id}'][data-status='COMPLETED']", "the run in the list", 30)
    page.screenshot(path=str(ARTIFACTS / "dashboard-runs.png"), full_page=True)


def test_client_js_is_served_at_the_root_for_any_page(dev_server: DevServer) -> None:  # noqa: F811
    import httpx

    r = httpx.get(f"{dev_server.url}/client.js", timeout=10)
    assert r.status_code == 200
    assert "javascript" in r.headers["content-type"]
    assert "export class RayflowClient" in r.text
    assert Path(DASHBOARD / "client.js").read_text() == r.text


def test_a_run_can_be_canceled_from_its_page(
    page: Any,  # noqa: F811
    dev_server: DevServer,  # noqa: F811
) -> None:
    page.goto(f"{dev_server.url}/dashboard/#key={dev_server.secret_key}")
    page.fill("#task-input", RESEARCH_AGENT.task_id)
    page.fill("#payload-input", json.dumps(RESEARCH_AGENT.payload))
    page.click("#trigger-button")
    page.wait_for_url("**/run.html?id=*", timeout=30_000)
    _wait(page, "section.stream[data-length]:not([data-length='0'])", "first chunks", 90)
    page.click("#cancel-button")
    _wait(page, "#run-status[data-status='CANCELED']", "the run canceled", 60)
    assert page.is_hidden("#cancel-button")
    _wait(page, "section.stream[data-ended='true']", "its streams closed", 30)


def test_the_run_list_shows_sessions_and_a_session_page_its_records_live(
    page: Any,  # noqa: F811
    dev_server: DevServer,  # noqa: F811
) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {dev_server.secret_key}"}
    body = {
        "type": "dashboard-probe",
        "externalId": f"probe-{int(time.time() * 1000)}",
        "taskIdentifier": RESEARCH_AGENT.task_id,
        "triggerConfig": {"basePayload": RESEARCH_AGENT.payload},
    }
    r = httpx.post(f"{dev_server.url}/api/v1/sessions", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text  # created (200: cached)
    session = r.json()
    page.goto(f"{dev_server.url}/dashboard/#key={dev_server.secret_key}")
    row = f"tr[data-session-id='{session['id']}']"
    link = _wait(page, f"{row} td.current-run a", "the session with its current run", 30)
    assert link.text_content() == session["runId"]
    assert page.text_content(f"{row} td.status") == "ACTIVE"

    # the session's page shows its .in and .out records live, control records by kind
    page.click(f"{row} a.session-link")
    page.wait_for_url(f"**/session.html?id={session['id']}", timeout=30_000)
    _wait(page, "section.stream[data-io='out'] .live-dot.live", "the .out reader live", 30)
    base = f"{dev_server.url}/realtime/v1/sessions/{session['id']}"
    for io, record in (("in", {"text": "hello"}), ("out", {"reply": "hi"})):
        r = httpx.post(f"{base}/{io}/append", json=record, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
    control = {"records": [{"body": "", "headers": [["trigger-control", "turn-complete"]]}]}
    r = httpx.post(
        f"{dev_server.url}/s2/v1/streams/{session['id']}:out/records",
        json=control,
        headers=headers,
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["start"]["seq_num"] == 1, r.text
    sent = _wait(page, "section.stream[data-io='in'] li[data-seq='0']", "the .in record", 30)
    assert sent.text_content() == '#0{"text":"hello"}'
    reply = _wait(page, "section.stream[data-io='out'] li[data-seq='0']", "the .out record", 30)
    assert reply.text_content() == '#0{"reply":"hi"}'
    done = _wait(page, "section.stream[data-io='out'] li[data-kind='control']", "a control", 30)
    assert done.text_content() == "#1⟨turn-complete⟩"
    assert page.text_content("#session-status") == "ACTIVE"
    assert page.text_content("#session-external") == body["externalId"]

    # its current run (the first one, or the run a send continued it with)
    current = httpx.get(f"{dev_server.url}/api/v1/sessions/{session['id']}", headers=headers)
    run_id = current.json()["currentRunId"]
    page.click(f"#session-run a[href*='{run_id}']")
    page.wait_for_url(f"**/run.html?id={run_id}", timeout=30_000)
    closed = httpx.post(
        f"{dev_server.url}/api/v1/sessions/{session['id']}/close", headers=headers, timeout=30
    )
    assert closed.status_code == 200
    for run in {session["runId"], run_id}:
        httpx.post(f"{dev_server.url}/api/v2/runs/{run}/cancel", headers=headers)
