"""`client.sessions`: sessions over HTTP, like `rayflow.sessions` from
outside the cluster: start, retrieve, list, update, close, and a session's
streams (`send` to `.in`, `read` of `.out`, a side channel's pair).

Reads are SSE with `Last-Event-ID` resume (each record once, in order);
control records (`trigger-control: turn-complete`, …) are not yielded as
chunks: `reader.controls` collects them with their seq.
"""

from __future__ import annotations

import builtins
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from rayflow._response import Response
from rayflow.client._streams import HttpStreamReader
from rayflow.client._transport import Transport, jsonable


@dataclass
class SessionInfo:
    """A session as the server reports it."""

    id: str
    external_id: str | None
    type: str
    task_id: str
    trigger_config: dict[str, Any]
    current_run_id: str | None
    tags: list[str]
    metadata: dict[str, Any] | None
    closed_at: datetime | None
    closed_reason: str | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    #: `start` only: the session's public access token (reads and writes it)
    public_access_token: str | None = None
    #: `start` only: the session existed already (nothing was started)
    is_cached: bool = False

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _info(body: dict[str, Any]) -> SessionInfo:
    created, updated = _time(body["createdAt"]), _time(body["updatedAt"])
    assert created is not None and updated is not None
    return SessionInfo(
        id=body["id"],
        external_id=body.get("externalId"),
        type=body["type"],
        task_id=body["taskIdentifier"],
        trigger_config=body.get("triggerConfig") or {},
        current_run_id=body.get("currentRunId"),
        tags=list(body.get("tags") or []),
        metadata=body.get("metadata"),
        closed_at=_time(body.get("closedAt")),
        closed_reason=body.get("closedReason"),
        expires_at=_time(body.get("expiresAt")),
        created_at=created,
        updated_at=updated,
        public_access_token=body.get("publicAccessToken"),
        is_cached=bool(body.get("isCached", False)),
    )


def stream_path(session: str, io: str, channel: str | None) -> str:
    base = f"/realtime/v1/sessions/{quote(session, safe='')}"
    if channel is not None:
        base += f"/channels/{quote(channel, safe='')}"
    return f"{base}/{io}"


class SessionStreamReader(HttpStreamReader):
    """Data records of a session stream; `controls` gets the control records
    met on the way as `(seq, subtype, headers)`."""

    def __init__(
        self,
        transport: Transport,
        session: str,
        io: str,
        channel: str | None,
        start_index: int,
        timeout_s: float,
    ) -> None:
        super().__init__(transport, session, io, start_index, timeout_s)
        self._stream_path = stream_path(session, io, channel)
        self.controls: list[tuple[int, str, list[list[str]]]] = []

    def _path(self) -> str:
        return self._stream_path

    def _wanted(self, record: dict[str, Any]) -> bool:
        headers = record.get("headers") or []
        if headers and headers[0][0] == "":
            return False  # an S2 command record (trim)
        subtype = next((v for n, v in headers if n == "trigger-control"), None)
        if subtype is not None:
            self.controls.append((int(record["seq_num"]), subtype, headers))
            return False
        return True


class SessionChannel:
    """One side of a session: its `.in`/`.out` pair, or a side channel's."""

    def __init__(self, transport: Transport, session: str, channel: str | None) -> None:
        self._t, self.session, self.channel_name = transport, session, channel

    def send(self, value: Any, *, part_id: str | None = None) -> Response[int]:
        """Send one record to `.in`; resolves to its seq once durable. On the
        session's own `.in` it wakes the session's run, or starts a fresh one
        when its run has ended; a side channel's wakes no run. `part_id`
        (default: a fresh one) makes a retried send store nothing new.
        Raises `SessionNotFound`, `SessionClosed`, `PayloadTooLarge`."""
        body = json.dumps(jsonable(value)).encode()
        headers = {"X-Part-Id": part_id or uuid.uuid4().hex, "Content-Type": "application/json"}

        async def go() -> int:
            path = stream_path(self.session, "in", self.channel_name) + "/append"
            r = await self._t.request("POST", path, content=body, headers=headers)
            return int(r.json()["seq"])

        return Response(go)

    def read(
        self, io: str = "out", *, start_index: int = 0, timeout_s: float = 60
    ) -> SessionStreamReader:
        """The records of `.out` (or `.in`) from `start_index`, then live ones,
        until `timeout_s` passes without one."""
        return SessionStreamReader(
            self._t, self.session, io, self.channel_name, start_index, timeout_s
        )

    def records(self, io: str = "out", *, after: int | None = None) -> Response[list[Any]]:
        """What `.out` (or `.in`) holds after seq `after`, at once, as the
        server's drain gives it: `{"data", "id", "seqNum", "headers"?}`."""

        async def go() -> list[Any]:
            params = {} if after is None else {"afterEventId": str(after)}
            path = stream_path(self.session, io, self.channel_name) + "/records"
            r = await self._t.request("GET", path, params=params)
            found: list[Any] = r.json()["records"]
            return found

        return Response(go)


