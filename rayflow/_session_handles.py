"""The handles of `rayflow.sessions`: a session's input and output, its
side channels (re-exported there; see that module for the model)."""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from rayflow._response import Response, run_sync
from rayflow._runtime import (
    connection,
    session_inputs,
    session_io,
    session_reads,
    session_runs,
    session_writer,
)
from rayflow._runtime.adapters import adapter_for
from rayflow._runtime.context import RunContext, current_run, require_run
from rayflow._runtime.durations import parse_duration
from rayflow._runtime.journal import MISSING
from rayflow._runtime.session_io import RecordPage, S2Record, SentRecord
from rayflow.errors import InvalidArgument, SessionClosed, ValidationError, WaitTimeout
from rayflow.task import Result


class Session:
    """`.input` and `.output` of a session, and its side channels."""

    def __init__(self, id_or_external_id: str) -> None:
        if not isinstance(id_or_external_id, str) or not id_or_external_id:
            raise InvalidArgument("a session is opened by its id or external id (a string)")
        self.id = id_or_external_id
        self.input = SessionInput(self.id, None)
        self.output = SessionOutput(self.id, None)

    def channel(self, name: str) -> SessionChannel:
        """The side channel `name` (1-128 of [A-Za-z0-9._-]): its own input
        and output; sending to its input wakes no run. Its streams are made
        on first write and expire a week after their last use."""
        session_io.check_channel(name)
        return SessionChannel(name, SessionInput(self.id, name), SessionOutput(self.id, name))

    def __repr__(self) -> str:
        return f"Session({self.id!r})"


@dataclass
class SessionChannel:
    name: str
    input: SessionInput
    output: SessionOutput


@dataclass
class Subscription:
    """An `.on()` registration; `off()` stops it."""

    _off: Callable[[], None]

    def off(self) -> None:
        self._off()


