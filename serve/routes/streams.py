"""Output streams over HTTP: read as SSE, append from outside, the v1 writer.

Reading follows Trigger.dev's realtime v2 wire format (see docs/wire.md),
so `streams.read()` / `useRealtimeStream` work against rayflow unchanged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from rayflow.errors import PayloadTooLarge
from serve import core, open_streams
from serve.auth import Principal
from serve.deps import MAX_APPEND_BYTES, MAX_INDEX, AppState, Caller, whole_number
from serve.errors import BadRequest
from serve.sse import event_stream, parse_last_event_id, sse_response

router = APIRouter(tags=["streams"])

DEFAULT_TIMEOUT_S = 60
MAX_TIMEOUT_S = 600

#: one server-sent event, as a reader parses it (`data` is text: JSON or `[DONE]`)
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`event: batch` records, `event: ping`, then `data: [DONE]`",
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    }
}


class AppendResponse(BaseModel):
    ok: bool = True


class CreateStreamResponse(BaseModel):
    version: str = "v1"


def start_position(last_event_id: str | None, stream_start: str | None) -> int | None:
    """The first index to send: after `Last-Event-ID`, the tail for `latest`
    (None), else 0."""
    try:
        last = parse_last_event_id(last_event_id)
    except ValueError as e:
        raise BadRequest(str(e)) from e
    if last is not None:
        if last >= MAX_INDEX:
            raise BadRequest(f"Last-Event-ID must be a record index below {MAX_INDEX}")
        return last + 1
    if stream_start is not None and stream_start.strip().lower() == "latest":
        return None
    return 0


def idle_timeout(value: str | None) -> float:
    if value is None or not value.strip():
        return DEFAULT_TIMEOUT_S
    return whole_number(value, "Timeout-Seconds", low=1, below=MAX_TIMEOUT_S + 1)


@router.get("/realtime/v1/streams/{run_id}/{key}", responses=SSE_RESPONSES)
async def read_stream(
    run_id: str,
    key: str,
    who: Caller,
    st: AppState,
    last_event_id: Annotated[str | None, Header()] = None,
    x_trigger_stream_start: Annotated[str | None, Header()] = None,
    timeout_seconds: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Read a run's output stream as SSE, from index 0, after `Last-Event-ID`,
    or from the tail (`X-Trigger-Stream-Start: latest`); then live. The body
    ends when the stream is closed or after `Timeout-Seconds` without data."""
    who.require("read", "runs", run_id)
    start = start_position(last_event_id, x_trigger_stream_start)
    timeout = idle_timeout(timeout_seconds)
    release = open_streams.take(who, st.settings.max_streams_per_token)
    try:
        source = await core.output_source(run_id, key, start)
    except BaseException:
        release()
        raise
    events = event_stream(source, idle_timeout_s=timeout)
    return sse_response(events, on_close=release)


async def resolve_target(run_id: str, target: str) -> str:
    """The run a write addressed to `target` (self/parent/root/run id) goes to."""
    if target == "self":
        return run_id
    if target in ("parent", "root"):
        run = await core.get_run(run_id)
        other = run.parent_id if target == "parent" else run.root_id
        return other or run_id
    return target


@router.post("/realtime/v1/streams/{run_id}/{target}/{key}/append", response_model=AppendResponse)
async def append_chunk(
    run_id: str,
    target: str,
    key: str,
    request: Request,
    who: Caller,
    x_part_id: Annotated[str | None, Header()] = None,
) -> AppendResponse:
    """Append one chunk (the raw request body, stored as a string) to a run's
    stream from outside the run. At most 512 KiB; 400 when the run finished."""
    await append(who, run_id, target, key, request.body, x_part_id)
    return AppendResponse()


async def append(
    who: Principal,
    run_id: str,
    target: str,
    key: str,
    body: Callable[[], Awaitable[bytes]],
    part_id: str | None,
) -> None:
    """`append_chunk`'s work once the caller is known, with the body that
    `body()` reads: shared by the route and rayflow's listener
    (`serve/realtime_append.py`). Raises what the route answers."""
    who.require_secret("appending to a stream")
    target_id = await resolve_target(run_id, target)
    data = await body()
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise BadRequest("the chunk must be UTF-8 text", run_id=target_id, stream=key) from e
    # a closed stream (or a finished run) is refused by the appender's guarded
    # commit itself: no Store read here
    await core.append(target_id, key, text, part_id)


