"""A session's runs: start (the session and its first run in one
transaction), the fresh run a continuation creates, launching them, and
closing (which ends a waiting run's wait).

Every run of a session is triggered from its `trigger_config` (stored
normalised: `base_payload`, `tags`, `max_duration_s`, `idle_timeout_s`):
its payload is the base payload unchanged; its options carry the session
(`session_id`, `session_continuation`, `session_previous_run_id`), which the
run reads back through `rayflow.sessions.current()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

from pydantic_core import to_jsonable_python

from rayflow._runtime import connection, wait_tokens
from rayflow._runtime.durations import parse_duration
from rayflow._runtime.run_creation import new_run_id
from rayflow.errors import InvalidArgument, SessionNotFound, TaskNotFound
from rayflow.store.base import RunRecord, SessionRecord, now_ms

log = logging.getLogger("rayflow")

#: the prefix of every session id; an external id may not start with it
SESSION_PREFIX = "session_"
#: Trigger.dev's limit on a session's (and its runs') tags
MAX_TAGS = 10
#: the keys a trigger config may carry (camelCase, as the SDK sends them, too)
_CONFIG_KEYS = {
    "base_payload": "base_payload",
    "basePayload": "base_payload",
    "tags": "tags",
    "max_duration": "max_duration_s",
    "maxDuration": "max_duration_s",
    "max_duration_s": "max_duration_s",
    "idle_timeout_s": "idle_timeout_s",
    "idleTimeoutInSeconds": "idle_timeout_s",
}

#: external id -> session id (never changes once created)
_ids: dict[str, str] = {}
_ids_lock = threading.Lock()


def new_session_id() -> str:
    return SESSION_PREFIX + secrets.token_hex(12)


def check_external_id(external_id: str | None) -> None:
    if external_id is None:
        return
    if not isinstance(external_id, str) or not external_id:
        raise InvalidArgument("external_id must be a non-empty string")
    if external_id.startswith(SESSION_PREFIX):
        raise InvalidArgument(
            f"external_id {external_id!r} starts with {SESSION_PREFIX!r}, which session ids"
            " use (Trigger.dev reserves it): choose another external id"
        )
    if ":channels:" in external_id:
        raise InvalidArgument(
            f"external_id {external_id!r} contains ':channels:', the delimiter of channel"
            " token scopes: choose another external id"
        )


def check_tags(tags: list[str] | None, what: str) -> list[str]:
    found = list(tags or [])
    if len(found) > MAX_TAGS or not all(isinstance(t, str) and t for t in found):
        raise InvalidArgument(f"{what} takes at most {MAX_TAGS} non-empty string tags: {found!r}")
    return found


def normalize_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The trigger config as stored; raises InvalidArgument for what it cannot use."""
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = _CONFIG_KEYS.get(key)
        if name is None:
            continue  # queue, machine, region, version pins: not rayflow's to honour
        out[name] = value
    out["base_payload"] = to_jsonable_python(out.get("base_payload"))
    out["tags"] = check_tags(out.get("tags"), "trigger_config")
    for key in ("max_duration_s", "idle_timeout_s"):
        if out.get(key) is not None:
            out[key] = parse_duration(out[key])
    return out


async def get_session(id_or_external: str) -> SessionRecord:
    """The session (read now); raises SessionNotFound."""
    store = connection.current().store
    session = await asyncio.to_thread(store.get_session, id_or_external)
    if session is None:
        raise SessionNotFound(f"session {id_or_external!r} not found; check the id or external id")
    if session.external_id is not None:
        with _ids_lock:
            _ids[session.external_id] = session.id
    return session


async def session_id_of(id_or_external: str) -> str:
    """The `session_*` id (external ids looked up once per process)."""
    if id_or_external.startswith(SESSION_PREFIX):
        return id_or_external
    with _ids_lock:
        found = _ids.get(id_or_external)
    return found if found is not None else (await get_session(id_or_external)).id


async def _defaults(task_id: str) -> dict[str, Any]:
    store = connection.current().store
    defaults = await asyncio.to_thread(store.get_task_defaults, task_id)
    if defaults is None:
        raise TaskNotFound(
            f"no task {task_id!r} is registered; define it with @task and trigger it once"
            " from Python (or load its module with `rayflow dev`)"
        )
    found: dict[str, Any] = json.loads(defaults)
    return found


