"""Run metadata: a small JSON object a task keeps up to date while it runs
(progress, the current step, counters) for anyone watching the run.

    from rayflow import metadata

    @task(id="import-csv")
    async def import_csv(payload: dict) -> int:
        metadata.set("status", "parsing")
        for row in rows:
            metadata.increment("rows")
        metadata.append("log", "parsed")
        await metadata.flush()       # durable now (otherwise within ~0.1 s)

It is visible in `rayflow.runs.retrieve(id).metadata`, in `GET /api/v3/runs/{id}`,
in run subscriptions (`useRealtimeRun` shows it as `run.metadata`) and on the
dashboard. Initial metadata can be given at trigger time (`metadata=`).

Deterministic by construction, so it needs no journal entries: the metadata
of a run is a function of the operations its code performs, in order. A run
revived after a `.wait()` (or after its actor died) starts again from the
trigger-time metadata and replays its code; its operations rebuild the same
object, and nothing is written while it replays — the Store keeps the value
it had when the run suspended until the run goes live again. So `get()` is
deterministic too. A retry (a fresh attempt) starts from the trigger-time
metadata. Writes are coalesced (one Store commit per ~0.1 s burst) and the
last one is durable before the run's status changes.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from rayflow._runtime import connection
from rayflow._runtime.context import RunContext, current_run, require_run
from rayflow.errors import PayloadTooLarge, ValidationError

log = logging.getLogger("rayflow")

#: Trigger.dev's limit for a run's metadata
MAX_METADATA_BYTES = 256 * 1024
#: a burst of updates within this long is written once
COALESCE_S = 0.1


class RunMetadata:
    """The metadata of the run executing in one RunContext."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.values: dict[str, Any] = copy.deepcopy(ctx.trigger_metadata)
        self.dirty = False
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None
        #: whether `_pending` is still in its coalescing pause (not writing)
        self._pausing = False

    def changed(self, values: dict[str, Any]) -> None:
        text = json.dumps(values)
        if len(text.encode()) > MAX_METADATA_BYTES:
            raise PayloadTooLarge(
                f"run {self.ctx.run_id}: metadata would be {len(text.encode())} bytes; the limit"
                f" is {MAX_METADATA_BYTES}. Keep large data in an output stream instead."
            )
        self.values = values
        self.dirty = True
        if self.ctx.journal.replaying:
            return  # the Store already holds what this replay is rebuilding
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        self._pausing = True
        try:
            await asyncio.sleep(COALESCE_S)
        except asyncio.CancelledError:
            return  # `close` writes instead
        finally:
            self._pausing = False
        await self.write()

    async def close(self) -> None:
        """Write what is left now, and leave no write pending: the run is
        suspending or ending (a task it leaves running retires its actor)."""
        pending = self._pending
        if pending is not None and not pending.done():
            if self._pausing:
                pending.cancel()
            # a write under way is awaited, not cut off: it is durable before
            # the run's status changes
            await asyncio.gather(pending, return_exceptions=True)
        await self.write()

    async def write(self) -> None:
        if self.ctx.journal.replaying:
            return
        async with self._lock:
            if not self.dirty:
                return
            self.dirty = False
            text = json.dumps(self.values)
            store = connection.current().store
            await asyncio.to_thread(store.update_run, self.ctx.run_id, metadata=text)


def _state(what: str) -> RunMetadata:
    # one object per attempt, shared by the task's code and its `.on()`
    # handlers (each handler runs in a context of its own: `for_delivery`)
    ctx = require_run(f"rayflow.metadata.{what}()")
    state: RunMetadata | None = ctx.shared.get("metadata")
    if state is None:
        state = RunMetadata(ctx)
        ctx.shared["metadata"] = state
    return state


def _json(key: str, value: Any) -> Any:
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError as e:
        raise ValidationError(f"metadata {key!r} must be JSON-serialisable: {e}") from None


def current() -> dict[str, Any]:
    """A copy of the whole metadata object."""
    return copy.deepcopy(_state("current").values)


def get(key: str, default: Any = None) -> Any:
    """The value under `key` (a copy), or `default`."""
    return copy.deepcopy(_state("get").values.get(key, default))


def set(key: str, value: Any) -> None:
    """Set `key` to a JSON-serialisable value. Raises `ValidationError`, or
    `PayloadTooLarge` past 256 KiB in all."""
    state = _state("set")
    state.changed({**state.values, key: _json(key, value)})


def delete(key: str) -> None:
    """Remove `key` (no error when it is absent)."""
    state = _state("delete")
    state.changed({k: v for k, v in state.values.items() if k != key})


def replace(values: dict[str, Any]) -> None:
    """Replace the whole metadata object."""
    _state("replace").changed(dict(_json("<all>", values)))


def append(key: str, value: Any) -> None:
    """Append to the list under `key` (a missing key becomes a list; a
    non-list value becomes the first element)."""
    state = _state("append")
    existing = state.values.get(key)
    items = (
        list(existing) if isinstance(existing, list) else ([] if existing is None else [existing])
    )
    state.changed({**state.values, key: [*items, _json(key, value)]})


def increment(key: str, amount: float = 1) -> None:
    """Add `amount` to the number under `key` (missing: 0). Raises
    `ValidationError` when the value there is not a number."""
    state = _state("increment")
    existing = state.values.get(key, 0)
    if isinstance(existing, bool) or not isinstance(existing, int | float):
        raise ValidationError(f"metadata {key!r} is {existing!r}, not a number; cannot increment")
    state.changed({**state.values, key: existing + amount})


def decrement(key: str, amount: float = 1) -> None:
    """Subtract `amount` from the number under `key` (see `increment`)."""
    increment(key, -amount)


async def flush() -> None:
    """Wait until every update so far is durable (and pushed to subscribers)."""
    await _state("flush").write()


async def flush_run(ctx: RunContext | None = None) -> None:
    """Make the run's last metadata durable (called when its function ends
    or suspends), with no coalesced write left pending."""
    ctx = ctx or current_run()
    state = None if ctx is None else ctx.shared.get("metadata")
    if state is not None:
        await state.close()


__all__ = [
    "append",
    "current",
    "decrement",
    "delete",
    "flush",
    "get",
    "increment",
    "replace",
    "set",
]
