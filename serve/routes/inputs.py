"""Input streams over HTTP: send into a running task, read the message log.

`POST …/input/{streamId}` is what Trigger.dev's `inputStream.send()` and
`useInputStreamSend` call; the texts of its 404/400 errors follow docs/wire.md.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field, field_validator
from sse_starlette import EventSourceResponse

from rayflow.errors import RunFinished, RunNotFound
from serve import core, open_streams
from serve.deps import AppState, Caller
from serve.errors import BadRequest, RouteError
from serve.input_types import check_receivable, check_stream_id, validate_send
from serve.routes.runs import finite_json
from serve.routes.streams import SSE_RESPONSES, idle_timeout, start_position
from serve.sse import event_stream, sse_response

router = APIRouter(tags=["input streams"])


class SendInputBody(BaseModel):
    data: Any = Field(default=None, description="the message; it must fit the stream's type")

    _finite_data = field_validator("data")(finite_json)


class SendInputResponse(BaseModel):
    ok: bool = True


@router.post(
    "/realtime/v1/streams/{run_id}/input/{stream_id}",
    response_model=SendInputResponse,
    responses={
        400: {
            "description": "`data` missing, a malformed stream id, a stream the run's task"
            " does not receive on, or the run has finished"
        },
        404: {"description": "no such run"},
        413: {"description": "the body is over 1 MiB, or the run's input log would pass its limit"},
        422: {"description": "malformed JSON, or `data` fails the stream's type"},
        429: {"description": "the run's input streams hold their limit of messages"},
    },
)
async def send_input(
    run_id: str,
    stream_id: str,
    body: SendInputBody,
    who: Caller,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> SendInputResponse:
    """Send `data` to the run's input stream `stream_id`. Durable when this
    answers; the task receives it through `.on()`, `.once()`, `.wait()` or
    `.peek()`. Secret key, or a token with `write:inputStreams:<runId>`.
    `Idempotency-Key`: a send retried with the same key (and caller) is
    stored once."""
    check_stream_id(stream_id, run_id)
    who.require("write", "inputStreams", run_id)
    if "data" not in body.model_fields_set:
        raise BadRequest(
            'the body must be {"data": <message>}; "data" is missing',
            run_id=run_id,
            stream=stream_id,
        )
    key = who.idempotency_key(idempotency_key)
    try:
        run = await core.get_run(run_id)
        # a retried send answers as the first one did, whatever happened since
        if key is not None and await core.sent_before(run_id, stream_id, key):
            return SendInputResponse()
        # nothing below touches an actor before the run and the stream are checked
        if run.finished:
            raise RunFinished(
                f"run {run_id} is {run.status}; input can only be sent to a run that is"
                " still running",
                run_id=run_id,
                stream=stream_id,
                status=run.status,
            )
        await check_receivable(run, stream_id)
        await validate_send(run.task_id, stream_id, body.data)
        await core.send_input(run_id, stream_id, body.data, key)
    except RunNotFound as e:
        raise RouteError(404, "Run not found", e, run_id=run_id, stream=stream_id) from e
    except RunFinished as e:
        raise RouteError(
            400,
            "Cannot send to input stream on a completed run",
            e,
            run_id=run_id,
            stream=stream_id,
        ) from e
    return SendInputResponse()


@router.get("/realtime/v1/streams/{run_id}/input/{stream_id}", responses=SSE_RESPONSES)
async def read_input(
    run_id: str,
    stream_id: str,
    who: Caller,
    st: AppState,
    last_event_id: Annotated[str | None, Header()] = None,
    x_trigger_stream_start: Annotated[str | None, Header()] = None,
    timeout_seconds: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """The messages sent to an input stream, as SSE in the same format as
    output streams (for tools and tests)."""
    check_stream_id(stream_id, run_id)
    who.require("read", "runs", run_id)
    start = start_position(last_event_id, x_trigger_stream_start)
    timeout = idle_timeout(timeout_seconds)
    release = open_streams.take(who, st.settings.max_streams_per_token)
    try:
        source = await core.input_source(run_id, stream_id, start)
    except BaseException:
        release()
        raise
    events = event_stream(source, idle_timeout_s=timeout)
    return sse_response(events, on_close=release)
