"""Sessions: a durable two-way conversation that outlives any one run.

    from rayflow import sessions, task

    @task(id="inbox-agent")
    async def inbox_agent(payload: dict) -> None:
        session = sessions.open(sessions.current().id)
        while True:
            # suspends the run (no process held) until a record arrives;
            # gives up after the session's idle_timeout_s
            next = await session.input.wait()
            if not next.ok:
                return
            await session.output.append({"type": "reply", "text": f"echo: {next.output['text']}"})

    # your backend
    started = sessions.start(type="inbox", external_id=user_id, task_id="inbox-agent",
                             trigger_config={"idle_timeout_s": 3600}).result()
    session = sessions.open(user_id)
    session.input.send({"text": "hello"}).result()
    for record in session.output.read(start=0, timeout_s=30):   # live, resumable
        print(record.seq_num, record.value())

A session (Trigger.dev's `sessions`) is keyed by your `external_id` (a
chat id) and owns a pair of durable streams, `.input` and `.output`, whose
records carry sequence numbers from 0 that keep counting across runs. Its
*current run* does the work: when that run has ended (returned, idled out,
crashed, cancelled) the next record sent to `.input` starts a fresh run with
the same base payload, which takes the records the last run did not take
and writes on to the same output. Side channels (`session.channel(name)`)
are further named in/out pairs; sending to a channel wakes no run.

Every call returns a `Response`: `await` it in async code, or `.result()`.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from rayflow import _tokens
from rayflow._response import Response
from rayflow._runtime import connection, session_runs
from rayflow._runtime.context import current_run, require_run
from rayflow._runtime.journal import MISSING
from rayflow._runtime.session_io import RecordPage, S2Record, SentRecord
from rayflow._session_handles import (
    OutputWriter,
    RecordReader,
    Session,
    SessionChannel,
    SessionInput,
    SessionOutput,
    Subscription,
)
from rayflow.errors import InvalidArgument
from rayflow.store.base import SessionRecord

T = TypeVar("T")

__all__ = [
    "CurrentSession",
    "OutputWriter",
    "RecordPage",
    "RecordReader",
    "S2Record",
    "SentRecord",
    "Session",
    "SessionChannel",
    "SessionInfo",
    "SessionInput",
    "SessionOutput",
    "StartedSession",
    "Subscription",
    "close",
    "current",
    "end_and_continue",
    "list",
    "open",
    "retrieve",
    "start",
    "update",
]


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass
class SessionInfo:
    """A session as stored."""

    id: str
    external_id: str | None
    type: str
    task_id: str
    current_run_id: str | None
    trigger_config: dict[str, Any]
    tags: builtins.list[str]
    metadata: Any
    closed_at: datetime | None
    closed_reason: str | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    @classmethod
    def of(cls, s: SessionRecord) -> SessionInfo:
        return cls(
            id=s.id,
            external_id=s.external_id,
            type=s.type,
            task_id=s.task_id,
            current_run_id=s.current_run_id,
            trigger_config=json.loads(s.trigger_config),
            tags=s.tags,
            metadata=None if s.metadata is None else json.loads(s.metadata),
            closed_at=_time(s.closed_at),
            closed_reason=s.closed_reason,
            expires_at=_time(s.expires_at),
            created_at=_time(s.created_at) or datetime.now(timezone.utc),
            updated_at=_time(s.updated_at) or datetime.now(timezone.utc),
        )


@dataclass
class StartedSession:
    """What `start` returns: the session, its first (or current) run, a
    token for its streams (valid 60 minutes, `RAYFLOW_SESSION_TOKEN_TTL_S`;
    start the session again for a fresh one), and whether it existed already."""

    id: str
    external_id: str | None
    run_id: str | None
    public_access_token: str
    is_cached: bool


@dataclass
class CurrentSession:
    """Inside a session's run: the session it serves, and whether this run
    continues it (an earlier run of the session ended)."""

    id: str
    continuation: bool
    previous_run_id: str | None
    idle_timeout_s: float | None


def _ms(at: datetime | None) -> int | None:
    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return int(at.timestamp() * 1000)


def session_token(session: SessionRecord) -> str:
    """A token reading and writing the session (by its id and external id),
    valid `session_token_ttl_s` (as the HTTP start route's)."""
    conn = connection.current()
    scopes = _tokens.session_scopes(session.id, session.external_id)
    return _tokens.mint_token(conn.secret_key, scopes, conn.settings.session_token_ttl_s)


def start(
    *,
    type: str,
    task_id: str,
    external_id: str | None = None,
    trigger_config: dict[str, Any] | None = None,
    tags: builtins.list[str] | None = None,
    metadata: Any = None,
    expires_at: datetime | None = None,
) -> Response[StartedSession]:
    """Create a session and trigger its first run of `task_id`, in one
    transaction. Idempotent on `external_id`: a second start (even a
    concurrent one) returns the same session and run (`is_cached=True`) and
    writes its `trigger_config`, tags and metadata through for future runs.
    `trigger_config`: `base_payload` (every run's payload), `tags` (every
    run's), `max_duration` (per run), `idle_timeout_s` (how long
    `input.wait()` waits before giving up, by default). Raises
    `InvalidArgument` (an external id starting with `session_` — reserved —
    or with `:channels:`), `TaskNotFound`, `SessionClosed` (that external id
    names a closed or expired session: use another)."""

    async def go() -> StartedSession:
        session, created = await session_runs.start_session(
            type=type,
            task_id=task_id,
            external_id=external_id,
            trigger_config=trigger_config,
            tags=tags,
            metadata=metadata,
            expires_at_ms=_ms(expires_at),
        )
        return StartedSession(
            id=session.id,
            external_id=session.external_id,
            run_id=session.current_run_id,
            public_access_token=session_token(session),
            is_cached=not created,
        )

    return Response(go)


def retrieve(id_or_external_id: str) -> Response[SessionInfo]:
    """The session by its `session_*` id or your external id; raises `SessionNotFound`."""

    async def go() -> SessionInfo:
        return SessionInfo.of(await session_runs.get_session(id_or_external_id))

    return Response(go)


def list(
    *,
    type: str | builtins.list[str] | None = None,
    task_id: str | builtins.list[str] | None = None,
    tag: str | builtins.list[str] | None = None,
    external_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> Response[builtins.list[SessionInfo]]:
    """Sessions, newest first; `status` is ACTIVE, CLOSED or EXPIRED; `tag`: every one."""
    if status is not None and status not in ("ACTIVE", "CLOSED", "EXPIRED"):
        raise InvalidArgument(f"status must be ACTIVE, CLOSED or EXPIRED, not {status!r}")

    def many(v: str | builtins.list[str] | None) -> builtins.list[str] | None:
        return [v] if isinstance(v, str) else v

    async def go() -> builtins.list[SessionInfo]:
        store = connection.current().store
        found = await asyncio.to_thread(
            lambda: store.list_sessions(
                types=many(type),
                task_ids=many(task_id),
                tags=many(tag),
                external_id=external_id,
                statuses=None if status is None else [status],
                limit=limit,
            )
        )
        return [SessionInfo.of(s) for s in found]

    return Response(go)


def update(
    id_or_external_id: str, *, tags: builtins.list[str] | None = None, metadata: Any = None
) -> Response[SessionInfo]:
    """Replace the session's tags and/or metadata (its external id never changes)."""
    checked = None if tags is None else session_runs.check_tags(tags, "a session")

    async def go() -> SessionInfo:
        session = await session_runs.get_session(id_or_external_id)
        store = connection.current().store
        text = None if metadata is None else json.dumps(metadata)
        updated = await asyncio.to_thread(
            lambda: store.update_session(session.id, tags=checked, metadata=text)
        )
        assert updated is not None
        return SessionInfo.of(updated)

    return Response(go)


def close(id_or_external_id: str, *, reason: str | None = None) -> Response[SessionInfo]:
    """Close the session: terminal and idempotent (the first reason stands).
    Its run's `input.wait()`/`once()` then returns a failed `Result`
    (`SessionClosed`), and sends to it raise `SessionClosed`."""

    async def go() -> SessionInfo:
        return SessionInfo.of(await session_runs.close_session(id_or_external_id, reason))

    return Response(go)


def end_and_continue(
    id_or_external_id: str | None = None,
    *,
    calling_run_id: str | None = None,
    reason: str = "handoff",
) -> Response[tuple[str | None, bool]]:
    """Hand the session over to a fresh run, started now, and return (the
    session's run after, whether it was handed over). Inside a session's
    run both default to this run and its session; the calling run should
    then return (it takes no more input). False when another run is
    current already (someone else moved on)."""

    async def go() -> tuple[str | None, bool]:
        ctx = current_run()
        session = id_or_external_id or (ctx.session["id"] if ctx and ctx.session else None)
        caller = calling_run_id or (ctx.run_id if ctx else None)
        if session is None or caller is None:
            raise InvalidArgument(
                "end_and_continue needs the session and the calling run outside a session's run"
            )
        if ctx is not None:
            recorded = ctx.journal.replay("session-handoff", session)
            if recorded is not MISSING:
                return recorded["run_id"], bool(recorded["swapped"])
        run_id, swapped = await session_runs.end_and_continue(session, caller, reason)
        if ctx is not None:
            outcome = {"run_id": run_id, "swapped": swapped}
            await ctx.journal.record("session-handoff", session, outcome)
        return run_id, swapped

    return Response(go)


def current() -> CurrentSession:
    """Inside a session's run: the session it serves. Raises `OutsideTask`
    outside a run, `InvalidArgument` in a run no session started."""
    ctx = require_run("sessions.current()")
    if ctx.session is None:
        raise InvalidArgument(
            f"run {ctx.run_id} serves no session: it was not started by sessions.start()"
            " or a send to a session"
        )
    s = ctx.session
    return CurrentSession(s["id"], s["continuation"], s["previous_run_id"], s["idle_timeout_s"])


def open(id_or_external_id: str) -> Session:
    """A handle on the session's streams (no Store call until you use it)."""
    return Session(id_or_external_id)
