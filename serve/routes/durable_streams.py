"""The Durable Streams protocol at `/durable-streams/v1/stream/{path}`.

PUT creates (or forks), POST appends and closes, GET reads (catch-up,
long-poll, SSE), HEAD tells the tail, DELETE deletes — PROTOCOL.md of
durable-streams/durable-streams, checked by its conformance suite
(tests/test_durable_streams_conformance.py). Streams live in the Store as
named streams `ds/<path>` (`rayflow/store/named.py`); a run's output stream
is readable, read-only, at `runs/<run_id>/<key>` in JSON mode (its chunks
are the messages; the run's end closes it); a session's streams, read-only,
at `sessions/<id>/…` (the Store's named streams of that name).

Reads (HEAD, GET: catch-up, long-poll, SSE) are `serve/ds_reads.py`.
Appends go through the replica's `NamedAppender` (group commit: appends
made while a commit is in flight share the next one). Live reads wake on
the Store's change signals (`serve/ds_sources.py`).

Auth (who may read or write which path): `serve/ds_auth.py`. Appends on
rayflow's own listener: `serve/ds_append.py` (the same answers).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from rayflow._runtime.serving import current, named_appender
from rayflow.errors import RayflowError
from rayflow.store.named import (
    DEFAULT_CONTENT_TYPE,
    NamedOutcome,
    NamedStreamSpec,
    NamedWrite,
    NamedWriteResult,
    Producer,
    is_json,
)
from serve import ds_auth, ds_reads
from serve import ds_wire as wire
from serve.deps import ServeState
from serve.ds_reads import STORE_PREFIX, Source
from serve.ds_sources import NamedSource, RunSource
from serve.ds_wire import WireError

router = APIRouter(tags=["durable-streams"])

PREFIX = "/durable-streams/v1/stream/"
METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE"]
_CONTENT_TYPE = r"^[\w.+-]+/[\w.+-]+"


def _source(path: str) -> Source:
    run = ds_auth.run_stream(path)
    if run is not None:
        return RunSource(*run)
    if path.startswith("sessions/"):  # a session's streams, as sessions keep them
        return NamedSource(path)
    return NamedSource(STORE_PREFIX + path)


async def durable_stream(request: Request) -> Response:
    """One stream URL, every method of the protocol. A plain Starlette route:
    no dependency solving per append."""
    path: str = request.path_params["path"]
    method = request.method
    st: ServeState = request.app.state.rayflow
    if method == "POST":
        return await append(st, path, request.headers, request.body)
    try:
        who = ds_auth.caller(st, request.headers.get("authorization"))
    except RayflowError as e:
        return wire.error(e.http_status, str(e))
    try:
        ds_auth.check_path(path)
        if method in ("GET", "HEAD"):
            ds_auth.require(who, "read", path)
            source = _source(path)
            if method == "HEAD":
                return await ds_reads.head(source)
            return await ds_reads.get(source, request)
        ds_auth.require(who, "write", path)
        if path.startswith(("runs/", "sessions/")):
            return wire.error(405, f"{path} is read-only here: {method} is not allowed")
        if method == "PUT":
            return await put(path, request)
        return await delete(path)
    except WireError as e:
        return wire.error(e.status, str(e), e.headers)
    except RayflowError as e:  # Forbidden, Unavailable, ...
        return wire.error(e.http_status, str(e))


def append_refusal(st: ServeState, path: str, h: wire.HeaderSource) -> Response | None:
    """The answer to a POST to `path` refused before its body is read (its
    caller, its path, a read-only stream); None when it may go on."""
    try:
        who = ds_auth.caller(st, h.get("authorization"))
    except RayflowError as e:
        return wire.error(e.http_status, str(e))
    try:
        ds_auth.check_path(path)
        ds_auth.require(who, "write", path)
    except WireError as e:
        return wire.error(e.status, str(e), e.headers)
    except RayflowError as e:  # Forbidden
        return wire.error(e.http_status, str(e))
    if path.startswith(("runs/", "sessions/")):
        return wire.error(405, f"{path} is read-only here: POST is not allowed")
    return None


def refusal(e: Exception) -> Response | None:
    """The answer to an append that raised `e` on its way (None: not a
    refusal; the edge answers 500)."""
    if isinstance(e, WireError):
        return wire.error(e.status, str(e), e.headers)
    if isinstance(e, HTTPException):  # a chunked body cut off at its limit (413)
        return wire.error(e.status_code, str(e.detail))
    if isinstance(e, RayflowError):  # Unavailable, ...
        return wire.error(e.http_status, str(e))
    return None


async def append(
    st: ServeState, path: str, h: wire.HeaderSource, body: Callable[[], Awaitable[bytes]]
) -> Response:
    """A POST to `path` (an append, a close): `append_refusal`, then `post`
    with the body `body()` reads; every refusal answered. Shared by the route
    and rayflow's listener (`serve/ds_append.py`)."""
    refused = append_refusal(st, path, h)
    if refused is not None:
        return refused
    try:
        return await post(path, h, await body())
    except (WireError, HTTPException, RayflowError) as e:
        answer = refusal(e)
        assert answer is not None
        return answer


