"""The dashboard sends its key only to its own origin or an operator's allowed one.

The dashboard keeps the secret key (or a run token) in localStorage and puts it
in every request's `Authorization` header. A link `…/dashboard/?api=<host>`
must therefore never make it talk to a host the operator did not allow
(RAYFLOW_DASHBOARD_API_ORIGINS, served as `/dashboard/config.js`). Real
Chromium; the "other origin" is a loopback server that answers every request,
CORS preflights included, as an attacker's would.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from _browser_fixtures import (  # noqa: F401  (fixtures)
    ROOT,
    browser,
    free_port,
    http_server,
    page,
    static_server,
)

pytestmark = pytest.mark.browser

DASHBOARD = ROOT / "serve" / "dashboard"
KEY = "sk_" + "d" * 32


class _Elsewhere(BaseHTTPRequestHandler):
    """Records every request and allows any cross-origin call."""

    seen: list[dict[str, str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.seen.append(
            {
                "method": self.command,
                "path": self.path,
                **{k.lower(): v for k, v in self.headers.items()},
            }
        )
        self.send_response(200)
        self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin") or "*")
        self.send_header("Access-Control-Allow-Headers", "*, authorization")
        self.send_header("Access-Control-Allow-Methods", "*")
        self.send_header("Content-Type", "application/json")
        body = b'{"data": []}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_OPTIONS = _answer


@contextlib.contextmanager
def _elsewhere() -> Iterator[str]:
    _Elsewhere.seen = []
    with http_server(_Elsewhere) as base:
        yield base


def _open_with_key_then_api(pg: Any, site: str, api: str) -> None:
    pg.goto(f"{site}/index.html#key={KEY}")  # the key lands in localStorage
    pg.wait_for_function("localStorage.getItem('rayflow.token') !== null")
    pg.goto(f"{site}/index.html?api={api}")
    # one refresh of the run list done, wherever it went
    pg.wait_for_function(
        "!document.querySelector('#error').hidden"
        " || document.querySelector('#runs').textContent.includes('no runs')",
        timeout=15_000,
    )


def test_a_link_naming_another_api_origin_does_not_get_the_key(page: Any) -> None:  # noqa: F811
    with _elsewhere() as other, static_server(DASHBOARD) as site:
        _open_with_key_then_api(page, site, other)
        banner = page.text_content("#error") or ""
        run_link = page.evaluate("location.href")
    assert _Elsewhere.seen == [], _Elsewhere.seen
    assert "not an allowed API origin" in banner, banner
    assert KEY not in run_link


def test_an_origin_the_operator_allowed_is_used(
    page: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    with _elsewhere() as other:
        site_dir = tmp_path / "dashboard"
        shutil.copytree(DASHBOARD, site_dir)
        from serve.routes.dashboard import dashboard_config_js

        (site_dir / "config.js").write_text(dashboard_config_js([other + "/"]))
        with static_server(site_dir) as site:
            page.goto(f"{site}/index.html#key={KEY}")
            page.goto(f"{site}/index.html?api={other}")
            page.wait_for_function(
                "(document.querySelector('#runs td.empty')?.textContent || '').includes('no runs')"
            )
            authorized = [r for r in _Elsewhere.seen if r.get("authorization")]
            assert authorized, _Elsewhere.seen
            assert authorized[0]["authorization"] == f"Bearer {KEY}"


def test_the_server_serves_the_operators_allow_list_as_config_js() -> None:
    from fastapi.testclient import TestClient

    from rayflow._config import Settings
    from serve.api import create_app

    allowed = ["https://api.example.com"]
    app = create_app(Settings(dashboard_api_origins=allowed), KEY)
    with TestClient(app) as client:
        r = client.get("/dashboard/config.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert '["https://api.example.com"]' in r.text
    plain = create_app(Settings(), KEY)
    with TestClient(plain) as client:
        assert "[]" in client.get("/dashboard/config.js").text
