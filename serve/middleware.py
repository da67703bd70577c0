"""The ASGI layer every request passes through, errors included.

- CORS (Starlette's `CORSMiddleware`, outermost): any origin may call the API
  (it authenticates by bearer token, never by cookie); preflights are
  answered, and every response carries the headers — the 401s, the 413s and
  the 500 below included, so a browser sees the error, not an opaque
  "Failed to fetch".
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
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import error_body

log = logging.getLogger("rayflow.serve")

#: (method, path pattern, limit in bytes or None for no limit); first match wins.
BodyLimits = list[tuple[str, "re.Pattern[str]", int | None]]


def default_body_limits(max_input_bytes: int, max_append_bytes: int) -> BodyLimits:
    stream = r"^/realtime/v1/streams/[^/]+"
    token = r"^/api/v1/waitpoints/tokens/[^/]+"
    session = r"^/realtime/v1/sessions/[^/]+(/channels/[^/]+)?/(in|out)/append$"
    return [
        # one session record: 1 MiB, as Trigger.dev's (and S2's) ceiling
        ("POST", re.compile(session), max_input_bytes),
        # an S2 append (serve/routes/s2.py): a batch, each record at most 1 MiB
        ("POST", re.compile(r"^/s2/v1/streams/[^/]+/records$"), 2 * max_input_bytes),
        ("POST", re.compile(stream + r"/input/[^/]+$"), max_input_bytes),
        # a wait token's data (completion, or a webhook on its callback url)
        ("POST", re.compile(token + r"/(complete|callback/[^/]+)$"), max_input_bytes),
        ("POST", re.compile(stream + r"/[^/]+/[^/]+/append$"), max_append_bytes),
        # the v1 NDJSON writer: one long-lived body; lines are limited one by one
        ("POST", re.compile(stream + r"/[^/]+/[^/]+$"), None),
    ]


#: any origin, echoed with `Vary: Origin`; every method and header
CORS: dict[str, Any] = {
    "allow_origin_regex": ".*",
    "allow_methods": ["*"],
    "allow_headers": ["*"],
    "expose_headers": ["*"],
    "max_age": 86400,
}


def install_middleware(app: FastAPI, limits: BodyLimits) -> None:
    """Body limits and the last-resort 500 inside, CORS around them."""
    app.add_middleware(EdgeMiddleware, limits=limits)
    # added last = outermost: what EdgeMiddleware answers itself gets the headers too
    app.add_middleware(CORSMiddleware, **CORS)


def edge(inner: ASGIApp, limits: BodyLimits) -> ASGIApp:
    """`inner` behind the same layers `install_middleware` puts around the app."""
    return CORSMiddleware(EdgeMiddleware(inner, limits=limits), **CORS)


class EdgeMiddleware:
    """Body limits and the last-resort 500 (see the module docstring)."""

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

    def limit(self, method: str, path: str) -> int | None:
        """The body limit of a `method` request to `path` (None: none)."""
        for m, pattern, limit in self.limits:
            if m == method and pattern.match(path):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        limit = self.limit(method, scope["path"])
        length = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
        refused = length_refusal(length, limit)
        if refused is not None:
            await send_error(send, *refused)
            return

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        wrapped_receive = receive if limit is None else _limited(receive, limit)
        try:
            await self.app(scope, wrapped_receive, send_tracked)
        except Exception as exc:
            if started:
                # mid-response (an SSE stream): nearly always the client went
                # away (Serve's receive() raises TaskCancelledError); nothing
                # can be sent any more, and the client resumes by Last-Event-ID
                log.debug("%s %s ended: %r", method, scope["path"], exc)
                return
            await send_unexpected(send, method, scope["path"], exc)


def length_refusal(length: bytes | None, limit: int | None) -> tuple[int, str, str] | None:
    """(status, message, code) for a `Content-Length` that is malformed or over
    `limit` (None: no limit); None when the request may go on."""
    if limit is None or length is None:
        return None
    if not length.strip().isdigit() or len(length.strip()) > 16:
        return 400, "invalid Content-Length header", "BadRequest"
    if int(length) > limit:
        message = f"request body is {int(length)} bytes; the limit here is {limit} bytes"
        return 413, message, "PayloadTooLarge"
    return None


def cors_headers(origin: bytes | None) -> list[tuple[bytes, bytes]]:
    """The headers `CORSMiddleware` (set up with `CORS`) adds to a simple
    (not preflight) response that has no `Vary` of its own, for a request
    whose `Origin` is `origin`: for callers that answer without the
    middleware (`serve/ds_append.py`)."""
    if origin is None or not _CORS.is_allowed_origin(origin.decode("latin-1")):
        return [*_CORS_SIMPLE, (b"vary", b"Origin")] if origin is not None else [_VARY]
    return [*_CORS_SIMPLE, (b"access-control-allow-origin", origin), _VARY]


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise NotImplementedError


_CORS = CORSMiddleware(_no_app, **CORS)
_CORS_SIMPLE = [
    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in _CORS.simple_headers.items()
]
_VARY = (b"vary", b"Origin")


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


def body_reader(receive: Receive, limit: int | None) -> Callable[[], Awaitable[bytes]]:
    """Reads a request's whole body in place, for callers that answer
    without the edge layers (`serve/ds_append.py`, `serve/realtime_append.py`):
    `ClientDisconnect` when the client goes before it is whole, the edge's
    413 past `limit` (None: no limit)."""
    receive = receive if limit is None else _limited(receive, limit)

    async def body() -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    return body


async def send_response(
    send: Send, response: Response, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """`response`, already rendered, as two ASGI messages (`extra`: headers to add)."""
    headers = [*response.raw_headers, *extra]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def send_unexpected(
    send: Send, method: str, path: str, exc: Exception, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """The last-resort JSON 500 for `exc`, raised answering `method` `path`:
    its traceback goes to the log, never to the client."""
    log.error("unexpected error on %s %s", method, path, exc_info=exc)
    await send_error(send, 500, f"internal error: {type(exc).__name__}", "InternalError", extra)


async def send_error(
    send: Send, status: int, message: str, code: str, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """A JSON error answered at the edge (`extra`: headers to add)."""
    headers, body = error_answer(status, message, code, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_answer(
    status: int, message: str, code: str, extra: Iterable[tuple[bytes, bytes]] = ()
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of `send_error`'s answer."""
    body = json.dumps(error_body(status, message, code)).encode()
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    headers.extend(extra)
    return headers, body