router.routes.append(
    Route(PREFIX + "{path:path}", durable_stream, methods=METHODS, include_in_schema=False)
)


# -- PUT, POST, DELETE -----------------------------------------------------------
async def put(path: str, request: Request) -> Response:
    h = request.headers
    forked_from = h.get(wire.FORKED_FROM)
    content_type = h.get("content-type")
    if not content_type or not re.match(_CONTENT_TYPE, content_type.strip()):
        content_type = None if forked_from else DEFAULT_CONTENT_TYPE
    ttl, expires = h.get(wire.TTL), h.get(wire.EXPIRES_AT)
    if ttl is not None and expires is not None:
        raise WireError(400, f"send {wire.TTL} or {wire.EXPIRES_AT}, not both")
    spec = NamedStreamSpec(
        STORE_PREFIX + path,
        content_type,
        ttl_s=wire.parse_ttl(ttl) if ttl is not None else None,
        expires_at=wire.parse_expires_at(expires) if expires is not None else None,
        closed=wire.is_true(h.get(wire.CLOSED)),
    )
    source_type: str | None = None
    if wire.FORK_SUB_OFFSET in h and not forked_from:
        raise WireError(400, f"{wire.FORK_SUB_OFFSET} needs {wire.FORKED_FROM}")
    if forked_from:
        source_path = _path_of(forked_from)
        spec.forked_from = STORE_PREFIX + source_path
        if wire.FORK_OFFSET in h:
            spec.fork_offset = wire.parse_offset(h[wire.FORK_OFFSET], wire.FORK_OFFSET)
        if wire.FORK_SUB_OFFSET in h:
            spec.fork_sub_offset = wire.parse_sub_offset(h[wire.FORK_SUB_OFFSET])
        if content_type is None:
            info = await asyncio.to_thread(current().store.named_info, spec.forked_from)
            source_type = info.content_type if info else None
    body = await request.body()
    stream_type = content_type or source_type or DEFAULT_CONTENT_TYPE
    if is_json(stream_type):
        messages = wire.json_messages(body, append=False) if body else []
    else:
        messages = [body] if body else []
    store, settings = current().store, ds_reads.settings()
    result = await asyncio.to_thread(store.named_create, spec, messages, settings.max_stream_bytes)
    outcome, stream = result.outcome, result.stream
    if outcome in (NamedOutcome.OK, NamedOutcome.EXISTS) and stream is not None:
        headers = {wire.NEXT_OFFSET: wire.offset(stream.length)}
        if stream.closed:
            headers[wire.CLOSED] = "true"
        if outcome is NamedOutcome.OK:
            headers["Location"] = str(request.url.replace(query=""))
        status = 201 if outcome is NamedOutcome.OK else 200
        return wire.response(status, headers=headers, content_type=stream.content_type)
    return wire.error(*_create_refusal(outcome, path))


