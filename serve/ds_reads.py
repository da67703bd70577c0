"""Durable Streams reads: HEAD, and GET as catch-up, long-poll and SSE
(PROTOCOL.md 5.5-5.8), over a `NamedSource` or `RunSource`
(`serve/ds_sources.py`). Routed by `serve/routes/durable_streams.py`.

`Stream-Up-To-Date` and `Stream-Closed` describe the stream as of the read
that produced the response's data, so neither runs ahead of the data; an
SSE response sends each data event and its control event in one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rayflow._config import Settings
from rayflow._runtime.serving import current
from rayflow.store.base import now_ms
from rayflow.store.named import DURABLE_STREAMS_PREFIX, NamedStreamInfo
from serve import ds_wire as wire
from serve.ds_sources import NamedSource, RunSource, Slice, Tail
from serve.ds_wire import WireError

#: where the protocol's streams live among the Store's named streams
STORE_PREFIX = DURABLE_STREAMS_PREFIX

Source = NamedSource | RunSource


def settings() -> Settings:
    return current().settings


# -- HEAD and GET --------------------------------------------------------------
def _missing(tail: Tail | None, path: str) -> Response | None:
    if tail is None:
        return wire.error(404, f"stream {path} does not exist")
    if tail.gone:
        return wire.error(410, f"stream {path} was deleted")
    return None


async def head(source: Source) -> Response:
    tail = await source.look()
    refused = _missing(tail, _name(source))
    if refused is not None or tail is None:
        return refused or wire.error(404, "")
    headers = {
        wire.NEXT_OFFSET: wire.offset(tail.length),
        "Cache-Control": "no-store",
        "ETag": _etag(tail, "-1", tail.length, tail.closed),
    }
    if tail.closed:
        headers[wire.CLOSED] = "true"
    info = tail.info
    if info is not None and info.ttl_s is not None:
        headers[wire.TTL] = str(info.ttl_s)
    if info is not None and info.expires_at is not None:
        headers[wire.EXPIRES_AT] = wire.format_expires_at(info.expires_at)
    return wire.response(200, headers=headers, content_type=tail.content_type)


def _name(source: Source) -> str:
    if isinstance(source, RunSource):
        return f"runs/{source.run_id}/{source.key}"
    return source.path.removeprefix(STORE_PREFIX)  # `sessions/…` as it is


def _etag(tail: Tail, start: str, end: int, closed: bool) -> str:
    return f'"{tail.stream_id}:{start}:{wire.offset(end)}{":c" if closed else ""}"'


async def get(source: Source, request: Request) -> Response:
    params = request.query_params
    offsets = params.getlist("offset")
    if len(offsets) > 1:
        raise WireError(400, "name one offset")
    given = offsets[0] if offsets else None
    if given == "":
        raise WireError(400, "the offset is empty: use -1, now, or an offset this server gave")
    live = params.get("live")
    if live not in (None, "long-poll", "sse"):
        raise WireError(400, f"live={live!r}: use long-poll or sse")
    if live is not None and given is None:
        raise WireError(400, f"live={live} needs an offset (-1 for the start)")
    start = 0 if given in (None, "-1") else None if given == "now" else wire.parse_offset(given)
    try:
        tail = await source.look()
        refused = _missing(tail, _name(source))
        if refused is not None or tail is None:
            return refused or wire.error(404, "")
        await _touch(tail)
        if start is None or start > tail.length:
            start = tail.length
        if live == "sse":
            return _sse(source, start, tail, params.get("cursor"))
        if given == "now" and live is None:
            headers = {
                wire.NEXT_OFFSET: wire.offset(tail.length),
                wire.UP_TO_DATE: "true",
                "Cache-Control": "no-store",
            }
            if tail.closed:
                headers[wire.CLOSED] = "true"
            body = b"[]" if tail.json else b""
            return wire.response(200, body, headers, tail.content_type)
        if live == "long-poll" and start >= tail.length:
            got = await source.wait(start, settings().durable_streams_long_poll_s)
            refused = _missing(got.tail if got else None, _name(source))
            if refused is not None or got is None:
                return refused or wire.error(404, "")
            if not got.chunks:
                return _long_poll_timeout(got, params.get("cursor"))
        else:
            got = await source.read(start)
            refused = _missing(got.tail if got else None, _name(source))
            if refused is not None or got is None:
                return refused or wire.error(404, "")
        return _data_response(got, given or "-1", live, request)
    finally:
        if isinstance(source, RunSource):
            await source.aclose()


def _long_poll_timeout(got: Slice, client_cursor: str | None) -> Response:
    headers = {wire.NEXT_OFFSET: wire.offset(got.start), wire.UP_TO_DATE: "true"}
    if got.tail.closed:
        headers[wire.CLOSED] = "true"
    else:
        headers[wire.CURSOR] = wire.cursor(client_cursor)
    return wire.response(204, headers=headers)


def _data_response(got: Slice, given: str, live: str | None, request: Request) -> Response:
    tail = got.tail
    closed = tail.closed and got.at_tail
    headers = {wire.NEXT_OFFSET: wire.offset(got.end)}
    if got.at_tail:
        headers[wire.UP_TO_DATE] = "true"
    if closed:
        headers[wire.CLOSED] = "true"
    if live == "long-poll":
        headers[wire.CURSOR] = wire.cursor(request.query_params.get("cursor"))
    etag = _etag(tail, given, got.end, closed)
    headers["ETag"] = etag
    if request.headers.get("if-none-match") == etag:
        return wire.response(304, headers={"ETag": etag})
    headers["Cache-Control"] = "private, max-age=60, stale-while-revalidate=300"
    body = wire.json_array(got.chunks) if tail.json else b"".join(got.chunks)
    return wire.response(200, body, headers, tail.content_type)


def _sse(source: Source, start: int, tail: Tail, client_cursor: str | None) -> Response:
    as_base64 = not wire.text_like(tail.content_type)
    headers = {
        **wire.SECURITY_HEADERS,
        "Content-Type": "text/event-stream",  # as is: no charset parameter
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    if as_base64:
        headers[wire.SSE_ENCODING] = "base64"
    config = settings()

    async def events() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.durable_streams_sse_s
        position, caught_up = start, False
        try:
            while True:
                left = deadline - loop.time()
                if caught_up:
                    if left <= 0:
                        return  # the client reconnects from its offset (PROTOCOL.md 10.2)
                    wait_s = min(left, config.durable_streams_long_poll_s)
                    got = await source.wait(position, wait_s)
                else:
                    got = await source.read(position)
                if got is None or got.tail.gone:
                    return  # deleted: a reconnect gets its 404 / 410
                event = b""
                if got.chunks:
                    data = wire.json_array(got.chunks) if got.tail.json else b"".join(got.chunks)
                    event = wire.sse_data(data, got.tail.json, as_base64)
                    position = got.end
                caught_up = got.at_tail
                closed = got.tail.closed and caught_up
                # data and its control in one write: a reader never sees one without the other
                yield event + wire.sse_control(
                    wire.offset(position),
                    cursor_value=None if closed else wire.cursor(client_cursor),
                    up_to_date=caught_up,
                    closed=closed,
                )
                if closed:
                    return
        finally:
            if isinstance(source, RunSource):
                await source.aclose()

    return StreamingResponse(events(), headers=headers)


# -- sliding TTLs ----------------------------------------------------------------
async def _touch(tail: Tail) -> None:
    if tail.info is not None:
        await touch_info(tail.info)


def touch_due(info: NamedStreamInfo) -> bool:
    """A read or write of `info` must tell the Store (`touch_info`)."""
    if info.ttl_s is None or info.deleted:
        return False
    return now_ms() - info.touched_at >= min(1000, info.ttl_s * 100)


async def touch_info(info: NamedStreamInfo) -> None:
    """A read or write restarts a sliding TTL; the Store is told only when
    a tenth of the TTL has passed since (a busy stream costs no write per read)."""
    if touch_due(info):
        now = now_ms()
        await asyncio.to_thread(current().store.named_touch, [info.path])
        info.touched_at = now
