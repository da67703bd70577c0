"""The S2 append route the SDK's one-shot session writes reach: `session.out`'s
`writeControl(subtype, headers)` and `trimTo(seq)` (`@trigger.dev/core`'s
`sessionStreamOneshot.js`) ask `PUT /realtime/v1/sessions/{id}/out` for S2
credentials (`session_streams.py` answers the secret key's holder with a
token that writes this one stream, `write:s2:<stream>`, basin `rayflow-sessions` and
this endpoint) and then append through the S2
client: `POST /s2/v1/streams/{stream}/records` (docs/wire.md, "Sessions").

Each record goes through the sessions runtime like any `.out` append: a
`trigger-control` record is a control record, a command record `["",
"trim"]` (8-byte big-endian seq body) is `trim_output`, anything else is a
data record (its body the SDK's envelope `{"data", "id"}`, or any text).
Not served: S2's streaming append session (HTTP/2 `s2s`), which the SDK's
`out.pipe()`/`writer()` use — `.out` is written from Python, or one record
at a time by `POST …/out/append`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from rayflow._runtime.serving import append_control, append_output, trim_output
from rayflow.errors import RayflowError
from serve import s2_wire
from serve import session_ops as ops
from serve.deps import Caller
from serve.errors import BadRequest, error_body, plain

router = APIRouter(tags=["sessions"])

#: the basin rayflow's S2 credentials name (S2: 8-48 of [a-z0-9-]; streams are named by session)
BASIN = "rayflow-sessions"
#: an S2 stream name: `<session id>:<io>`, a channel's `<id>:channels:<name>:<io>`
_STREAM = re.compile(
    r"(session_[A-Za-z0-9_-]{1,64})(?::channels:([A-Za-z0-9._-]{1,128}))?:(in|out)"
)


def stream_name(session_id: str, io: str, channel: str | None) -> str:
    """The S2 stream name of a session stream (`PUT` hands it out)."""
    return f"{session_id}:channels:{channel}:{io}" if channel else f"{session_id}:{io}"


@router.post("/s2/v1/streams/{stream}/records", include_in_schema=False)
async def append_records(stream: str, request: Request, who: Caller) -> Response:
    """S2's unary append, onto a session's `.out` (see the module)."""
    protobuf = request.headers.get("content-type", "").startswith(s2_wire.PROTOBUF)
    try:
        named = _STREAM.fullmatch(stream)
        if named is None:
            raise BadRequest(f"no S2 stream {stream!r} here: ask PUT …/sessions/{{id}}/out")
        session_id, channel, io = named.groups()
        # the secret key, or the token a PUT handed out for this stream alone
        # (a session's public token does not write `.out`: only its runs do)
        if not who.secret:
            who.require("write", "s2", stream)
        found = await ops.get(session_id)
        if io != "out":
            raise BadRequest(
                "records reach a session's .in by POST …/in/append (it wakes the session's run)"
            )
        body = await request.body()
        if protobuf:
            given = s2_wire.parse_protobuf(body)
        else:
            base64 = request.headers.get("s2-format", "raw").strip().lower() == "base64"
            given = s2_wire.parse_json(body, base64=base64)
        if given.match_seq_num is not None or given.fencing_token is not None:
            raise BadRequest("rayflow's S2 appends take no match_seq_num or fencing token")
        if not given.records:
            raise BadRequest("an S2 append holds at least one record")
        seqs = [await _append(found.id, channel, record) for record in given.records]
    except RayflowError as e:
        e = plain(e)
        # S2's client shows `message`; rayflow's body beside it
        refused = error_body(e.http_status, str(e), type(e).__name__)
        return JSONResponse({**refused, "message": str(e)}, status_code=e.http_status)
    now = int(time.time() * 1000)
    answer = s2_wire.ack((seqs[0], now), (seqs[-1] + 1, now), protobuf)
    if isinstance(answer, bytes):
        return Response(answer, media_type=s2_wire.PROTOBUF)
    return JSONResponse(answer)


async def _append(session_id: str, channel: str | None, record: s2_wire.AppendRecord) -> int:
    headers = [(n.decode(errors="replace"), v.decode(errors="replace")) for n, v in record.headers]
    if headers and headers[0][0] == "":
        command = headers[0][1]
        if command != "trim":
            raise BadRequest(f"the S2 command {command!r} is not supported here (only trim)")
        if len(record.body) != 8:
            raise BadRequest("a trim command's body is its seq_num, 8 bytes big-endian")
        return await trim_output(session_id, int.from_bytes(record.body, "big"), channel=channel)
    control = next((v for n, v in headers if n == "trigger-control"), None)
    if control is not None:
        rest = [(n, v) for n, v in headers if n != "trigger-control"]
        return await append_control(session_id, control, rest, channel=channel)
    value, part_id = _data(record.body)
    return await append_output(session_id, value, channel=channel, part_id=part_id)


def _data(body: bytes) -> tuple[Any, str | None]:
    """A data record's value and part id: the SDK's envelope `{"data", "id"}`,
    else the body's JSON, else its text."""
    try:
        text = body.decode()
    except UnicodeDecodeError as e:
        raise BadRequest("a session record must be UTF-8 text") from e
    try:
        parsed = json.loads(text)
    except ValueError:
        return text, None
    if isinstance(parsed, dict) and "data" in parsed:
        part = parsed.get("id")
        return parsed["data"], part if isinstance(part, str) else None
    return parsed, None