def _run(
    session_id: str,
    task_id: str,
    config: dict[str, Any],
    defaults: dict[str, Any],
    previous: str | None,
) -> RunRecord:
    run_id = new_run_id()
    options = dict(defaults)
    if config.get("max_duration_s") is not None:
        options["max_duration_s"] = config["max_duration_s"]
    options.update(
        session_id=session_id,
        session_continuation=previous is not None,
        session_previous_run_id=previous,
        session_idle_timeout_s=config.get("idle_timeout_s"),
    )
    return RunRecord(
        id=run_id,
        task_id=task_id,
        payload=json.dumps(config.get("base_payload")),
        options=json.dumps(options),
        tags=json.dumps(config.get("tags") or []),
        root_id=run_id,
    )


async def next_run_factory(session: SessionRecord) -> Callable[[SessionRecord], RunRecord]:
    """What `Store.session_send` calls, under the session's lock, when the
    session's run has ended: a fresh run from the session's config then."""
    defaults = await _defaults(session.task_id)

    def make(locked: SessionRecord) -> RunRecord:
        config = json.loads(locked.trigger_config)
        return _run(locked.id, locked.task_id, config, defaults, locked.current_run_id)

    return make


async def launch(run_id: str) -> None:
    """Ask the Controller to launch a QUEUED run (its sweep does, if this fails)."""
    await wait_tokens.revive(run_id)


async def start_session(
    *,
    type: str,
    task_id: str,
    external_id: str | None = None,
    trigger_config: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    metadata: Any = None,
    expires_at_ms: int | None = None,
) -> tuple[SessionRecord, bool]:
    """Create the session and its first run in one transaction and launch
    the run; or — with an external id already in use — return that session
    (config, tags and metadata written through; no new run). Raises
    InvalidArgument, TaskNotFound, SessionClosed."""
    check_external_id(external_id)
    if not isinstance(type, str) or not type:
        raise InvalidArgument("a session needs a type (a non-empty string, e.g. 'chat.agent')")
    config = normalize_config(trigger_config)
    session_tags = check_tags(tags, "a session")
    defaults = await _defaults(task_id)
    session_id = new_session_id()
    now = now_ms()
    record = SessionRecord(
        id=session_id,
        external_id=external_id,
        type=type,
        task_id=task_id,
        trigger_config=json.dumps(config),
        current_run_id=None,
        tags=session_tags,
        metadata=None if metadata is None else json.dumps(to_jsonable_python(metadata)),
        closed_at=None,
        closed_reason=None,
        expires_at=expires_at_ms,
        created_at=now,
        updated_at=now,
    )
    first = _run(session_id, task_id, config, defaults, None)
    store = connection.current().store
    session, created = await asyncio.to_thread(store.start_session, record, first)
    if created:
        await launch(first.id)
    if session.external_id is not None:
        with _ids_lock:
            _ids[session.external_id] = session.id
    return session, created


async def close_session(id_or_external: str, reason: str | None = None) -> SessionRecord:
    """Close it (idempotent); a run waiting on its input wakes and sees it closed."""
    from rayflow._runtime import session_io  # session_io imports this module

    session = await get_session(id_or_external)
    store = connection.current().store
    closed = await asyncio.to_thread(store.close_session, session.id, reason)
    assert closed is not None
    run_id = closed.current_run_id
    if run_id is not None:
        if await asyncio.to_thread(store.settle_session_wait, run_id, closed.id):
            await launch(run_id)
        else:
            await session_io.poke(run_id, [session_io.session_stream_path(closed.id, "in")])
    return closed


async def end_and_continue(
    id_or_external: str, calling_run_id: str, reason: str | None = None
) -> tuple[str | None, bool]:
    """Hand the session over from `calling_run_id` (its current run, which
    then ends) to a fresh run, launched now; (the session's run after,
    whether this call swapped it — False: another run is current already).
    The calling run takes no more input records once it is swapped out."""
    session = await get_session(id_or_external)
    make = await next_run_factory(session)
    store = connection.current().store
    run_id, swapped = await asyncio.to_thread(store.session_swap, session.id, calling_run_id, make)
    if swapped and run_id is not None:
        log.info(
            "session %s: run %s handed over to %s (%s)", session.id, calling_run_id, run_id, reason
        )
        await launch(run_id)
    return run_id, swapped