def _path_of(forked_from: str) -> str:
    """The stream path a `Stream-Forked-From` names (a URL path or a full URL)."""
    value = forked_from.strip()
    if "://" in value:
        value = "/" + value.split("://", 1)[1].partition("/")[2]
    for prefix in (PREFIX, "/v1/stream/", "v1/stream/"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    value = value.lstrip("/")
    ds_auth.check_path(value)
    return value


def _create_refusal(outcome: NamedOutcome, path: str) -> tuple[int, str]:
    return {
        NamedOutcome.CONFLICT: (409, f"stream {path} exists with another configuration"),
        NamedOutcome.SOURCE_MISSING: (404, "the stream to fork does not exist"),
        NamedOutcome.SOURCE_GONE: (409, "the stream to fork was deleted (its forks keep it)"),
        NamedOutcome.BAD_OFFSET: (400, "the fork offset is past the source stream's data"),
        NamedOutcome.TOO_LARGE: (413, "the initial data is over the stream size limit"),
    }.get(outcome, (500, f"unexpected outcome {outcome.value}"))


def _producer(headers: wire.HeaderSource) -> Producer | None:
    names = (wire.PRODUCER_ID, wire.PRODUCER_EPOCH, wire.PRODUCER_SEQ)
    given = [headers.get(n) for n in names]
    if all(v is None for v in given):
        return None
    if any(v is None for v in given):
        raise WireError(400, "send Producer-Id, Producer-Epoch and Producer-Seq together")
    producer_id, epoch, seq = given
    assert producer_id is not None and epoch is not None and seq is not None
    if not producer_id:
        raise WireError(400, "Producer-Id must not be empty")
    return Producer(
        producer_id,
        wire.parse_counter(epoch, wire.PRODUCER_EPOCH),
        wire.parse_counter(seq, wire.PRODUCER_SEQ),
    )


class NotJson(WireError):
    """A JSON-mode append whose body is not JSON: refused 400, unless the
    stream refuses it for an earlier reason (`_refusal_before_json`)."""

    def __init__(self, error: WireError, content_type: str) -> None:
        super().__init__(error.status, str(error), error.headers)
        self.content_type = content_type


def prepare_post(path: str, h: wire.HeaderSource, body: bytes) -> NamedWrite:
    """The write a POST to `path` asks for (`h` its headers, `body` its
    body). Raises WireError for a request the protocol refuses before the
    Store (NotJson for a body that is not JSON)."""
    producer = _producer(h)
    close = wire.is_true(h.get(wire.CLOSED))
    content_type = h.get("content-type")
    if not body and not close:
        raise WireError(400, "the body is empty: send data, or Stream-Closed: true to close")
    if body and not content_type:
        raise WireError(400, "send the stream's Content-Type with the data")
    messages: list[bytes] = []
    if body:
        if content_type is not None and is_json(content_type):
            try:
                messages = wire.json_messages(body, append=True)
            except WireError as e:
                raise NotJson(e, content_type) from None
        else:
            messages = [body]
    return NamedWrite(
        STORE_PREFIX + path,
        messages,
        content_type=content_type if body else None,
        close=close,
        producer=producer,
        stream_seq=h.get(wire.SEQ),
        leased=True,  # its readers lease the stream (serve/ds_sources.py)
    )


async def post(path: str, h: wire.HeaderSource, body: bytes) -> Response:
    """An append (or a close): `h` the request's headers, `body` its body.
    Raises WireError for a request the protocol refuses before the Store."""
    try:
        write = prepare_post(path, h, body)
    except NotJson as e:
        refused = await _refusal_before_json(STORE_PREFIX + path, path, e.content_type)
        if refused is not None:
            return refused
        raise
    result = await named_appender.write(write)
    if result.stream is not None:
        await ds_reads.touch_info(result.stream)
    return post_answer(path, write, result)


def post_answer(path: str, write: NamedWrite, result: NamedWriteResult) -> Response:
    """The answer to the POST to `path` that asked for `write`, committed
    with `result` (its stream's sliding TTL already restarted)."""
    producer, stream, outcome = write.producer, result.stream, result.outcome
    tail = {wire.NEXT_OFFSET: wire.offset(stream.length)} if stream else {}
    closed = {wire.CLOSED: "true"} if stream and stream.closed else {}
    stamp = (
        {wire.PRODUCER_EPOCH: str(producer.epoch), wire.PRODUCER_SEQ: str(result.producer_seq)}
        if producer
        else {}
    )
    if outcome is NamedOutcome.OK:
        status = 200 if producer and write.messages else 204
        return wire.response(status, headers={**tail, **closed, **stamp})
    if outcome is NamedOutcome.DUPLICATE:
        return wire.response(204, headers={**tail, **closed, **stamp})
    if outcome is NamedOutcome.MISSING:
        return wire.error(404, f"stream {path} does not exist")
    if outcome is NamedOutcome.GONE:
        return wire.error(410, f"stream {path} was deleted")
    if outcome is NamedOutcome.CLOSED:
        return wire.error(409, f"stream {path} is closed", {**tail, wire.CLOSED: "true"})
    if outcome is NamedOutcome.CONTENT_TYPE:
        return wire.error(409, f"stream {path} holds {stream.content_type if stream else '?'}")
    if outcome is NamedOutcome.STREAM_SEQ:
        return wire.error(409, f"{wire.SEQ} must be above the stream's last one")
    if outcome is NamedOutcome.STALE_EPOCH:
        epoch = {wire.PRODUCER_EPOCH: str(result.producer_epoch)}
        return wire.error(403, "a newer epoch of this producer is writing", epoch)
    if outcome is NamedOutcome.EPOCH_SEQ:
        return wire.error(400, "a new producer epoch starts at Producer-Seq 0")
    if outcome is NamedOutcome.SEQ_GAP:
        assert producer is not None
        gap = {wire.EXPECTED_SEQ: str(result.expected_seq), wire.RECEIVED_SEQ: str(producer.seq)}
        return wire.error(409, f"Producer-Seq {producer.seq} skips {result.expected_seq}", gap)
    if outcome is NamedOutcome.TOO_LARGE:
        return wire.error(413, f"stream {path} would grow past its size limit")
    return wire.error(500, f"unexpected outcome {outcome.value}")


async def _refusal_before_json(store_path: str, path: str, content_type: str) -> Response | None:
    """A body that is not JSON, to a stream that refuses it for an earlier
    reason (missing, closed, another type): that reason's answer."""
    info = await asyncio.to_thread(current().store.named_info, store_path)
    if info is None:
        return wire.error(404, f"stream {path} does not exist")
    if info.deleted:
        return wire.error(410, f"stream {path} was deleted")
    if info.closed:
        tail = {wire.NEXT_OFFSET: wire.offset(info.length), wire.CLOSED: "true"}
        return wire.error(409, f"stream {path} is closed", tail)
    if not info.json:
        return wire.error(409, f"stream {path} holds {info.content_type}")
    return None


async def delete(path: str) -> Response:
    outcome = await asyncio.to_thread(current().store.named_delete, STORE_PREFIX + path)
    if outcome is NamedOutcome.OK:
        return wire.response(204)
    if outcome is NamedOutcome.GONE:
        return wire.error(410, f"stream {path} was deleted")
    return wire.error(404, f"stream {path} does not exist")
