"""The Durable Streams protocol's wire details (its PROTOCOL.md): headers,
offsets, cursors, SSE framing, JSON-mode bodies, and the response every
request gets.

Offsets are `<16 digits>_<16 digits>`, the reference server's shape (its
conformance suite names `0000000000000000_0000000000000000` literally): the
first part is always 0, the second the position — a byte for a byte
stream, a message for a JSON stream (`rayflow/store/named.py`). Fixed width,
so they sort as strings; `-1` and `now` are the protocol's sentinels.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from datetime import datetime
from typing import Any, Protocol

from starlette.responses import Response

# -- headers ---------------------------------------------------------------
NEXT_OFFSET = "Stream-Next-Offset"
UP_TO_DATE = "Stream-Up-To-Date"
CLOSED = "Stream-Closed"
CURSOR = "Stream-Cursor"
TTL = "Stream-TTL"
EXPIRES_AT = "Stream-Expires-At"
SEQ = "Stream-Seq"
FORKED_FROM = "Stream-Forked-From"
FORK_OFFSET = "Stream-Fork-Offset"
FORK_SUB_OFFSET = "Stream-Fork-Sub-Offset"
PRODUCER_ID = "Producer-Id"
PRODUCER_EPOCH = "Producer-Epoch"
PRODUCER_SEQ = "Producer-Seq"
EXPECTED_SEQ = "Producer-Expected-Seq"
RECEIVED_SEQ = "Producer-Received-Seq"
SSE_ENCODING = "Stream-SSE-Data-Encoding"

#: on every response (PROTOCOL.md 12.7)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}

_OFFSET = re.compile(r"^(\d{1,16})_(\d{1,16})$")
_DECIMAL = re.compile(r"^(0|[1-9]\d*)$")
_DIGITS = re.compile(r"^\d+$")
#: the largest producer epoch or seq (2**53 - 1: JavaScript clients read them exactly)
MAX_SAFE = 2**53 - 1


class HeaderSource(Protocol):
    """A request's headers by name, any case: Starlette's `Headers`, or
    `RawHeaders` on rayflow's listener."""

    def get(self, key: str, /) -> str | None: ...


class RawHeaders:
    """An ASGI scope's headers read once into a dict (the first of a
    repeated name wins, as with Starlette's `Headers.get`); names are
    lower case in the scope (ASGI)."""

    __slots__ = ("raw",)

    def __init__(self, scope_headers: list[tuple[bytes, bytes]]) -> None:
        self.raw: dict[bytes, bytes] = {}
        for name, value in scope_headers:
            self.raw.setdefault(name, value)

    def get(self, key: str, /) -> str | None:
        value = self.raw.get(key.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")


class WireError(Exception):
    """A request the protocol refuses; becomes `status` with a JSON body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


def parse_offset(value: str, what: str = "offset") -> int:
    """A position from an offset this server minted; WireError(400) otherwise."""
    match = _OFFSET.match(value)
    if match is None:
        raise WireError(
            400, f"invalid {what} {value!r}: use -1, now, or an offset this server gave"
        )
    return int(match.group(2))


def is_true(value: str | None) -> bool:
    """`Stream-Closed` counts only when it is `true` (any case)."""
    return value is not None and value.strip().lower() == "true"


def parse_ttl(value: str) -> int:
    if not _DECIMAL.match(value) or int(value) > MAX_SAFE:
        raise WireError(400, f"invalid {TTL} {value!r}: seconds as a plain decimal integer")
    return int(value)


def parse_expires_at(value: str) -> int:
    """Milliseconds since the epoch from an RFC 3339 timestamp."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise WireError(400, f"invalid {EXPIRES_AT} {value!r}: an RFC 3339 timestamp") from None
    if when.tzinfo is None:
        raise WireError(400, f"invalid {EXPIRES_AT} {value!r}: name a time zone (Z or +hh:mm)")
    return int(when.timestamp() * 1000)


def format_expires_at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="milliseconds")


def parse_counter(value: str, name: str) -> int:
    if not _DIGITS.match(value) or int(value) > MAX_SAFE:
        raise WireError(400, f"invalid {name} {value!r}: a non-negative integer up to 2^53-1")
    return int(value)


def parse_sub_offset(value: str) -> int:
    if not _DECIMAL.match(value.strip()) or int(value) > MAX_SAFE:
        raise WireError(400, f"invalid {FORK_SUB_OFFSET} {value!r}: a non-negative integer")
    return int(value)


# -- cursors (PROTOCOL.md 10.1) ----------------------------------------------
_CURSOR_EPOCH_S = 1728432000  # 2024-10-09T00:00:00Z
_CURSOR_INTERVAL_S = 20


def cursor(client_cursor: str | None) -> str:
    """The interval number now; past the client's when it is not behind (a
    CDN never serves one cached answer in a loop)."""
    current = int((time.time() - _CURSOR_EPOCH_S) // _CURSOR_INTERVAL_S)
    if client_cursor and client_cursor.isdigit() and int(client_cursor) >= current:
        jitter_s = random.randint(1, 3600)
        return str(int(client_cursor) + max(1, -(-jitter_s // _CURSOR_INTERVAL_S)))
    return str(current)


# -- bodies --------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def json_messages(body: bytes, *, append: bool) -> list[bytes]:
    """A JSON-mode body as messages: an array is flattened one level (an
    empty one is refused on append, an empty stream on create)."""
    try:  # json.loads, with a decoder made once
        value = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(400, f"the body is not valid JSON: {e}") from None
    values = value if isinstance(value, list) else [value]
    if append and not values:
        raise WireError(400, "an empty JSON array appends nothing: send at least one message")
    try:
        return [_dump(v) for v in values]
    except ValueError as e:
        raise WireError(400, f"the body is not valid JSON: {e}") from None


def _dump(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_array(messages: list[bytes]) -> bytes:
    return b"[" + b",".join(messages) + b"]"


def text_like(content_type: str) -> bool:
    """SSE carries it as text; anything else goes base64 (PROTOCOL.md 5.8)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media == "application/json"


# -- SSE -----------------------------------------------------------------------
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_event(kind: str, payload: str) -> bytes:
    """One SSE event; every line of `payload` its own `data:` line (a payload
    holding a line break cannot forge an event)."""
    lines = "".join(f"data:{line}\n" for line in _LINE_BREAK.split(payload))
    return f"event: {kind}\n{lines}\n".encode()


def sse_data(data: bytes, json_mode: bool, as_base64: bool) -> bytes:
    if as_base64:
        return sse_event("data", base64.b64encode(data).decode())
    return sse_event("data", data.decode("utf-8", errors="replace"))


def sse_control(
    next_offset: str, *, cursor_value: str | None, up_to_date: bool, closed: bool
) -> bytes:
    control: dict[str, Any] = {"streamNextOffset": next_offset}
    if closed:
        control["streamClosed"] = True
    else:
        control["streamCursor"] = cursor_value
        if up_to_date:
            control["upToDate"] = True
    return sse_event("control", json.dumps(control))


# -- responses -----------------------------------------------------------------
def response(
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    content_type: str | None = None,
) -> Response:
    """A response with the protocol's headers as given (no charset added)."""
    all_headers = {**SECURITY_HEADERS, **(headers or {})}
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return Response(body, status_code=status, headers=all_headers)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    code = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        410: "Gone",
        413: "PayloadTooLarge",
    }.get(status, "Error")
    body = json.dumps({"ok": False, "error": message, "code": code, "status": status}).encode()
    return response(status, body, headers, "application/json")
