"""A session's streams over HTTP, as `@trigger.dev/sdk` reads and writes
them (docs/wire.md, "Sessions"): `/realtime/v1/sessions/{session}/{io}`
and a side channel's `/realtime/v1/sessions/{session}/channels/{name}/{io}`.

- `GET …/{io}`: SSE, S2 records with `seq_num` from `Last-Event-ID` + 1 (or
  0), live until `Timeout-Seconds` (default 60) pass without a record or the
  stream is closed. `X-Peek-Settled: 1` asks whether `.out` ends on a
  `turn-complete` record: then the body drains what there is at once and the
  response says `X-Session-Settled: true`.
- `GET …/{io}/records?afterEventId=`: the same records, no SSE, no wait.
- `POST …/in/append`: one record (the raw body, JSON or text) sent through
  the sessions runtime, which wakes or continues the session's run;
  answers `{"ok": true, "seq"}`. `X-Part-Id` makes a retry store nothing.
  `POST …/out/append` (secret key): one record on `.out`.
- `PUT …/out`: the SDK's S2 writer set-up — S2 credentials in headers for
  rayflow's S2 append route (`serve/routes/s2.py`), which the SDK's one-shot
  `writeControl` and `trimTo` use.

A session's token (`read:sessions:<id>` / `write:sessions:<id>`, id or
external id) reaches that session only; a channel-scoped one, that channel.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from rayflow.errors import PayloadTooLarge, SessionClosed
from rayflow.store.base import SessionRecord
from serve import open_streams
from serve import session_ops as ops
from serve import session_records as records
from serve.auth import Principal
from serve.deps import MAX_INDEX, AppState, Caller, whole_number
from serve.errors import BadRequest, error_response
from serve.routes import s2
from serve.routes.streams import SSE_RESPONSES, idle_timeout, start_position
from serve.sse import sse_response

router = APIRouter(tags=["sessions"])

#: the largest record `…/append` takes (the SDK's and S2's ceiling)
MAX_RECORD_BYTES = 1024 * 1024
_PREFIX = "/realtime/v1/sessions/{session}"
_CHANNEL = _PREFIX + "/channels/{channel}"


def _io(io: str) -> str:
    if io not in ("in", "out"):
        raise BadRequest(f"a session stream is 'in' or 'out', not {io!r}")
    return io


async def _target(
    who: Principal, action: str, session: str, io: str, channel: str | None
) -> SessionRecord:
    """The session, its caller's right to `io` (of `channel`) checked."""
    io = _io(io)
    if channel is not None:
        ops.check_channel(channel)
    found = await ops.get(session)
    ops.require(who, action, found, channel=channel, io=io)
    return found


async def _read(
    who: Principal,
    st: AppState,
    session: str,
    io: str,
    channel: str | None,
    last_event_id: str | None,
    stream_start: str | None,
    timeout_seconds: str | None,
    peek_settled: str | None,
) -> EventSourceResponse:
    found = await _target(who, "read", session, io, channel)
    start = start_position(last_event_id, stream_start)
    if start is None:
        start = (await records.read(found.id, io, channel, 0, limit=1)).tail
    timeout = idle_timeout(timeout_seconds)
    settled = False
    if io == "out" and peek_settled and peek_settled.strip() not in ("", "0", "false"):
        settled = await records.settled(found.id, channel)
    release = open_streams.take(who, st.settings.max_streams_per_token)
    events = records.events(found.id, io, channel, start, idle_timeout_s=0 if settled else timeout)
    response = sse_response(events, on_close=release)
    if settled:
        response.headers["X-Session-Settled"] = "true"
    return response


