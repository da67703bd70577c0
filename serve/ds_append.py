"""A Durable Streams append (a POST to a stream URL) as rayflow's listener
answers it, for a producer's hot path (benchmarks/README.md, Durable
Streams: 64 producers). Two ways, the same answers:

- `DirectAppends`: below ASGI. rayflow's listener protocol
  (`serve/ds_protocol.py`) hands it a request already whole (a
  `Content-Length` within the limit); it checks the request and queues its
  write synchronously, and answers from the commit's callback — no task, no
  coroutine, no ASGI messages per append. A request that needs the Store
  before its write (a body that is not JSON: the stream may refuse it for
  an earlier reason) or after it (a sliding TTL to restart) goes the
  route's own way in a task.
- `append`: raw ASGI, for every other append on the listener (a chunked
  body, a pipelined request, `Expect: 100-continue`).

What the edge layers and Starlette do per request is done once and
directly: the headers are read into one dict, the body limit, the CORS
headers and the last-resort 500 are `serve/middleware.py`'s
(`length_refusal`, `cors_headers`, `body_reader`, `send_error`,
`send_unexpected`). The protocol's work
(auth, path, the append, every refusal) is the route's own
(`serve/routes/durable_streams.py`: `append_refusal`, `prepare_post`,
`post_answer`), so every way answers the same request with the same status,
headers and body (tests/test_ds_listener.py checks it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from rayflow._runtime.serving import named_appender
from rayflow.store.named import NamedWrite, NamedWriteResult
from serve import ds_reads
from serve.deps import ServeState
from serve.ds_wire import RawHeaders
from serve.middleware import (
    EdgeMiddleware,
    body_reader,
    cors_headers,
    error_answer,
    length_refusal,
    send_error,
    send_response,
    send_unexpected,
)
from serve.routes import durable_streams

log = logging.getLogger("rayflow.serve")


async def append(
    st: ServeState, edge: EdgeMiddleware, scope: Scope, receive: Receive, send: Send, path: str
) -> None:
    """Answer the POST of `scope` to the stream `path`; `edge` holds the
    body limits."""
    headers = RawHeaders(scope["headers"])
    cors = cors_headers(headers.raw.get(b"origin"))
    limit = edge.limit("POST", scope["path"])
    refused = length_refusal(headers.raw.get(b"content-length"), limit)
    if refused is not None:
        await send_error(send, *refused, cors)
        return

    try:
        response = await durable_streams.append(st, path, headers, body_reader(receive, limit))
    except ClientDisconnect:
        return  # nothing stored (the body never came whole), nobody to answer
    except Exception as exc:
        await send_unexpected(send, "POST", scope["path"], exc, cors)
        return
    await send_response(send, response, cors)


#: writes an answer (status, headers, body) on the request's connection
Reply = Callable[[int, list[tuple[bytes, bytes]], bytes], None]


class DirectAppends:
    """A listener's appends answered below ASGI (see the module docstring)."""

    def __init__(self, st: ServeState, edge: EdgeMiddleware) -> None:
        self._st, self._edge = st, edge
        #: the tasks of appends that went the route's way (kept until done)
        self._tasks: set[asyncio.Task[None]] = set()

    def limit(self, path: str) -> int | None:
        """The body limit of a POST to the URL path `path`."""
        return self._edge.limit("POST", path)

    def start(
        self, raw_headers: list[tuple[bytes, bytes]], path: str, body: bytes, reply: Reply
    ) -> None:
        """Answer the POST to the stream `path` (its headers `raw_headers`,
        names in lower case; its whole body `body`) with `reply`, now or
        once its write is committed."""
        headers = RawHeaders(raw_headers)
        cors = cors_headers(headers.raw.get(b"origin"))
        st = self._st
        try:
            response = durable_streams.append_refusal(st, path, headers)
            if response is None:
                write = durable_streams.prepare_post(path, headers, body)
                future = named_appender.named_appender().submit(write)
                future.add_done_callback(partial(self._written, path, write, cors, reply))
                return
        except durable_streams.NotJson:
            self._the_route_way(path, headers, body, cors, reply)
            return
        except Exception as exc:
            response = _answer_to(exc, path)
        _send(reply, response, cors)

    def _written(
        self,
        path: str,
        write: NamedWrite,
        cors: list[tuple[bytes, bytes]],
        reply: Reply,
        future: asyncio.Future[NamedWriteResult],
    ) -> None:
        if future.cancelled():  # the loop is closing
            response = _answer_to(asyncio.CancelledError(), path)
        elif (error := future.exception()) is not None:
            response = _answer_to(error, path)
        else:
            result = future.result()
            if result.stream is not None and ds_reads.touch_due(result.stream):
                self._touch_and_answer(path, write, result, cors, reply)
                return
            response = durable_streams.post_answer(path, write, result)
        _send(reply, response, cors)

    def _touch_and_answer(
        self,
        path: str,
        write: NamedWrite,
        result: NamedWriteResult,
        cors: list[tuple[bytes, bytes]],
        reply: Reply,
    ) -> None:
        async def touched() -> Response:
            assert result.stream is not None
            await ds_reads.touch_info(result.stream)
            return durable_streams.post_answer(path, write, result)

        self._answer_in_task(path, cors, reply, touched)

    def _the_route_way(
        self,
        path: str,
        headers: RawHeaders,
        body: bytes,
        cors: list[tuple[bytes, bytes]],
        reply: Reply,
    ) -> None:
        async def whole() -> bytes:
            return body

        self._answer_in_task(
            path, cors, reply, partial(durable_streams.append, self._st, path, headers, whole)
        )

    def _answer_in_task(
        self,
        path: str,
        cors: list[tuple[bytes, bytes]],
        reply: Reply,
        respond: Callable[[], Awaitable[Response]],
    ) -> None:
        """Answer with what `respond` gives, in a task kept until done."""

        async def answer() -> None:
            try:
                response = await respond()
            except Exception as exc:
                response = _answer_to(exc, path)
            _send(reply, response, cors)

        task = asyncio.get_running_loop().create_task(answer())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _answer_to(exc: BaseException, path: str) -> Response:
    """The route's answer to an append that raised `exc`; the edge's 500
    (logged) for anything that is not a refusal."""
    answer = durable_streams.refusal(exc) if isinstance(exc, Exception) else None
    if answer is not None:
        return answer
    log.error("unexpected error on POST %s%s", durable_streams.PREFIX, path, exc_info=exc)
    headers, body = error_answer(500, f"internal error: {type(exc).__name__}", "InternalError")
    return Response(body, 500, {k.decode(): v.decode() for k, v in headers})


def _send(reply: Reply, response: Response, cors: list[tuple[bytes, bytes]]) -> None:
    reply(response.status_code, [*response.raw_headers, *cors], bytes(response.body))