class Sessions:
    """`client.sessions`: start, retrieve, list, update, close; `open(id)` for
    a session's streams."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def start(
        self,
        *,
        type: str,
        task_id: str,
        external_id: str | None = None,
        trigger_config: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Response[SessionInfo]:
        """Start a session and its first run (secret key); with an
        `external_id` a session holds already, that session (`is_cached`).
        `trigger_config` takes the wire names (`basePayload`, `tags`,
        `maxDuration`, `idleTimeoutInSeconds`, …); `basePayload` defaults to {}."""
        config = dict(trigger_config or {})
        config.setdefault("basePayload", {})
        body: dict[str, Any] = {
            "type": type,
            "taskIdentifier": task_id,
            "triggerConfig": jsonable(config),
        }
        for name, value in (("externalId", external_id), ("tags", tags), ("metadata", metadata)):
            if value is not None:
                body[name] = jsonable(value)

        async def go() -> SessionInfo:
            return _info((await self._t.request("POST", "/api/v1/sessions", json=body)).json())

        return Response(go)

    def retrieve(self, session: str) -> Response[SessionInfo]:
        """A session by its id (`session_…`) or external id."""

        async def go() -> SessionInfo:
            r = await self._t.request("GET", f"/api/v1/sessions/{quote(session, safe='')}")
            return _info(r.json())

        return Response(go)

    def list(
        self,
        *,
        type: str | None = None,
        task_id: str | None = None,
        tags: list[str] | None = None,
        status: str | list[str] | None = None,
        external_id: str | None = None,
        limit: int = 100,
    ) -> Response[list[SessionInfo]]:
        """Sessions, newest first (every page, up to `limit`); `status`: ACTIVE,
        CLOSED, EXPIRED, or a list of them (any)."""
        if isinstance(status, list):
            status = ",".join(status)
        params: dict[str, Any] = {"page[size]": min(limit, 100)}
        for name, value in (
            ("filter[type]", type),
            ("filter[taskIdentifier]", task_id),
            ("filter[tags]", ",".join(tags) if tags else None),
            ("filter[status]", status),
            ("filter[externalId]", external_id),
        ):
            if value is not None:
                params[name] = value

        async def go() -> list[SessionInfo]:
            found: list[SessionInfo] = []
            while len(found) < limit:
                body = (await self._t.request("GET", "/api/v1/sessions", params=params)).json()
                found += [_info(item) for item in body["data"]]
                after = body["pagination"].get("next")
                if not after:
                    break
                params["page[after]"] = after
            return found[:limit]

        return Response(go)

    def update(
        self,
        session: str,
        *,
        tags: builtins.list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Response[SessionInfo]:
        """Replace the session's tags and/or metadata (secret key)."""
        body = {
            k: jsonable(v) for k, v in (("tags", tags), ("metadata", metadata)) if v is not None
        }

        async def go() -> SessionInfo:
            path = f"/api/v1/sessions/{quote(session, safe='')}"
            return _info((await self._t.request("PATCH", path, json=body)).json())

        return Response(go)

    def close(self, session: str, *, reason: str | None = None) -> Response[SessionInfo]:
        """Close the session (idempotent: the first close stands)."""
        body = {} if reason is None else {"reason": reason}

        async def go() -> SessionInfo:
            path = f"/api/v1/sessions/{quote(session, safe='')}/close"
            return _info((await self._t.request("POST", path, json=body)).json())

        return Response(go)

    def open(self, session: str) -> SessionHandle:
        """A session's streams, by id or external id (no request of its own)."""
        return SessionHandle(self._t, session)


class SessionHandle(SessionChannel):
    """`client.sessions.open(id)`: `send` / `read` / `records` on the session's
    own `.in`/`.out`; `channel(name)` for a side channel."""

    def __init__(self, transport: Transport, session: str) -> None:
        super().__init__(transport, session, None)

    def channel(self, name: str) -> SessionChannel:
        return SessionChannel(self._t, self.session, name)
