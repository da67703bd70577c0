"""A Durable Streams append (a POST to a stream URL) as rayflow's listener
answers it: raw ASGI, for a producer's hot path (benchmarks/README.md,
Durable Streams: 64 producers).

What the edge layers and Starlette do per request is done here once and
directly: the headers are read into one dict, the body limit, the CORS
headers and the last-resort 500 are `serve/middleware.py`'s
(`length_refusal`, `cors_headers`, `send_error`), the body is read in
place, the answer leaves as two ASGI messages. The protocol's work (auth,
path, the append, every refusal) is the route's own
(`serve/routes/durable_streams.py: append`), so both answer the same
request with the same status, headers and body
(tests/test_ds_listener.py checks it).
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from serve.deps import ServeState
from serve.ds_wire import RawHeaders
from serve.middleware import EdgeMiddleware, cors_headers, length_refusal, send_error
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

    async def body() -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            total += len(chunk)
            if limit is not None and total > limit:
                raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    try:
        response = await durable_streams.append(st, path, headers, body)
    except ClientDisconnect:
        return  # nothing stored (the body never came whole), nobody to answer
    except Exception as exc:
        log.error("unexpected error on POST %s", scope["path"], exc_info=exc)
        await send_error(send, 500, f"internal error: {type(exc).__name__}", "InternalError", cors)
        return
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [*response.raw_headers, *cors],
        }
    )
    await send({"type": "http.response.body", "body": response.body})