@router.put("/realtime/v1/streams/{run_id}/{target}/{key}", response_model=CreateStreamResponse)
async def create_stream(run_id: str, target: str, key: str, who: Caller) -> CreateStreamResponse:
    """Start a writer session: rayflow answers `v1`, so the SDK streams NDJSON
    to `POST` on the same path (and resumes with `HEAD`)."""
    who.require_secret("writing to a stream")
    target_id = await resolve_target(run_id, target)
    run = await core.get_run(target_id)
    if run.finished:
        from rayflow.errors import RunFinished

        raise RunFinished(
            f"run {target_id} is {run.status}; its streams take no more chunks",
            run_id=target_id,
            stream=key,
            status=run.status,
        )
    return CreateStreamResponse()


@router.head("/realtime/v1/streams/{run_id}/{target}/{key}")
async def writer_position(
    run_id: str,
    target: str,
    key: str,
    who: Caller,
    x_client_id: Annotated[str | None, Header()] = None,
) -> Response:
    """`X-Last-Chunk-Index`: the last chunk index stored from this writer
    (`X-Client-Id`), -1 when none, so it resumes after it."""
    who.require_secret("writing to a stream")
    target_id = await resolve_target(run_id, target)
    last = await core.writer_position(target_id, key, writer_id(x_client_id))
    return Response(status_code=200, headers={"X-Last-Chunk-Index": str(last)})


def writer_id(client_id: str | None) -> str:
    """Chunk numbers are per writer: without an `X-Client-Id` each request is
    a writer of its own (sharing one id, two would drop each other's chunks)."""
    return f"http-v1:{client_id or 'anonymous-' + uuid.uuid4().hex}"


@router.post(
    "/realtime/v1/streams/{run_id}/{target}/{key}",
    response_model=AppendResponse,
    openapi_extra={
        "requestBody": {
            "description": "NDJSON: one JSON chunk per line",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
async def write_ndjson(
    run_id: str,
    target: str,
    key: str,
    request: Request,
    who: Caller,
    x_client_id: Annotated[str | None, Header()] = None,
    x_resume_from_chunk: Annotated[str | None, Header()] = None,
) -> AppendResponse:
    """The SDK's v1 stream writer: a long-lived body of NDJSON chunks. Chunk
    `i` of writer `X-Client-Id` is stored once, however often it is resent."""
    who.require_secret("writing to a stream")
    target_id = await resolve_target(run_id, target)
    first = resume_from(x_resume_from_chunk)
    writer = writer_id(x_client_id)
    await core.check_open(target_id, key)
    index = first
    buffered = b""
    pending: list[tuple[int, str]] = []
    async for piece in request.stream():
        buffered += piece
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            if line.strip():
                pending.append((index, _ndjson_chunk(line, target_id, key)))
                index += 1
        if len(buffered) > MAX_APPEND_BYTES:
            raise PayloadTooLarge(
                f"a stream chunk is over {MAX_APPEND_BYTES} bytes", run_id=target_id, stream=key
            )
        if pending:
            await core.append_writes(target_id, key, writer, pending)
            pending = []
    if buffered.strip():
        pending.append((index, _ndjson_chunk(buffered, target_id, key)))
    if pending:
        await core.append_writes(target_id, key, writer, pending)
    return AppendResponse()


def resume_from(header: str | None) -> int:
    """The chunk number `X-Resume-From-Chunk` names (0 when absent)."""
    resume = (header or "").strip()
    if not resume.isdigit():
        return 0
    return whole_number(resume, "X-Resume-From-Chunk")


def _ndjson_chunk(line: bytes, run_id: str, key: str) -> str:
    if len(line) > MAX_APPEND_BYTES:
        raise PayloadTooLarge(
            f"a stream chunk is over {MAX_APPEND_BYTES} bytes", run_id=run_id, stream=key
        )
    try:
        text = line.decode()
        json.loads(text, parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(
            f"every NDJSON line must be one JSON value: {e}", run_id=run_id, stream=key
        ) from e
    return text


def _not_json(name: str) -> None:
    # Python's json takes NaN/Infinity; JSON (and every JS reader's JSON.parse) does not
    raise ValueError(f"{name} is not JSON")
