"""Input streams: typed data sent into a running task.

    approval = streams.input("approval", Approval)
    approval.send(run_id, {"approved": True, "reviewer": "alice"}).result()

Inside the task, four ways to receive (docs/architecture.md):
- `.on(handler)` every message, buffered ones first; returns a subscription;
- `await .once(timeout_s=)` the oldest unconsumed message, holding the process;
- `.peek()` the latest message received so far, or None; never blocks;
- `await .wait(timeout=)` the same as once, but the run is suspended while it
  waits and holds no process: it is revived (on any node) and its function
  replays from the top to this point. See `rayflow.durable` for the rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from rayflow._response import Response
from rayflow._runtime import connection, sends, waitpoints
from rayflow._runtime.adapters import adapter_for
from rayflow._runtime.context import RunContext, require_run
from rayflow._runtime.durations import parse_duration
from rayflow._runtime.journal import MISSING
from rayflow.errors import PayloadTooLarge, ValidationError, WaitTimeout
from rayflow.store.base import InboxMessage
from rayflow.task import Result

T = TypeVar("T")


@dataclass
class Subscription:
    """An `.on()` registration; `off()` stops it. Removed when the run ends."""

    stream_id: str
    handler: Callable[[Any], Any]
    _ctx: RunContext

    def off(self) -> None:
        self._ctx.inputs.remove_handler(self.stream_id, self.handler)


class InputStream(Generic[T]):
    """A typed input stream handle: `streams.input("approval", Approval)`."""

    def __init__(self, id: str, type: Any = Any) -> None:
        self.id, self.type = id, type
        self._adapter: TypeAdapter[Any] = adapter_for(type)

    def __reduce__(self) -> tuple[Any, ...]:
        return (InputStream, (self.id, self.type))

    def __repr__(self) -> str:
        return f"InputStream({self.id!r}, {getattr(self.type, '__name__', self.type)!r})"

    # -- sending -------------------------------------------------------------
    def _encode(self, data: Any) -> str:
        try:
            typed = self._adapter.validate_python(data)
        except PydanticValidationError as e:
            raise ValidationError(f"data for input stream {self.id!r} is invalid: {e}") from None
        return self._adapter.dump_json(typed).decode()

    def _decode(self, message: InboxMessage) -> T:
        value: T = self._adapter.validate_json(message.data)
        return value

    def _result(self, message: InboxMessage) -> Result[T]:
        """The message as a Result: a failed one when it no longer fits the
        stream's type (the type changed under a waiting run, or an untyped
        sender got past the edge) — never an exception that fails the run
        again on every retry."""
        try:
            return Result(ok=True, output=self._decode(message))
        except PydanticValidationError as e:
            return Result(
                ok=False,
                error=ValidationError(
                    f"message #{message.seq} on input stream {self.id!r} does not fit"
                    f" {getattr(self.type, '__name__', self.type)}: {e}"
                ),
            )

    def send(
        self, run_id: str, data: T | Any, *, idempotency_key: str | None = None
    ) -> Response[None]:
        """Send `data` to the run; resolves once it is durable.

        Raises `ValidationError` (wrong type), `PayloadTooLarge` (over 1 MiB),
        `RunNotFound`, `RunFinished` (COMPLETED, FAILED, CANCELED, CRASHED,
        TIMED_OUT) — and stores nothing then. Sending from inside a task is
        journaled, so a replay does not send twice. `idempotency_key`: a send
        retried with the same key (after a timeout or a lost connection, when
        the first one may have been stored) is stored once per run and stream.
        """
        encoded = self._encode(data)

        async def go() -> None:
            conn = connection.current()
            size = len(encoded.encode())
            if size > conn.settings.max_input_bytes:
                raise PayloadTooLarge(
                    f"data for input stream {self.id!r} of run {run_id} is {size} bytes; the"
                    f" limit is {conn.settings.max_input_bytes} bytes",
                    run_id=run_id,
                    stream=self.id,
                )
            await sends.send(self.id, run_id, encoded, idempotency_key=idempotency_key)

        return Response(go)

    # -- receiving, inside a task --------------------------------------------
    def on(self, handler: Callable[[T], Any]) -> Subscription:
        """Call `handler` (sync or async) with every message, buffered ones
        first, in order, until `.off()` or the end of the run."""
        ctx = require_run(f"{self.id}.on()")

        def typed(value: Any) -> Any:
            return handler(self._adapter.validate_python(value))

        ctx.inputs.add_handler(self.id, typed)
        return Subscription(self.id, typed, ctx)

    def peek(self) -> T | None:
        """The latest message received so far, or None. Never blocks; not
        journaled (its answer may differ on replay)."""
        ctx = require_run(f"{self.id}.peek()")
        latest = ctx.inputs.latest(self.id)
        if latest is None:
            return None
        result = self._result(latest)
        return result.output if result.ok else None

    async def once(self, *, timeout_s: float | None = None) -> Result[T]:
        """Take the oldest unconsumed message, waiting up to `timeout_s`
        (None: forever) with the process held. `Result.ok` is False on
        timeout; `unwrap()` then raises `WaitTimeout`."""
        ctx = require_run(f"{self.id}.once()")
        recorded = ctx.journal.replay("once", self.id)
        if recorded is not MISSING:
            return self._recorded(ctx, recorded, timeout_s)
        message = ctx.inputs.take_buffered(self.id)
        if message is None:
            waiter = ctx.inputs.waiter(self.id)
            try:
                # not wait_for: from Python 3.12 it cancels this task when the
                # timeout fires, even in the loop turn the waiter got its
                # message — the message, taken, was then lost
                await asyncio.wait([waiter], timeout=timeout_s)
            finally:
                if not waiter.done():
                    waiter.cancel()  # a later message stays buffered
            if waiter.cancelled():
                await ctx.journal.record("once", self.id, {"timeout": True})
                return self._timeout(ctx, timeout_s)
            message = waiter.result()
        await ctx.journal.record("once", self.id, {"seq": message.seq})
        return self._result(message)

    async def wait(
        self, *, timeout: float | str | None = None, idempotency_key: str | None = None
    ) -> Result[T]:
        """Like `once`, but suspends the run while it waits: the RunActor
        commits, exits and holds no process; a send (or the timeout) revives
        the run, whose function replays from the top to here and continues.

        `timeout`: seconds or "30s", "5m", "24h", "7d"; None waits forever.
        `idempotency_key`: a retried attempt that reaches a wait with the same
        key gets the same result instead of waiting again.
        """
        ctx = require_run(f"{self.id}.wait()")
        timeout_s = parse_duration(timeout)
        outcome = await waitpoints.wait_outcome(ctx, self.id, timeout_s, idempotency_key)
        return self._recorded(ctx, outcome, timeout_s)

    def _recorded(
        self,
        ctx: RunContext,
        outcome: dict[str, Any],
        timeout_s: float | None,
    ) -> Result[T]:
        if outcome.get("timeout"):
            return self._timeout(ctx, timeout_s)
        seq = int(outcome["seq"])
        ctx.inputs.mark_consumed(self.id, seq)
        return self._result(ctx.inputs.message(self.id, seq))

    def _timeout(self, ctx: RunContext, timeout_s: float | None) -> Result[T]:
        return Result(
            ok=False,
            error=WaitTimeout(
                f"run {ctx.run_id}: no message on input stream {self.id!r} within {timeout_s} s"
            ),
        )

    # -- reading the log (tools, tests, the HTTP API) ------------------------
    def messages(self, run_id: str, *, start_index: int = 0) -> Response[list[T]]:
        """Every message sent to this stream of the run so far, in order."""

        async def go() -> list[T]:
            store = connection.current().store
            found = await asyncio.to_thread(store.inbox_read, run_id, self.id, start_index, 10**9)
            return [self._decode(m) for m in found]

        return Response(go)