class SessionInput:
    """A session's input (or a channel's): send from anywhere; take records
    inside the session's own run."""

    def __init__(self, session: str, channel: str | None) -> None:
        self._session, self._channel = session, channel

    def send(self, value: Any, *, idempotency_key: str | None = None) -> Response[SentRecord]:
        """Append `value` (JSON-able, up to 1 MiB) as the next record; for a
        session's input this wakes its suspended run, or — when its run has
        ended — starts a fresh run that takes it. A send retried with the
        same `idempotency_key` is stored once. Raises `SessionNotFound`,
        `SessionClosed`, `PayloadTooLarge`."""
        return Response(
            lambda: session_io.send_input(
                self._session, value, channel=self._channel, idempotency_key=idempotency_key
            )
        )

    async def _session_id(self) -> str:
        return await session_runs.session_id_of(self._session)

    def _result(self, outcome: dict[str, Any], type: Any, what: str) -> Result[Any]:
        ctx = require_run(what)
        if outcome.get("timeout"):
            return Result(ok=False, error=WaitTimeout(f"run {ctx.run_id}: no record on {what}"))
        if outcome.get("closed"):
            return Result(ok=False, error=SessionClosed(f"session {self._session} is closed"))
        adapter: TypeAdapter[Any] = adapter_for(type)
        try:
            value = json.loads(outcome["data"])["data"]
            return Result(ok=True, output=adapter.validate_python(value))
        except PydanticValidationError as e:
            error = ValidationError(f"record {outcome['seq']} of {what} does not fit {type}: {e}")
            return Result(ok=False, error=error)

    async def once(self, *, timeout_s: float | None = None, type: Any = Any) -> Result[Any]:
        """Inside the session's run: take the next record, holding the
        process while it waits up to `timeout_s` (None: forever). A failed
        `Result` on timeout (`WaitTimeout`) or when the session is closed
        (`SessionClosed`). A record counts as handled once the run asks for
        the next one, suspends on the session or returns: if the run fails,
        crashes, is cancelled or times out before that, the run that
        continues the session gets it again (at least once)."""
        ctx = require_run("session.input.once()")
        session_id = await self._session_id()
        outcome = await session_inputs.once(ctx, session_id, self._channel, timeout_s)
        return self._result(outcome, type, f"session {self._session} input")

    async def wait(self, *, timeout: float | str | None = None, type: Any = Any) -> Result[Any]:
        """Inside the session's run: take the next record; while there is
        none the run is suspended and holds no process — a send revives it
        and its function replays from the top to here (see `rayflow.durable`
        for the rules). `timeout` (seconds or "30s", "5m", "1h"; default: the
        session's `idle_timeout_s`, else forever): then a failed `Result`
        (`WaitTimeout`); return from the task then, and the next send starts a
        fresh run. Not on channels (a channel never wakes a run). As with
        `once()`, a record the run took but had not finished with when it
        failed (the next take, a suspension or a return finishes it) goes to
        the run that continues the session."""
        ctx = require_run("session.input.wait()")
        if self._channel is not None:
            raise InvalidArgument(
                f"channel {self._channel!r}: .wait() is not for side channels (their input"
                " wakes no run); use .once() or .on()"
            )
        session_id = await self._session_id()
        timeout_s = parse_duration(timeout)
        if timeout_s is None and ctx.session is not None and ctx.session["id"] == session_id:
            timeout_s = ctx.session["idle_timeout_s"]
        outcome = await session_inputs.wait(ctx, session_id, timeout_s)
        return self._result(outcome, type, f"session {self._session} input")

    def on(self, handler: Callable[[Any], Any]) -> Subscription:
        """Inside the session's run: call `handler` (sync or async) with every
        record from the first not yet taken, in order, until `off()` or the
        end of the attempt. A handed-over record is taken (journaled): when
        the run is revived (after `.wait()` or a crash) and its code runs
        again from the top, the re-registered handler gets the records it had
        again, at the same points, and then the new ones — so what it builds
        is rebuilt, and no record reaches it twice in one execution. Records
        handed over since the run last suspended on the session go to the
        run that continues it if this one fails, crashes or is cancelled
        (at least once); after a return they are done. Use either `on()` or
        `once()`/`wait()` on one stream."""
        ctx = require_run("session.input.on()")
        if not self._session.startswith(session_runs.SESSION_PREFIX):
            if ctx.session is None:
                raise InvalidArgument(f"run {ctx.run_id} serves no session")
            session_id = ctx.session["id"]
        else:
            session_id = self._session
        session_inputs.add_handler(ctx, session_id, self._channel, handler)
        return Subscription(
            lambda: session_inputs.remove_handler(ctx, session_id, self._channel, handler)
        )

    def peek(self) -> Response[Any]:
        """The next record not yet taken (its value), or None; takes nothing."""

        async def go() -> Any:
            session_id = await self._session_id()
            path = session_io.session_stream_path(session_id, "in", self._channel)
            store = connection.current().store
            cursor = await asyncio.to_thread(store.session_cursor, session_id, path)
            page = await session_reads.read_records(
                session_id, "in", channel=self._channel, start=cursor, limit=1
            )
            return page.records[0].value() if page.records else None

        return Response(go)

    def last_dispatched_seq(self) -> int | None:
        """Inside the session's run: the seq of the record this attempt took
        last (the SDK's `lastDispatchedSeqNum`), or None."""
        ctx = require_run("session.input.last_dispatched_seq()")
        if ctx.session is None:
            return None
        return session_inputs.last_taken(ctx, ctx.session["id"], self._channel)

    def read(
        self, *, start: int = 0, limit: int = 1000, wait_s: float = 0.0, timeout_s: float = 60.0
    ) -> RecordReader:
        """The records from `start` on, whether taken or not (takes nothing);
        see `RecordReader` (await it for a page, iterate it for live records)."""
        return RecordReader(self._session, "in", self._channel, start, limit, wait_s, timeout_s)


