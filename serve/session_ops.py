"""What the session routes ask of rayflow: rows read from the Store, the
caller's right to a session, and the wire shape of a session.

Writes that decide about runs (start, a record sent to `.in`, continuation,
close, end-and-continue) go through the sessions runtime (`rayflow.sessions`
and the runtime's `send_input`); nothing here starts a run.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from rayflow import _tokens
from rayflow._runtime.serving import append_output as runtime_append
from rayflow._runtime.serving import close_session, current, end_and_continue, start_session
from rayflow._runtime.serving import send_input as runtime_send
from rayflow._tokens import allows
from rayflow.errors import Forbidden, SessionNotFound
from rayflow.store.base import SessionRecord
from serve.auth import Principal
from serve.deps import MAX_INDEX
from serve.errors import BadRequest

#: `<created ms>:<session id>`, the cursor of `list_sessions`
_CURSOR = re.compile(r"[0-9]{1,16}:session_[A-Za-z0-9_\-]{1,64}")
#: a side channel's name, as the SDK checks it
CHANNEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: a stored trigger config's names (rayflow's) -> the SDK's `SessionTriggerConfig`
_WIRE_NAMES = {
    "base_payload": "basePayload",
    "tags": "tags",
    "max_duration_s": "maxDuration",
    "idle_timeout_s": "idleTimeoutInSeconds",
}


def trigger_config_to_wire(stored: str) -> dict[str, Any]:
    """A stored trigger config as the SDK's `SessionTriggerConfig` (whole
    seconds, as its schema wants)."""
    config = json.loads(stored) if stored else {}
    wire: dict[str, Any] = {}
    for name, value in config.items():
        if name in _WIRE_NAMES and value is not None:
            wire[_WIRE_NAMES[name]] = value
    for name in ("maxDuration", "idleTimeoutInSeconds"):
        if name in wire:
            wire[name] = max(1, math.ceil(wire[name]))
    wire.setdefault("basePayload", {})
    return wire


def _date(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def item(session: SessionRecord) -> dict[str, Any]:
    """A session as the SDK's `SessionItem` (Python field names)."""
    return {
        "id": session.id,
        "external_id": session.external_id,
        "type": session.type,
        "task_identifier": session.task_id,
        "trigger_config": trigger_config_to_wire(session.trigger_config),
        "current_run_id": session.current_run_id,
        "tags": session.tags,
        "metadata": json.loads(session.metadata) if session.metadata else None,
        "closed_at": _date(session.closed_at),
        "closed_reason": session.closed_reason,
        "expires_at": _date(session.expires_at),
        "created_at": _date(session.created_at),
        "updated_at": _date(session.updated_at),
    }


async def get(id_or_external_id: str) -> SessionRecord:
    """The session by its `session_…` id or its external id; SessionNotFound."""
    found = await asyncio.to_thread(current().store.get_session, id_or_external_id)
    if found is None:
        raise SessionNotFound(
            f"session {id_or_external_id!r} not found; pass its id (session_…) or the"
            " externalId it was started with"
        )
    return found


def session_scopes(session: SessionRecord) -> list[str]:
    """What a session's public access token carries (as Python's `sessions.start`)."""
    return _tokens.session_scopes(session.id, session.external_id)


def require(
    who: Principal,
    action: str,
    session: SessionRecord,
    *,
    channel: str | None = None,
    io: str | None = None,
) -> None:
    """Raise Forbidden unless the caller may `action` (read/write) the session,
    or the side channel `channel` (and its `io`) of it. A token names the
    session by id or external id: `read:sessions:<id>` reaches every channel,
    `read:sessions:<id>:channels:<name>` one channel, `…:<name>:out` one side."""
    if who.secret:
        return
    names = [session.id] + ([session.external_id] if session.external_id else [])
    allowed: list[str] = []
    for name in names:
        allowed.append(name)
        if channel is not None:
            allowed.append(f"{name}:channels:{channel}")
            if io is not None:
                allowed.append(f"{name}:channels:{channel}:{io}")
    scopes = list(who.scopes)
    if any(allows(scopes, action, "sessions", a) for a in allowed):
        return
    what = f"{action}:sessions:{session.external_id or session.id}"
    if channel is not None:
        what += f":channels:{channel}"
    raise Forbidden(f"token does not allow {what}; its scopes are {scopes}")


def check_channel(channel: str) -> str:
    if not CHANNEL_NAME.fullmatch(channel):
        raise BadRequest(
            f"invalid session channel name {channel!r}: use 1-128 chars from [A-Za-z0-9._-]"
        )
    return channel


async def list_sessions(
    *,
    types: list[str] | None,
    task_ids: list[str] | None,
    tags: list[str] | None,
    external_id: str | None,
    statuses: list[str] | None,
    created_from: int | None,
    created_to: int | None,
    limit: int,
    after: str | None,
) -> tuple[list[SessionRecord], str | None]:
    """Newest first; the cursor `<created ms>:<session id>` names the last one
    returned, present only when more match. Every filter is in the Store's
    query: a page holds `limit` matches, and the cursor walks every match."""
    before = None
    if after:
        if not _CURSOR.fullmatch(after) or int(after.split(":", 1)[0]) >= MAX_INDEX:
            shown = after if len(after) <= 40 else after[:40] + f"… ({len(after)} characters)"
            raise BadRequest(f"page[after] is not a cursor this API returned: {shown!r}")
        ms, _, sid = after.partition(":")
        before = (int(ms), sid)
    found = await asyncio.to_thread(
        current().store.list_sessions,
        types=types,
        task_ids=task_ids,
        tags=tags,
        external_id=external_id,
        statuses=statuses,
        created_from=created_from,
        created_to=created_to,
        before=before,
        limit=limit + 1,  # one past the page: a next page only when there is one
    )
    found, more = found[:limit], len(found) > limit
    cursor = f"{found[-1].created_at}:{found[-1].id}" if more else None
    return found, cursor


async def update(session: SessionRecord, tags: list[str] | None, metadata: Any) -> SessionRecord:
    meta = None if metadata is None else json.dumps(metadata)
    updated = await asyncio.to_thread(
        current().store.update_session, session.id, tags=tags, metadata=meta
    )
    if updated is None:
        raise SessionNotFound(f"session {session.id} not found")
    return updated


# -- the sessions runtime (rayflow._runtime.session_io / session_runs) ----------


async def start(**kwargs: Any) -> tuple[SessionRecord, bool]:
    """The session and its first run, launched; (session, created)."""
    return await start_session(**kwargs)


async def close(session_id: str, reason: str | None) -> SessionRecord:
    return await close_session(session_id, reason)


async def send_input(
    session_id: str, value: Any, *, channel: str | None, part_id: str | None
) -> int:
    """Store one record on `.in` (or a channel's) and wake or continue the
    session's run; its seq."""
    sent = await runtime_send(session_id, value, channel=channel, idempotency_key=part_id)
    return sent.seq


async def append_output(
    session_id: str, value: Any, *, channel: str | None, part_id: str | None
) -> int:
    return await runtime_append(session_id, value, channel=channel, part_id=part_id)


async def continue_with_fresh_run(
    session_id: str, calling_run_id: str, reason: str
) -> tuple[str | None, bool]:
    """A fresh run takes the session over from `calling_run_id`; (the
    session's run after, whether this call swapped it in)."""
    return await end_and_continue(session_id, calling_run_id, reason)
