"""Wait tokens, the machinery: create (journaled inside a task), complete
from anywhere and revive the runs it woke, and the task's side of
`wait.for_token` — a journaled outcome, a token already settled, or
`Suspended` on a waitpoint whose stream id is `token:<id>` (after which the
RunActor registers it and settles the race with a completion that came
first, `Store.settle_token_wait`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
import weakref
from typing import Any

from rayflow._runtime import connection
from rayflow._runtime.attempts import Suspended
from rayflow._runtime.batching import CallGroup
from rayflow._runtime.calls import call
from rayflow._runtime.context import RunContext, current_run
from rayflow._runtime.journal import MISSING
from rayflow._status import WaitpointStatus, WaitTokenStatus
from rayflow.errors import InvalidArgument, WaitTokenNotFound
from rayflow.store.base import TOKEN_WAIT_PREFIX, Waitpoint, WaitTokenRecord, now_ms

log = logging.getLogger("rayflow")

#: Trigger.dev's limits on a token's tags and idempotency key
MAX_TAGS, MAX_TAG_CHARS, MAX_KEY_CHARS = 10, 128, 2048
#: how often a completion asks the Controller to revive a run it woke (the
#: Controller's sweep launches a queued run anyway after ~2 s)
_REVIVE_TRIES = 3


def new_token_id() -> str:
    return "waitpoint_" + uuid.uuid4().hex[:25]


def callback_signature(secret_key: str, token_id: str) -> str:
    """The part of a token's `url` that lets its holder complete it without
    a key (webhooks): an HMAC of the id under the secret key."""
    mac = hmac.new(secret_key.encode(), f"waitpoint-callback:{token_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def callback_url(base_url: str, secret_key: str, token_id: str) -> str:
    signature = callback_signature(secret_key, token_id)
    return f"{base_url.rstrip('/')}/api/v1/waitpoints/tokens/{token_id}/callback/{signature}"


def check_tags(tags: list[str] | str | None) -> list[str]:
    found = [tags] if isinstance(tags, str) else list(tags or [])
    if len(found) > MAX_TAGS:
        raise InvalidArgument(f"a wait token takes at most {MAX_TAGS} tags, not {len(found)}")
    for tag in found:
        if not isinstance(tag, str) or not tag or len(tag) >= MAX_TAG_CHARS:
            raise InvalidArgument(
                f"wait token tag {tag!r} must be a non-empty string under"
                f" {MAX_TAG_CHARS} characters"
            )
    return found


async def create(
    *,
    timeout_s: float | None,
    idempotency_key: str | None,
    idempotency_key_ttl_s: float | None,
    tags: list[str],
) -> tuple[WaitTokenRecord, bool]:
    """Store a new token (or find the one holding the key); (token, cached).
    Inside a task it is journaled, and its id is derived from the run, the
    attempt and the journal position: a replay (or a crash before the
    journal write) gets the same token back."""
    if idempotency_key is not None and len(idempotency_key) > MAX_KEY_CHARS:
        raise InvalidArgument(f"idempotency_key must be {MAX_KEY_CHARS} characters or less")
    ctx = current_run()
    token_id = new_token_id()
    if ctx is not None:
        recorded = ctx.journal.replay("token", "create")
        if recorded is not MISSING:
            return await get(recorded["id"]), bool(recorded["cached"])
        seed = f"{ctx.run_id}:{ctx.attempt}:{ctx.journal.cursor}"
        token_id = "waitpoint_" + hashlib.sha256(seed.encode()).hexdigest()[:25]
    now = now_ms()
    record = WaitTokenRecord(
        id=token_id,
        status=WaitTokenStatus.WAITING.value,
        output=None,
        output_is_error=False,
        timeout_at=None if timeout_s is None else now + int(timeout_s * 1000),
        idempotency_key=idempotency_key,
        idempotency_key_expires_at=(
            None
            if idempotency_key is None or idempotency_key_ttl_s is None
            else now + int(idempotency_key_ttl_s * 1000)
        ),
        tags=tags,
        created_at=now,
    )
    store = connection.current().store
    token, created = await asyncio.to_thread(store.create_wait_token, record)
    cached = not created or token.id != token_id
    if ctx is not None:
        await ctx.journal.record("token", "create", {"id": token.id, "cached": cached})
    return token, cached


async def get(token_id: str) -> WaitTokenRecord:
    token = await asyncio.to_thread(connection.current().store.get_wait_token, token_id)
    if token is None:
        raise WaitTokenNotFound(
            f"wait token {token_id} not found; check the id (completed tokens are deleted"
            " after retention)"
        )
    return token


async def complete(token_id: str, output_json: str) -> WaitTokenRecord:
    """Complete the token with `output_json` (JSON text) unless it was
    completed or timed out already (the first outcome stands); revive the
    runs it woke. Raises WaitTokenNotFound."""
    ctx = current_run()
    if ctx is not None and ctx.journal.replay("token-complete", token_id) is not MISSING:
        return await get(token_id)
    conn = connection.current()
    token, woken = await asyncio.to_thread(conn.store.complete_wait_token, token_id, output_json)
    if token is None:
        raise WaitTokenNotFound(f"wait token {token_id} not found; check the id")
    if ctx is not None:
        await ctx.journal.record("token-complete", token_id, None)
    for run_id in woken:
        await revive(run_id)
    return token


async def revive(run_id: str) -> None:
    """Ask the Controller to launch a run a completion (or a session's
    send) queued. The revivals this event loop asks for together share one
    Controller call (1,000 sessions sent to at once: one call per batch, not
    1,000). A failure only delays it: the Controller's sweep launches stray
    queued runs."""
    for attempt in range(_REVIVE_TRIES):
        try:
            await _revivals(connection.current()).submit(run_id)
            return
        except Exception as e:
            log.warning("run %s: asking the Controller to revive it failed: %r", run_id, e)
            await asyncio.sleep(0.1 * (attempt + 1))


#: per event loop, per connection: the revivals waiting for the call in flight
_groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, CallGroup[str, bool]]] = (
    weakref.WeakKeyDictionary()
)


def _revivals(conn: connection.Connection) -> CallGroup[str, bool]:
    groups = _groups.setdefault(asyncio.get_running_loop(), {})
    group = groups.get(id(conn))
    if group is None:
        groups.clear()  # an earlier connection's (rayflow.init after shutdown)

        async def revive_many(run_ids: list[str]) -> list[bool | BaseException]:
            return list(await call(conn.controller.revive_many.remote(run_ids)))

        group = groups[id(conn)] = CallGroup(revive_many)
    return group


async def wait_outcome(ctx: RunContext, token_id: str) -> dict[str, Any]:
    """The outcome of `wait.for_token` — `{"output": <JSON text>}` or
    `{"timeout": <JSON text>}`, journaled; raises `Suspended` while the token
    waits (the run holds no process until it is completed or times out)."""
    recorded = ctx.journal.replay("token-wait", token_id)
    if recorded is not MISSING:
        journaled: dict[str, Any] = recorded
        return journaled
    stream_id = TOKEN_WAIT_PREFIX + token_id
    if ctx.inputs.resolved is not None and ctx.inputs.resolved.stream_id == stream_id:
        ctx.inputs.resolved = None  # revived for this token: it has settled
    store = connection.current().store
    token = await get(token_id)
    if token.status == WaitTokenStatus.WAITING and (
        token.timeout_at is not None and token.timeout_at <= now_ms()
    ):
        # past its timeout but not yet expired by the Controller's timer
        settled, _ = await asyncio.to_thread(store.complete_wait_token, token_id, None, True)
        token = settled or token
    if token.status == WaitTokenStatus.WAITING:
        pending = WaitpointStatus.PENDING.value
        raise Suspended(Waitpoint(ctx.run_id, stream_id, None, None, pending, None))
    outcome = {"timeout" if token.output_is_error else "output": token.output or "null"}
    await ctx.journal.record("token-wait", token_id, outcome)
    return outcome


def output_text(data: Any) -> str:
    """`data` as the JSON text a token stores."""
    return json.dumps(data)
