"""An append to a run's output stream from outside the run (`POST
/realtime/v1/streams/{run_id}/{target}/{key}/append`) as rayflow's listener
answers it: raw ASGI, for a backend's hot path (benchmarks/README.md,
issue 23: HTTP appends at 2,000/s).

What FastAPI and the edge layers do per request is done here once and
directly: the headers read into one dict, the body limit, the CORS headers
the body read in place and the last-resort 500 are `serve/middleware.py`'s
(`length_refusal`, `cors_headers`, `body_reader`, `send_error`,
`send_unexpected`), the caller is the route's (`deps.bearer_caller`
reads `Authorization` as the route's `bearer` does), the answer leaves as
two ASGI messages. The append's work (the
target, the body's text, the commit, every refusal) is the route's own
(`serve/routes/streams.py: append`) and its errors are answered by the
app's handlers (`serve/errors.py`), so both answer the same request with
the same status, headers and body (tests/test_realtime_listener.py checks
it).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

from rayflow.errors import RayflowError
from serve.deps import ServeState, bearer_caller
from serve.errors import answer_http_error, answer_rayflow_error
from serve.middleware import (
    EdgeMiddleware,
    body_reader,
    cors_headers,
    length_refusal,
    send_error,
    send_response,
    send_unexpected,
)
from serve.routes import streams

#: the route's path, matched as Starlette matches it (`$` and all)
PATH = compile_path("/realtime/v1/streams/{run_id}/{target}/{key}/append")[0]

#: what the route answers (`AppendResponse()`, as FastAPI serializes it)
_OK_BODY = b'{"ok":true}'
_OK_HEADERS = [
    (b"content-length", str(len(_OK_BODY)).encode()),
    (b"content-type", b"application/json"),
]


async def append(
    st: ServeState,
    edge: EdgeMiddleware,
    scope: Scope,
    receive: Receive,
    send: Send,
    params: dict[str, str],
) -> None:
    """Answer the POST of `scope` (its path's `params`: run_id, target,
    key); `edge` holds the body limits."""
    raw: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        raw.setdefault(name, value)
    cors = cors_headers(raw.get(b"origin"))
    limit = edge.limit("POST", scope["path"])
    refused = length_refusal(raw.get(b"content-length"), limit)
    if refused is not None:
        await send_error(send, *refused, cors)
        return

    authorization = raw.get(b"authorization")
    part_id = raw.get(b"x-part-id")
    try:
        who = bearer_caller(
            None if authorization is None else authorization.decode("latin-1"), st.secret_key
        )
        await streams.append(
            who,
            params["run_id"],
            params["target"],
            params["key"],
            body_reader(receive, limit),
            None if part_id is None else part_id.decode("latin-1"),
        )
    except RayflowError as e:
        response = answer_rayflow_error(e)
    except HTTPException as e:  # a chunked body cut off at its limit (413)
        response = answer_http_error(e)
    except ClientDisconnect:
        return  # nothing stored (the body never came whole), nobody to answer
    except Exception as exc:
        await send_unexpected(send, "POST", scope["path"], exc, cors)
        return
    else:
        await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS + cors})
        await send({"type": "http.response.body", "body": _OK_BODY})
        return
    await send_response(send, response, cors)
