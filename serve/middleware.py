"""The ASGI layer every request passes through, errors included.

- CORS headers on every response (a browser must see a 401 or a 413, not an
  opaque "Failed to fetch"), and the answer to preflight `OPTIONS` requests.
- Body limits: a request whose `Content-Length` is over its route's limit is
  answered 413 before its body is read; a chunked body is counted as it is
  read and cut off at the limit.
- A last-resort JSON 500 for an unexpected exception, with the traceback in
  the log and never in the response.

Pure ASGI (not `BaseHTTPMiddleware`) so that SSE responses stream through
unbuffered.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import error_body

log = logging.getLogger("rayflow.serve")

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
BASE_ALLOW_HEADERS = (
    "authorization, content-type, last-event-id, timeout-seconds, x-trigger-stream-start, "
    "x-part-id, x-client-id, x-resume-from-chunk, x-stream-version, trigger-version, "
    "x-trigger-source, x-trigger-client, x-trigger-api-version, "
    "x-trigger-realtime-streams-version, x-trigger-branch"
)


def cors_headers(origin: str | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"access-control-allow-origin", (origin or "*").encode("latin-1")),
        (b"access-control-expose-headers", b"*"),
    ]
    if origin:
        headers.append((b"vary", b"Origin"))
    return headers


#: (method, path pattern, limit in bytes or None for no limit); first match wins.
BodyLimits = list[tuple[str, "re.Pattern[str]", int | None]]


def default_body_limits(max_input_bytes: int, max_append_bytes: int) -> BodyLimits:
    stream = r"^/realtime/v1/streams/[^/]+"
    return [
        ("POST", re.compile(stream + r"/input/[^/]+$"), max_input_bytes),
        ("POST", re.compile(stream + r"/[^/]+/[^/]+/append$"), max_append_bytes),
        # the v1 NDJSON writer: one long-lived body; lines are limited one by one
        ("POST", re.compile(stream + r"/[^/]+/[^/]+$"), None),
    ]


class EdgeMiddleware:
    """CORS, body limits and the last-resort 500 (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: BodyLimits,
        default_limit: int = 4 * 1024 * 1024,
    ) -> None:
        self.app = app
        self.limits = limits
        self.default_limit = default_limit

    def _limit(self, method: str, path: str) -> int | None:
        for m, pattern, limit in self.limits:
            if m == method and pattern.match(path):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        method = scope["method"]

        if method == "OPTIONS" and "access-control-request-method" in headers:
            requested = headers.get("access-control-request-headers", "")
            allow = BASE_ALLOW_HEADERS + (", " + requested if requested else "")
            await _send_simple(
                send,
                204,
                b"",
                cors_headers(origin)
                + [
                    (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                    (b"access-control-allow-headers", allow.encode("latin-1")),
                    (b"access-control-max-age", b"86400"),
                ],
            )
            return

        limit = self._limit(method, scope["path"])
        length = headers.get("content-length")
        if limit is not None and length is not None:
            if not length.strip().isdigit():
                await _send_error(send, origin, 400, "invalid Content-Length header", "BadRequest")
                return
            if int(length) > limit:
                message = f"request body is {int(length)} bytes; the limit here is {limit} bytes"
                await _send_error(send, origin, 413, message, "PayloadTooLarge")
                return

        started = False

        async def send_with_cors(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = dict(message)
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [h for h in cors_headers(origin) if h[0] not in names]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        wrapped_receive = receive if limit is None else _limited(receive, limit)
        try:
            await self.app(scope, wrapped_receive, send_with_cors)
        except Exception as exc:
            if started:
                # mid-response (an SSE stream): nearly always the client went
                # away (Serve's receive() raises TaskCancelledError); nothing
                # can be sent any more, and the client resumes by Last-Event-ID
                log.debug("%s %s ended: %r", method, scope["path"], exc)
                return
            log.error("unexpected error on %s %s", method, scope["path"], exc_info=exc)
            await _send_error(
                send, origin, 500, f"internal error: {type(exc).__name__}", "InternalError"
            )


def _limited(receive: Receive, limit: int) -> Callable[[], Any]:
    total = 0

    async def limited_receive() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise HTTPException(413, f"request body is over the limit of {limit} bytes")
        return message

    return limited_receive


async def _send_simple(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    all_headers = [(b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, origin: str | None, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    await _send_simple(
        send, status, body, [(b"content-type", b"application/json"), *cors_headers(origin)]
    )
