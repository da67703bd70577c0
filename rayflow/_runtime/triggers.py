"""Triggering runs and waiting for them, from anywhere: inside a task each
trigger and each child's outcome is journaled (a revived parent gets the same
children and results back), and a child's idempotency key is scoped to its
parent; the caller gets a `RunHandle` with a freshly minted public token.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from pydantic_core import to_jsonable_python

from rayflow import _tokens
from rayflow._handles import Result, RunHandle
from rayflow._runtime import connection
from rayflow._runtime.batching import CallGroup
from rayflow._runtime.calls import call
from rayflow._runtime.context import current_run
from rayflow._runtime.journal import MISSING
from rayflow._runtime.run_creation import TriggerItem
from rayflow._status import RunStatus
from rayflow.errors import RunFailed


def child_key(parent_id: str, key: str | None, auto: str) -> str:
    """The stored idempotency key of a child run: scoped to its parent, so
    that no other caller can name it (HTTP callers' keys are scoped to them,
    see `serve.auth.Principal.idempotency_key`) and two parents' keys never
    meet; `auto` (attempt and journal position) when the task gave none."""
    return f"run:{parent_id}:" + (f"key:{key}" if key is not None else f"auto:{auto}")


async def trigger_run(
    task_id: str,
    payload: Any,
    options: dict[str, Any],
    idempotency_key: str | None,
    tags: list[str] | None,
) -> RunHandle:
    conn = connection.current()
    ctx = current_run()
    parent_id = None
    if ctx is not None:
        parent_id = ctx.run_id
        recorded = ctx.journal.replay("trigger", task_id)
        if recorded is not MISSING:
            return _handle(conn.secret_key, recorded["id"], task_id, recorded["cached"])
        # a crash between creating the child and journaling it must not make two
        auto = f"{ctx.attempt}:{ctx.journal.cursor}"
        idempotency_key = child_key(ctx.run_id, idempotency_key, auto)
    payload_json = json.dumps(to_jsonable_python(payload))
    if ctx is None:
        # triggers made together in this process (a backend starting many
        # runs at once) share one Controller call and one Store transaction
        item = (payload_json, options, idempotency_key, tags)
        run_id, created = await _coalesced(conn, task_id).submit(item)
    else:
        run_id, created = await call(
            conn.controller.trigger.remote(
                task_id, payload_json, options, parent_id, idempotency_key, tags
            )
        )
    if ctx is not None:
        await ctx.journal.record("trigger", task_id, {"id": run_id, "cached": not created})
    return _handle(conn.secret_key, run_id, task_id, not created)


#: `trigger_each` calls this process made (tests count them)
coalesced_calls = 0

#: per event loop: per (connection, task id), the triggers waiting for the call in flight
_groups: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, str], CallGroup[TriggerItem, tuple[str, bool]]]
] = weakref.WeakKeyDictionary()


def _coalesced(
    conn: connection.Connection, task_id: str
) -> CallGroup[TriggerItem, tuple[str, bool]]:
    """The group of this loop's triggers of `task_id`: one `trigger_each`
    call in flight, carrying every trigger made meanwhile."""
    groups = _groups.setdefault(asyncio.get_running_loop(), {})
    for key in [k for k, g in groups.items() if g.idle and k != (id(conn), task_id)]:
        del groups[key]  # a loop that triggers many tasks keeps only the busy ones
    group = groups.get((id(conn), task_id))
    if group is None:

        async def trigger_each(items: list[TriggerItem]) -> list[Any]:
            global coalesced_calls
            coalesced_calls += 1
            return list(await call(conn.controller.trigger_each.remote(task_id, items)))

        group = groups[(id(conn), task_id)] = CallGroup(trigger_each)
    return group


async def trigger_runs(
    task_id: str,
    payloads: list[Any],
    options: dict[str, Any],
    keys: list[str | None],
    tags: list[str] | None,
) -> list[RunHandle]:
    conn = connection.current()
    ctx = current_run()
    parent_id = None
    if ctx is not None:
        parent_id = ctx.run_id
        recorded = ctx.journal.replay("batch-trigger", task_id)
        if recorded is not MISSING:
            return [_handle(conn.secret_key, i, task_id, c) for i, c in recorded["runs"]]
        # a crash between creating the children and journaling them must not make two
        prefix = f"{ctx.attempt}:{ctx.journal.cursor}"
        keys = [child_key(ctx.run_id, k, f"{prefix}:{n}") for n, k in enumerate(keys)]
    items = [
        (json.dumps(to_jsonable_python(p)), options, k, tags)
        for p, k in zip(payloads, keys, strict=True)
    ]
    created: list[tuple[str, bool]] = await call(
        conn.controller.trigger_batch.remote(task_id, items, parent_id)
    )
    runs = [(run_id, not new) for run_id, new in created]
    if ctx is not None:
        await ctx.journal.record("batch-trigger", task_id, {"runs": runs})
    return [_handle(conn.secret_key, run_id, task_id, cached) for run_id, cached in runs]


def _handle(secret: str, run_id: str, task_id: str, cached: bool) -> RunHandle:
    ttl = connection.current().settings.token_ttl_s
    token = _tokens.mint_token(secret, _tokens.run_scopes(run_id), ttl)
    return RunHandle(id=run_id, public_access_token=token, task_id=task_id, is_cached=cached)


async def wait_for_run(run_id: str) -> Result[Any]:
    """Wait for a run to finish (journaled inside a task)."""
    conn = connection.current()
    ctx = current_run()
    if ctx is not None:
        recorded = ctx.journal.replay("child", run_id)
        if recorded is not MISSING:
            return _child_result(run_id, recorded)
    status = await call(conn.controller.wait_run.remote(run_id))
    run = await asyncio.to_thread(conn.store.get_run, run_id)
    assert run is not None
    outcome = {
        "status": status,
        "output": json.loads(run.output) if run.output else None,
        "error": json.loads(run.error) if run.error else None,
    }
    if ctx is not None:
        await ctx.journal.record("child", run_id, outcome)
    return _child_result(run_id, outcome)


def _child_result(run_id: str, outcome: dict[str, Any]) -> Result[Any]:
    if outcome["status"] == RunStatus.COMPLETED:
        return Result(ok=True, output=outcome["output"])
    error = outcome.get("error") or {}
    return Result(
        ok=False,
        error=RunFailed(
            f"child run {run_id} ended {outcome['status']}: {error.get('message', '')}",
            run_id=run_id,
            status=outcome["status"],
            error=error,
        ),
    )