@router.get(_PREFIX + "/{io}", responses=SSE_RESPONSES)
async def read_session_stream(
    session: str,
    io: str,
    who: Caller,
    st: AppState,
    last_event_id: Annotated[str | None, Header()] = None,
    x_trigger_stream_start: Annotated[str | None, Header()] = None,
    timeout_seconds: Annotated[str | None, Header()] = None,
    x_peek_settled: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """A session's `.in` or `.out` as SSE (S2 records, see the module)."""
    return await _read(
        who, st, session, io, None, last_event_id, x_trigger_stream_start,
        timeout_seconds, x_peek_settled,
    )  # fmt: skip


@router.get(_CHANNEL + "/{io}", responses=SSE_RESPONSES)
async def read_channel_stream(
    session: str,
    channel: str,
    io: str,
    who: Caller,
    st: AppState,
    last_event_id: Annotated[str | None, Header()] = None,
    x_trigger_stream_start: Annotated[str | None, Header()] = None,
    timeout_seconds: Annotated[str | None, Header()] = None,
    x_peek_settled: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """A side channel's `.in` or `.out` as SSE."""
    return await _read(
        who, st, session, io, channel, last_event_id, x_trigger_stream_start,
        timeout_seconds, x_peek_settled,
    )  # fmt: skip


async def _drain(
    who: Principal, session: str, io: str, channel: str | None, after: str | None
) -> dict[str, Any]:
    found = await _target(who, "read", session, io, channel)
    start = 0
    if after is not None and after.strip():
        start = whole_number(after, "afterEventId", below=MAX_INDEX) + 1
    got = await records.read_all(found.id, io, channel, start)
    return {"records": [records.drained(r) for r in got]}


@router.get(_PREFIX + "/{io}/records")
async def session_records(
    session: str,
    io: str,
    who: Caller,
    after_event_id: Annotated[str | None, Query(alias="afterEventId")] = None,
) -> dict[str, Any]:
    """Every record after `afterEventId` (a seq_num) at once, `data` parsed."""
    return await _drain(who, session, io, None, after_event_id)


@router.get(_CHANNEL + "/{io}/records")
async def channel_records(
    session: str,
    channel: str,
    io: str,
    who: Caller,
    after_event_id: Annotated[str | None, Query(alias="afterEventId")] = None,
) -> dict[str, Any]:
    """A side channel's records after `afterEventId`, at once."""
    return await _drain(who, session, io, channel, after_event_id)


def _value(body: bytes) -> Any:
    """The record a body carries: its JSON, else its text (as the SDK's run
    side reads a record)."""
    if len(body) > MAX_RECORD_BYTES:
        raise PayloadTooLarge(f"a session record is at most {MAX_RECORD_BYTES} bytes")
    try:
        text = body.decode()
    except UnicodeDecodeError as e:
        raise BadRequest("a session record must be UTF-8 text") from e
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def _append(
    who: Principal,
    request: Request,
    session: str,
    io: str,
    channel: str | None,
    part_id: str | None,
) -> Response:
    found = await _target(who, "write", session, io, channel)
    if io == "out":
        who.require_secret("writing a session's .out (only its runs do)")
    value = _value(await request.body())
    try:
        if io == "in":
            sent = await ops.send_input(found.id, value, channel=channel, part_id=part_id)
            return JSONResponse({"ok": True, "seq": sent})
        seq = await ops.append_output(found.id, value, channel=channel, part_id=part_id)
        return JSONResponse({"ok": True, "seq": seq})
    except SessionClosed as e:
        closed = await ops.get(found.id)
        return error_response(
            409,
            "Cannot append to a closed session",
            "session_closed",
            closedReason=closed.closed_reason,
            detail=str(e),
        )


@router.post(_PREFIX + "/{io}/append")
async def append_session_record(
    session: str,
    io: str,
    request: Request,
    who: Caller,
    x_part_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Send one record to `.in` (wakes or continues the session's run), or,
    with the secret key, append one to `.out`. `{"ok": true, "seq"}`."""
    return await _append(who, request, session, io, None, x_part_id)


@router.post(_CHANNEL + "/{io}/append")
async def append_channel_record(
    session: str,
    channel: str,
    io: str,
    request: Request,
    who: Caller,
    x_part_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Send one record to a side channel's `.in` (wakes no run), or, with
    the secret key, append one to its `.out`."""
    return await _append(who, request, session, io, channel, x_part_id)


#: how long the S2 credentials a `PUT` hands out last (the SDK asks again
#: when an append with them fails)
S2_TOKEN_TTL_S = 3600


async def _s2_credentials(
    who: Principal, st: AppState, request: Request, session: str, io: str, channel: str | None
) -> Response:
    """The SDK's S2 writer set-up: S2 credentials, in headers, for this one
    stream — a token that writes it only (`write:s2:<stream>`), basin
    `rayflow-sessions`, the stream's S2 name and rayflow's S2 endpoint
    (`serve/routes/s2.py`: unary appends, which `writeControl` and `trimTo`
    use). Only `.out`, and only for the secret key (a session's runs)."""
    found = await _target(who, "write", session, io, channel)
    if io != "out":
        raise BadRequest(
            "a session's .in takes records by POST …/in/append (it wakes the session's run)"
        )
    who.require_secret("writing a session's .out (only its runs do)")
    name = s2.stream_name(found.id, io, channel)
    endpoint = str(request.base_url).rstrip("/") + "/s2/v1"
    return JSONResponse(
        {"version": "v2"},
        headers={
            "X-S2-Access-Token": st.mint([f"write:s2:{name}"], S2_TOKEN_TTL_S),
            "X-S2-Basin": s2.BASIN,
            "X-S2-Stream-Name": name,
            "X-S2-Endpoint": endpoint,
        },
    )


@router.put(_PREFIX + "/{io}", include_in_schema=False)
async def initialize_session_stream(
    session: str, io: str, request: Request, who: Caller, st: AppState
) -> Response:
    """The SDK's S2 writer set-up: S2 credentials for the session's `.out`."""
    return await _s2_credentials(who, st, request, session, io, None)


@router.put(_CHANNEL + "/{io}", include_in_schema=False)
async def initialize_channel_stream(
    session: str, channel: str, io: str, request: Request, who: Caller, st: AppState
) -> Response:
    """The SDK's S2 writer set-up for a side channel's `.out`."""
    return await _s2_credentials(who, st, request, session, io, channel)