class SessionOutput:
    """A session's output (or a channel's): append anywhere, read anywhere."""

    def __init__(self, session: str, channel: str | None) -> None:
        self._session, self._channel = session, channel

    def append(self, value: Any, *, part_id: str | None = None) -> Response[None]:
        """Append `value` (JSON-able, up to 1 MiB) as a data record; resolves
        once durable. Inside a run a replay does not append it again."""

        async def go() -> None:
            await session_io.append_output(
                self._session, value, channel=self._channel, part_id=part_id
            )

        return Response(go)

    def write_control(
        self, subtype: str, headers: builtins.list[tuple[str, str]] | None = None
    ) -> Response[None]:
        """Append a control record (`trigger-control: subtype`, e.g. `turn-complete`)."""

        async def go() -> None:
            await session_io.append_control(
                self._session, subtype, builtins.list(headers or []), channel=self._channel
            )

        return Response(go)

    def trim_to(self, earliest_seq: int) -> Response[int]:
        """Delete the records before `earliest_seq` (the SDK's
        `out.trimTo`, S2's trim): a `trim` command record is appended (its
        seq is returned; readers skip it) and the stream keeps what is at or
        after `earliest_seq`, never past its tail. Monotonic: trimming below
        an earlier trim deletes nothing. A reader asking for a trimmed seq
        starts at the first record left — keep what a reload must replay
        (chat agents trim back to the previous `turn-complete`). Inside a
        run a replay does not trim again (and returns -1)."""

        async def go() -> int:
            return await session_io.trim_output(self._session, earliest_seq, channel=self._channel)

        return Response(go)

    def pipe(self, source: AsyncIterable[Any] | Iterable[Any]) -> Response[int]:
        """Append every item of `source` in order; returns how many. Inside
        a run the pipe is one durable operation: a replay returns the count
        without iterating `source` again (a model is not called twice)."""

        async def go() -> int:
            ctx = current_run()
            name = f"{self._session}/{self._channel or ''}"
            if ctx is not None:
                recorded = ctx.journal.replay("session-pipe", name)
                if recorded is not MISSING:
                    if "position" in recorded:
                        # the appends after it number on past the pipe's
                        (await self._writer(ctx)).advance_to(int(recorded["position"]))
                    return int(recorded["count"])
            count = 0
            if isinstance(source, AsyncIterable):
                async for item in source:
                    await session_io.append_output(self._session, item, channel=self._channel)
                    count += 1
            else:
                for item in source:
                    await session_io.append_output(self._session, item, channel=self._channel)
                    count += 1
            if ctx is not None:
                position = (await self._writer(ctx)).position
                await ctx.journal.record(
                    "session-pipe", name, {"count": count, "position": position}
                )
            return count

        return Response(go)

    async def _writer(self, ctx: RunContext) -> session_writer.SessionWriter:
        session_id = await session_runs.session_id_of(self._session)
        path = session_io.session_stream_path(session_id, "out", self._channel)
        return session_writer.writer_for(ctx, path)

    def writer(self) -> OutputWriter:
        """`async with session.output.writer() as w: w.write(x); ...`: records
        in the order written, durable when the block exits."""
        return OutputWriter(self._session, self._channel)

    def read(
        self, *, start: int = 0, limit: int = 1000, wait_s: float = 0.0, timeout_s: float = 60.0
    ) -> RecordReader:
        """The records from `start` on (resume with the last `seq_num` + 1):
        `await` it (or `.result()`) for one page, waiting up to `wait_s` while
        there are none; iterate it (`for` / `async for`) for every record
        live, until `timeout_s` passes without one."""
        return RecordReader(self._session, "out", self._channel, start, limit, wait_s, timeout_s)


class RecordReader(Response[RecordPage]):
    """A read of a session stream: a `Response` for one page, and an
    iterable of its records live (`S2Record`: `.seq_num`, `.value()`,
    `.control`)."""

    def __init__(
        self,
        session: str,
        io: session_io.IO,
        channel: str | None,
        start: int,
        limit: int,
        wait_s: float,
        timeout_s: float,
    ) -> None:
        self._args = (session, io, channel, start, limit, wait_s, timeout_s)
        super().__init__(self._page)

    async def _page(self) -> RecordPage:
        session, io, channel, start, limit, wait_s, _ = self._args
        if wait_s > 0:
            return await session_reads.wait_records(
                session, io, channel=channel, start=start, limit=limit, timeout_s=wait_s
            )
        return await session_reads.read_records(
            session, io, channel=channel, start=start, limit=limit
        )

    def _batches(self) -> AsyncIterator[builtins.list[S2Record]]:
        session, io, channel, start, _, _, timeout_s = self._args
        return session_reads.follow_records(
            session, io, channel=channel, start=start, timeout_s=timeout_s
        )

    async def __aiter__(self) -> AsyncIterator[S2Record]:
        async for batch in self._batches():
            for record in batch:
                yield record

    def __iter__(self) -> Iterator[S2Record]:
        batches = self._batches()
        try:
            while True:
                try:
                    batch: builtins.list[S2Record] = run_sync(batches.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
                yield from batch
        finally:
            run_sync(batches.aclose())  # type: ignore[attr-defined]


class OutputWriter:
    def __init__(self, session: str, channel: str | None) -> None:
        self._session, self._channel = session, channel
        self._pending: builtins.list[Any] = []

    def write(self, value: Any) -> None:
        """Queue `value`; appended in order (group-committed)."""
        previous = self._pending[-1] if self._pending else None

        async def go() -> None:
            if previous is not None:
                await asyncio.shield(previous)
            await session_io.append_output(self._session, value, channel=self._channel)

        self._pending.append(asyncio.ensure_future(go()))

    async def __aenter__(self) -> OutputWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*self._pending)
