"""The task's side of a session's input: take records (`once`, `wait`), hand
them to `.on()` handlers, peek — inside the session's own run.

A take is a durable operation: the journal entry ("session-in", the
stream's path, `{"seq": n}`) commits in one transaction with the session's
consumed cursor (`Store.session_consume`). So a replay hands the run the
same records, and a continuation run — a fresh run of the session after
this one ended — starts past what this run took and finished with: a take
settles the takes before it on its stream, a suspension on the session
(`Store.settle_session_wait`) all of them, a return everything; after a
run that failed, crashed, was cancelled or timed out, the continuation
starts at the first record not settled (at least once, never dropped).

`wait()` follows the waitpoint protocol of `.wait()` on run input streams
(`waitpoints.py`): a journaled outcome, else a record already there past the
cursor, else the outcome the run was revived for, else `Suspended` on a
waitpoint whose stream id is `session:<id>` — the RunActor then suspends
the run (no process held) and settles the race with a send that committed
first (`Store.settle_session_wait`); a send to the session queues the run.

A record handed to `.on()` handlers is a take too: its "session-on" entry
commits with the cursor, then the handlers get it. A replay hands it to the
re-registered handlers where the journal has it (`Journal.pump`; the records
are read before the attempt starts, `prepare`), so a revived run's handlers
rebuild what they had; live deliveries start once the replay is done, past
the cursor. Each record reaches the run's handlers once per execution of its
code; a delivery settles nothing (handlers run on their own), so a run that
fails leaves what it was handed since its last suspension to the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayflow._runtime import attempts, connection, hops, session_runs
from rayflow._runtime.context import RunContext, reset_run, set_run
from rayflow._runtime.journal import MISSING
from rayflow._runtime.named_signals import signals
from rayflow._runtime.session_io import REREAD_S, session_stream_path
from rayflow._status import WaitpointStatus
from rayflow.errors import InvalidArgument, RayflowError
from rayflow.store.base import SESSION_WAIT_PREFIX, JournalEntry, Waitpoint, now_ms

log = logging.getLogger("rayflow")

Handler = Callable[[Any], Any]
KIND = "session-in"
#: a record handed to `.on()` handlers
KIND_ON = "session-on"
#: the most a read for handlers takes in at once
_BATCH = 100


@dataclass
class _Reader:
    session_id: str
    path: str
    #: the next seq not taken (None: not read from the Store yet this attempt)
    next_seq: int | None = None
    last_taken: int | None = None
    handlers: list[Handler] = field(default_factory=list)
    pump: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: records the journal hands to handlers on replay, by seq (`prepare`)
    known: dict[int, bytes] = field(default_factory=dict)
    #: the journal write of the live delivery in flight (awaited on suspension)
    recording: asyncio.Future[None] | None = None


def _reader(ctx: RunContext, session_id: str, channel: str | None) -> _Reader:
    if ctx.session is None or ctx.session["id"] != session_id:
        raise InvalidArgument(
            f"run {ctx.run_id} does not serve session {session_id}: only a session's own run"
            " takes records from its input (read them without taking with"
            " read_records, or open the session from its run)"
        )
    path = session_stream_path(session_id, "in", channel)
    found = ctx.session_readers.get(path)
    if found is None:
        found = ctx.session_readers[path] = _Reader(session_id, path)
    r: _Reader = found
    return r


def last_taken(ctx: RunContext, session_id: str, channel: str | None) -> int | None:
    r = ctx.session_readers.get(session_stream_path(session_id, "in", channel))
    return None if r is None else r.last_taken


async def _data(path: str, seq: int) -> bytes:
    conn = connection.current()
    read = await asyncio.to_thread(conn.store.named_read, path, seq, 1, 1 << 30)
    if not read.chunks or read.chunks[0].pos != seq:
        raise RayflowError(
            f"record {seq} of session stream {path} is journaled but missing from the Store"
            " (its stream expired?)"
        )
    return read.chunks[0].data


async def _replayed(ctx: RunContext, r: _Reader) -> dict[str, Any] | None:
    recorded = ctx.journal.replay(KIND, r.path)
    if recorded is MISSING:
        return None
    outcome: dict[str, Any] = dict(recorded)
    if "seq" in outcome:
        r.last_taken = int(outcome["seq"])
        outcome["data"] = await _data(r.path, r.last_taken)
    return outcome


async def _take_next(ctx: RunContext, r: _Reader) -> dict[str, Any] | None:
    """Take the record at the cursor, if there is one (journaled with the cursor)."""
    store = connection.current().store
    if r.next_seq is None:
        r.next_seq = await asyncio.to_thread(store.session_cursor, r.session_id, r.path)
    read = await asyncio.to_thread(store.named_read, r.path, r.next_seq, 1, 1 << 30)
    if not read.chunks:
        return None
    chunk = read.chunks[0]
    seq, run_id, attempt = chunk.pos, ctx.run_id, ctx.attempt
    if hops.enabled():
        hops.mark("read_in", [hops.named_id(r.path, seq)])
    session_id, path = r.session_id, r.path

    def persist(entry: JournalEntry) -> None:
        # asking for the next record, the run is done with the ones before
        store.session_consume(run_id, attempt, entry, session_id, path, seq + 1, seq)

    await ctx.journal.record(KIND, r.path, {"seq": seq}, persist=persist)
    r.next_seq, r.last_taken = seq + 1, seq
    if hops.enabled():
        hops.mark("consumed", [hops.named_id(r.path, seq)])
    return {"seq": seq, "data": chunk.data}


async def settle_through(ctx: RunContext, session_id: str, seq: int) -> None:
    """The run has finished with `.in` up to `seq` (a chat turn answered
    it): a run continuing the session after this one fails starts past it."""
    _reader(ctx, session_id, None)  # only the session's own run
    path = session_stream_path(session_id, "in")
    store = connection.current().store
    await asyncio.to_thread(store.session_settle, ctx.run_id, session_id, path, seq + 1)


async def _closed(session_id: str) -> bool:
    session = await session_runs.get_session(session_id)
    return session.closed_or_expired(now_ms())


async def once(
    ctx: RunContext, session_id: str, channel: str | None, timeout_s: float | None
) -> dict[str, Any]:
    """The next record (`{"seq": n, "data": its JSON}`), `{"timeout": True}`
    or `{"closed": True}`, holding the process while it waits."""
    r = _reader(ctx, session_id, channel)
    recorded = await _replayed(ctx, r)
    if recorded is not None:
        return recorded
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    async with r.lock:
        while True:
            changed = signals().event(r.path)  # before reading: no commit is missed
            taken = await _take_next(ctx, r)
            if taken is not None:
                return taken
            if await _closed(session_id):
                await ctx.journal.record(KIND, r.path, {"closed": True})
                return {"closed": True}
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                await ctx.journal.record(KIND, r.path, {"timeout": True})
                return {"timeout": True}
            pause = REREAD_S if left is None else min(left, REREAD_S)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), pause)


async def wait(ctx: RunContext, session_id: str, timeout_s: float | None) -> dict[str, Any]:
    """Like `once` on `.in`, but the run suspends (holding no process) while
    nothing is there; raises `Suspended`."""
    r = _reader(ctx, session_id, None)
    recorded = await _replayed(ctx, r)
    if recorded is not None:
        return recorded
    stream_id = SESSION_WAIT_PREFIX + session_id
    resolved = ctx.inputs.resolved if ctx.inputs is not None else None
    if resolved is not None and resolved.stream_id == stream_id:
        ctx.inputs.resolved = None  # revived for this wait: it is settled here
        if resolved.status == WaitpointStatus.TIMED_OUT:
            await ctx.journal.record(KIND, r.path, {"timeout": True})
            return {"timeout": True}
    async with r.lock:
        taken = await _take_next(ctx, r)
        if taken is not None:
            return taken
        if await _closed(session_id):
            await ctx.journal.record(KIND, r.path, {"closed": True})
            return {"closed": True}
    deadline = None if timeout_s is None else now_ms() + int(timeout_s * 1000)
    pending = WaitpointStatus.PENDING.value
    raise attempts.Suspended(Waitpoint(ctx.run_id, stream_id, deadline, None, pending, None))


async def prepare(ctx: RunContext) -> None:
    """Before the attempt starts: read (in a thread) the records its journal
    hands to `.on()` handlers, so the replay hands them over from memory;
    and let the journal dispatch them."""
    wanted: dict[str, list[int]] = {}
    for e in ctx.journal.entries:
        if e.kind == KIND_ON:
            wanted.setdefault(e.name, []).append(int(json.loads(e.value)["seq"]))
    if wanted:
        found = await asyncio.to_thread(_read_many, wanted)
        for path, records in found.items():
            session_id = path.split("/")[1]
            r = ctx.session_readers.get(path)
            if r is None:
                r = ctx.session_readers[path] = _Reader(session_id, path)
            r.known.update(records)
    ctx.journal.dispatch[KIND_ON] = lambda entry: _dispatch_recorded(ctx, entry)


def _read_many(wanted: dict[str, list[int]]) -> dict[str, dict[int, bytes]]:
    store = connection.current().store
    found: dict[str, dict[int, bytes]] = {}
    for path, seqs in wanted.items():
        want, got = set(seqs), found.setdefault(path, {})
        start, last = min(seqs), max(seqs)
        while start <= last:
            read = store.named_read(path, start, min(_BATCH, last + 1 - start), 1 << 30)
            if not read.chunks:
                break
            got.update((c.pos, c.data) for c in read.chunks if c.pos in want)
            start = read.chunks[-1].pos + 1
    return found


def _dispatch_recorded(ctx: RunContext, entry: JournalEntry) -> bool:
    """Hand a journaled delivery to the handlers again (False while none is
    registered on its stream yet)."""
    r = ctx.session_readers.get(entry.name)
    if r is None or not r.handlers:
        return False
    seq = int(json.loads(entry.value)["seq"])
    data = r.known.pop(seq, None)
    if data is None:
        raise RayflowError(
            f"run {ctx.run_id}: record {seq} of session stream {entry.name} is journaled as"
            " handed to its .on() handlers but missing from the Store (its stream expired?)"
        )
    r.next_seq, r.last_taken = seq + 1, seq
    for handler in list(r.handlers):
        _call(ctx, r.path, seq, handler, data)
    return True


def add_handler(ctx: RunContext, session_id: str, channel: str | None, handler: Handler) -> None:
    """Hand every record from the cursor on to `handler` until `remove_handler`
    or the end of the attempt (on replay: first those the journal recorded)."""
    r = _reader(ctx, session_id, channel)
    r.handlers.append(handler)
    loop = asyncio.get_running_loop()
    if ctx.journal.replaying:
        # on the next turn: handlers registered together all get the first one
        loop.call_soon(ctx.journal.pump)
    if r.pump is None or r.pump.done():
        owner = asyncio.current_task()
        r.pump = loop.create_task(_pump(ctx, r))
        if owner is not None:
            pump = r.pump
            owner.add_done_callback(lambda _: pump.cancel())


def remove_handler(ctx: RunContext, session_id: str, channel: str | None, handler: Handler) -> None:
    r = _reader(ctx, session_id, channel)
    if handler in r.handlers:
        r.handlers.remove(handler)


async def _pump(ctx: RunContext, r: _Reader) -> None:
    """Live deliveries, once the replay handed over what the journal has
    (recording one earlier would put it among the entries still replayed)."""
    store = connection.current().store
    await ctx.journal.live.wait()
    try:
        while r.handlers:
            changed = signals().event(r.path)
            async with r.lock:
                if r.next_seq is None:
                    r.next_seq = await asyncio.to_thread(store.session_cursor, r.session_id, r.path)
                read = await asyncio.to_thread(
                    store.named_read, r.path, r.next_seq, _BATCH, 1 << 30
                )
                for chunk in read.chunks:
                    if not r.handlers:
                        return
                    await _deliver(ctx, r, chunk.pos, chunk.data)
                if read.chunks:
                    continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), REREAD_S)
    except RayflowError as e:
        # e.g. the session moved on to another run (end_and_continue)
        log.warning("run %s: .on() handlers of %s get no more records: %s", ctx.run_id, r.path, e)


async def _deliver(ctx: RunContext, r: _Reader, seq: int, data: bytes) -> None:
    """Journal the take with the cursor (one transaction), then hand it over."""
    store = connection.current().store
    run_id, attempt, session_id, path = ctx.run_id, ctx.attempt, r.session_id, r.path

    def persist(entry: JournalEntry) -> None:
        store.session_consume(run_id, attempt, entry, session_id, path, seq + 1)

    # shielded: a suspension stops the pump, but a take half-way must commit
    # (or fail) before the "suspend" entry is recorded (`settle`)
    r.recording = asyncio.ensure_future(ctx.journal.record(KIND_ON, path, {"seq": seq}, persist))
    await asyncio.shield(r.recording)
    r.next_seq, r.last_taken = seq + 1, seq
    for handler in list(r.handlers):
        _call(ctx, path, seq, handler, data)


async def settle(ctx: RunContext) -> None:
    """The run suspends: stop live deliveries; a take in flight commits first."""
    for r in ctx.session_readers.values():
        if r.pump is not None and not r.pump.done():
            r.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await r.pump
        if r.recording is not None:
            with contextlib.suppress(Exception):
                await r.recording


def _call(ctx: RunContext, path: str, seq: int, handler: Handler, data: bytes) -> None:
    token = set_run(ctx.for_delivery(path, seq))
    try:
        result = handler(json.loads(data)["data"])
        if inspect.isawaitable(result):
            asyncio.ensure_future(result)
    except Exception:
        log.exception("run %s: a session .on() handler raised on record %d", ctx.run_id, seq)
    finally:
        reset_run(token)
