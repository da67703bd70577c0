"""rayflow's listener's HTTP protocol: uvicorn's httptools protocol, with a
Durable Streams append answered below ASGI (`serve/ds_append.py:
DirectAppends`).

Under 64 producers of 100-byte appends, uvicorn's ASGI cycle per request (a
task, a scope, an `asyncio.Event`, the receive and send coroutines, their
messages, header checks) was ~16 µs of the ~40 µs a request costs the
replica with nothing behind it, and the append's coroutines as much again
(benchmarks/README.md, Durable Streams). A request that takes the direct
way is parsed as uvicorn parses any request (httptools, the same header
list), then its body is gathered in place and `DirectAppends.start` gets it
whole; the answer is one `transport.write` with the server's default
headers (`date`) first, as uvicorn writes them.

A request takes the direct way only when nothing about it needs the ASGI
cycle: a POST to a stream URL (no query, no percent-escape), HTTP/1.1 and
keep-alive, no `Expect: 100-continue`, a `Content-Length` (no chunked body)
within the body limit, and no other request of its connection in flight or
queued. Everything else, a chunked or oversized append and a pipelined one
included, goes through uvicorn to the ASGI app, as before.

Invariants:
- Answers leave in request order on a connection: a request that arrives
  while a direct one is in flight is queued by uvicorn's own pipelining
  (the direct request stands in `self.cycle` as a cycle not yet complete)
  and started once the direct answer is written (`on_response_complete`).
- A connection lost while the write commits: the write still commits (its
  body was whole), the answer is dropped.
- A graceful stop (`shutdown`) lets an in-flight direct request finish and
  closes its connection after the answer (`connection: close`).
- Relies on `HttpToolsProtocol`'s per-request attributes (`url`, `headers`,
  `cycle`, `pipeline`, `expect_100_continue`) and hooks; the listener's
  test (tests/test_ds_listener.py) sends appends both ways on each store.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serve.ds_append import DirectAppends
from serve.middleware import length_refusal
from serve.routes.durable_streams import PREFIX

log = logging.getLogger("rayflow.serve")

_PREFIX = PREFIX.encode()
#: what may not appear in a header value (uvicorn's check, on all of them at once)
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


class _NoEvent:
    """What uvicorn calls on a cycle's `message_event` when its connection is lost."""

    @staticmethod
    def set() -> None:
        return None


class _Direct:
    """A direct request in `HttpToolsProtocol.cycle`'s place: what uvicorn
    reads and writes there (`response_complete`, `disconnected`,
    `keep_alive`, `message_event`), its path and body."""

    __slots__ = ("path", "body", "response_complete", "disconnected", "keep_alive")
    message_event = _NoEvent

    def __init__(self, path: str) -> None:
        self.path = path
        self.body: list[bytes] = []
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = True


def protocol_for(appends: DirectAppends) -> type[HttpToolsProtocol]:
    """The protocol class of a listener whose appends go to `appends`."""
    return type("ListenerProtocol", (ListenerProtocol,), {"appends": appends})


class ListenerProtocol(HttpToolsProtocol):
    appends: DirectAppends

    def on_headers_complete(self) -> None:
        direct = self._direct()
        if direct is None:
            super().on_headers_complete()
        else:
            self.cycle = direct  # type: ignore[assignment]  # uvicorn reads its state only

    def _direct(self) -> _Direct | None:
        """The request whose headers just ended, when it takes the direct way."""
        parser = self.parser
        url: bytes = self.url
        if (
            parser.get_method() != b"POST"
            or not url.startswith(_PREFIX)
            or b"%" in url
            or b"?" in url
            or self.expect_100_continue
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or self.pipeline
            or not (self.cycle is None or self.cycle.response_complete)
        ):
            return None
        length: bytes | None = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None:
                    return None
                length = value
            elif name == b"transfer-encoding":
                return None
        try:
            path = url.decode("ascii")
        except UnicodeDecodeError:
            return None
        if length is None or length_refusal(length, self.appends.limit(path)) is not None:
            return None
        return _Direct(path[len(PREFIX) :])

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if type(cycle) is _Direct:
            cycle.body.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: Any = self.cycle
        if type(cycle) is not _Direct:
            super().on_message_complete()
            return
        body = cycle.body[0] if len(cycle.body) == 1 else b"".join(cycle.body)
        cycle.body = []

        def reply(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            self._reply(cycle, status, headers, body)

        self.appends.start(self.headers, cycle.path, body, reply)

    def _reply(
        self, cycle: _Direct, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """Write `cycle`'s answer, then go on as uvicorn does after a response."""
        cycle.response_complete = True
        if cycle.disconnected or self.transport.is_closing():
            return
        if _BAD_VALUE.search(b"".join(v for _, v in headers)):
            # uvicorn's refusal of such a header: logged, the connection closed
            log.error("invalid HTTP header value in the answer to POST %s", cycle.path)
            self.transport.close()
            return
        out = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            out += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", body)
        self.transport.write(b"".join(out))
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
