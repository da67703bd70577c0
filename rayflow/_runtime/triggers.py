"""Triggering runs and waiting for them, from anywhere: inside a task each
trigger and each child's outcome is journaled (a revived parent gets the same
children and results back), and a child's idempotency key is scoped to its
parent; the caller gets a `RunHandle` with a freshly minted public token.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic_core import to_jsonable_python

from rayflow import _tokens
from rayflow._handles import Result, RunHandle
from rayflow._runtime import connection
from rayflow._runtime.calls import call
from rayflow._runtime.context import current_run
from rayflow._runtime.journal import MISSING
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
    run_id, created = await call(
        conn.controller.trigger.remote(
            task_id,
            json.dumps(to_jsonable_python(payload)),
            options,
            parent_id,
            idempotency_key,
            tags,
        )
    )
    if ctx is not None:
        await ctx.journal.record("trigger", task_id, {"id": run_id, "cached": not created})
    return _handle(conn.secret_key, run_id, task_id, not created)


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
