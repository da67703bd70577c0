"""A run's input streams, inside its RunActor: buffer, waiters, handlers.

Messages live in the Store's per-(run, stream) log; the Inbox pokes the
live RunActor after each durable send. Here they are handed out with the
semantics of docs/architecture.md: a message goes to the oldest pending `once`/`wait`
(if any) and to every `.on()` handler; with neither it is buffered. Which
message went where is journaled, so a revived run replays the same story
and then goes live with exactly the messages it had not yet taken.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayflow._runtime import run_batches
from rayflow._runtime.context import RunContext, reset_run, set_run
from rayflow._runtime.journal import Journal
from rayflow._status import WaitpointStatus
from rayflow.errors import RayflowError
from rayflow.store import Store
from rayflow.store.base import InboxMessage, JournalEntry, Waitpoint

log = logging.getLogger("rayflow")

Handler = Callable[[Any], Any]

#: a pending `.once()` also reads the Store this often. A poke can be lost —
#: the Inbox died between storing a message (acknowledged) and poking, or it
#: asked a restarted Controller that had not yet re-attached this run — and a
#: run waiting in `.once()` would otherwise never look at the Store again.
REPULL_S = 2.0


@dataclass
class _Stream:
    stream_id: str
    next_seq: int = 0  # next message of the Store log not yet taken in
    consumed: set[int] = field(default_factory=set)
    buffer: deque[InboxMessage] = field(default_factory=deque)
    waiters: deque[asyncio.Future[InboxMessage]] = field(default_factory=deque)
    handlers: list[Handler] = field(default_factory=list)
    latest: InboxMessage | None = None
    #: the message `take_buffered` handed out last (`.wait()` reads it back)
    taken: InboxMessage | None = None


class RunInputs:
    def __init__(
        self,
        store: Store,
        run_id: str,
        resolved: Waitpoint | None = None,
        with_messages: list[str] | None = None,
    ) -> None:
        self.store, self.run_id = store, run_id
        #: the input streams that had messages for the run when it was
        #: claimed (read with the claim, `run_batches.Start`); None: read
        #: them when the run goes live
        self.with_messages = with_messages
        #: streams poked before the run went live (after the claim's read)
        self._poked_early: set[str] = set()
        self.streams: dict[str, _Stream] = {}
        self.ctx: RunContext | None = None
        self.live = False
        #: the waitpoint whose resolution (or timeout) revived this run; the
        #: `.wait()` it belongs to takes it on replay
        self.resolved = resolved
        self._pulling: dict[str, asyncio.Task[None]] = {}
        #: streams poked while a pull was in flight: pull again, the poked
        #: message may have been committed after that pull read the Store
        self._dirty: set[str] = set()
        #: journal writes of `.on()` deliveries, awaited before the run leaves
        self._records: set[asyncio.Future[None]] = set()
        #: the messages the journal names, read before the attempt starts
        #: (`prepare`), so a replay hands them over without touching the Store
        self._known: dict[tuple[str, int], InboxMessage] = {}
        self._discovering: asyncio.Task[None] | None = None
        #: per stream with a pending waiter: the task that re-pulls (REPULL_S)
        self._watching: dict[str, asyncio.Task[None]] = {}

    async def prepare(self, journal: Journal) -> None:
        """Read, in a thread, every message the journal says was taken: the
        replay hands them to `.on()` handlers and `.once()`/`.wait()` results
        from memory (Store calls never run on the event loop)."""
        wanted = [
            (e.name, int(seq))
            for e in journal.entries
            if e.kind in ("once", "wait", "on")
            and (seq := json.loads(e.value).get("seq")) is not None
        ]
        if wanted:
            self._known = await asyncio.to_thread(self._read_messages, wanted)

    def _read_messages(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], InboxMessage]:
        found: dict[tuple[str, int], InboxMessage] = {}
        for stream_id in {name for name, _ in wanted}:
            seqs = sorted(seq for name, seq in wanted if name == stream_id)
            start = seqs[0]
            while start <= seqs[-1]:
                batch = self.store.inbox_read(self.run_id, stream_id, start, 1000)
                if not batch:
                    break
                found.update(((stream_id, m.seq), m) for m in batch if m.seq in seqs)
                start = batch[-1].seq + 1
        return found

    def bind(self, ctx: RunContext) -> None:
        """Start an attempt: fresh state, the journal decides what was taken."""
        self.ctx, self.live, self.streams = ctx, False, {}
        ctx.journal.dispatch["on"] = self._dispatch_recorded
        ctx.journal.on_live = self._go_live
        ctx.journal.pump()

    def stream(self, stream_id: str) -> _Stream:
        s = self.streams.get(stream_id)
        if s is None:
            s = self.streams[stream_id] = _Stream(stream_id)
            if self.live:
                assert self.ctx is not None
                s.consumed = self.ctx.journal.consumed(stream_id)
                self.pull(stream_id)
        return s

    # -- arrival ---------------------------------------------------------------
    def _go_live(self) -> None:
        assert self.ctx is not None
        self.live = True
        for s in self.streams.values():
            s.consumed = self.ctx.journal.consumed(s.stream_id)
            s.next_seq = 0
            self.pull(s.stream_id)
        # streams the task has not named yet but that have messages
        if self.with_messages is not None:
            # (the first attempt's: a retry's reads the Store again)
            known, self.with_messages = {*self.with_messages, *self._poked_early}, None
            for stream_id in sorted(known):
                self.stream(stream_id)
            return
        # ... found in a thread; `stream()` sets up each one the task names meanwhile
        self._discovering = asyncio.get_running_loop().create_task(self._discover())

    async def _discover(self) -> None:
        # one read with the runs starting beside it
        for stream_id in await run_batches.inbox_streams(self.store, self.run_id):
            self.stream(stream_id)

    def poked(self, stream_ids: set[str]) -> None:
        """Messages came for these streams before the run executed here
        (maybe after `with_messages` was read): pulled when it goes live."""
        self._poked_early |= stream_ids

    def poke(self, stream_id: str, message: InboxMessage | None) -> None:
        """The Inbox says a message is durable; take it (and any gap) in."""
        if not self.live:
            # replaying: going live pulls everything from the Store
            self._poked_early.add(stream_id)
            return
        s = self.stream(stream_id)
        if message is not None and message.seq < s.next_seq:
            return  # already taken in
        if message is not None and message.seq == s.next_seq and stream_id not in self._pulling:
            s.next_seq += 1
            self._arrive(s, message)
        else:
            self.pull(stream_id)

    def pull(self, stream_id: str) -> None:
        task = self._pulling.get(stream_id)
        if task is not None and not task.done():
            self._dirty.add(stream_id)
            return
        self._pulling[stream_id] = asyncio.get_running_loop().create_task(self._pull(stream_id))

    async def _pull(self, stream_id: str) -> None:
        s = self.streams[stream_id]
        try:
            while True:
                self._dirty.discard(stream_id)
                batch = await asyncio.to_thread(
                    self.store.inbox_read, self.run_id, stream_id, s.next_seq, 1000
                )
                if not batch:
                    if stream_id in self._dirty:
                        continue
                    return
                for message in batch:
                    if message.seq < s.next_seq:
                        continue
                    s.next_seq = message.seq + 1
                    if message.seq in s.consumed:
                        s.latest = message
                        continue
                    self._arrive(s, message)
        finally:
            self._pulling.pop(stream_id, None)

    def _arrive(self, s: _Stream, message: InboxMessage) -> None:
        s.latest = message
        taken = False
        while s.waiters:
            waiter = s.waiters.popleft()
            if not waiter.done():
                s.consumed.add(message.seq)
                waiter.set_result(message)
                taken = True
                break
        for handler in list(s.handlers):
            self._deliver(s, handler, message)
            taken = True
        if not taken:
            s.buffer.append(message)

    def _deliver(self, s: _Stream, handler: Handler, message: InboxMessage) -> None:
        assert self.ctx is not None
        s.consumed.add(message.seq)
        self._call_handler(handler, json.loads(message.data), s.stream_id, message.seq)
        # journaled where it was observed, so a replay hands it over there too
        record = asyncio.ensure_future(
            self.ctx.journal.record("on", s.stream_id, {"seq": message.seq})
        )
        self._records.add(record)
        record.add_done_callback(self._records.discard)

    def _dispatch_recorded(self, entry: JournalEntry) -> bool:
        s = self.stream(entry.name)
        if not s.handlers:
            return False
        seq = int(json.loads(entry.value)["seq"])
        message = self._known.pop((entry.name, seq), None)
        if message is None:
            return False
        s.consumed.add(seq)
        s.latest = message
        value = json.loads(message.data)
        for handler in list(s.handlers):
            self._call_handler(handler, value, entry.name, seq)
        return True

    def _call_handler(self, handler: Handler, value: Any, stream_id: str, seq: int) -> None:
        """Run a handler inside the run's context (it may append, send, …)."""
        assert self.ctx is not None
        token = set_run(self.ctx.for_delivery(stream_id, seq))
        try:
            result = handler(value)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result)
        except Exception:
            log.exception("run %s: an .on() handler raised", self.run_id)
        finally:
            reset_run(token)

    async def flush_records(self) -> None:
        """Every journal write of an `.on()` delivery so far is durable (before
        the run suspends or ends: a replay must hand them over again)."""
        if self._records:
            await asyncio.gather(*self._records, return_exceptions=True)

    async def close(self) -> None:
        """The run leaves its actor: stop pulling, flush the journal writes."""
        tasks = [*self._pulling.values(), *self._watching.values()]
        if self._discovering is not None:
            tasks.append(self._discovering)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.flush_records()

    def revived_for(self, stream_id: str) -> bool:
        """Whether this run was revived by a waitpoint on `stream_id`."""
        return self.resolved is not None and self.resolved.stream_id == stream_id

    def settle_wait(self, stream_id: str) -> dict[str, Any] | None:
        """The outcome of a `.wait()` on `stream_id` that this run was revived
        for, or None (not revived for it: register a waitpoint). Reads the Store."""
        wp = self.resolved
        if wp is None or wp.stream_id != stream_id:
            return None
        self.resolved = None
        if wp.status == WaitpointStatus.TIMED_OUT:
            return {"timeout": True}
        message = self.oldest_unconsumed(stream_id)
        if message is None:
            return None
        self._known[(stream_id, message.seq)] = message  # for `message()`, on the loop
        return {"seq": message.seq}

    # -- the task's side -------------------------------------------------------
    def add_handler(self, stream_id: str, handler: Handler) -> None:
        s = self.stream(stream_id)
        s.handlers.append(handler)
        if self.live:
            while s.buffer:
                self._deliver(s, handler, s.buffer.popleft())
        else:
            assert self.ctx is not None
            self.ctx.journal.pump()

    def remove_handler(self, stream_id: str, handler: Handler) -> None:
        s = self.stream(stream_id)
        if handler in s.handlers:
            s.handlers.remove(handler)

    def take_buffered(self, stream_id: str) -> InboxMessage | None:
        s = self.stream(stream_id)
        if s.buffer:
            message = s.buffer.popleft()
            s.consumed.add(message.seq)
            s.taken = message
            return message
        return None

    def waiter(self, stream_id: str) -> asyncio.Future[InboxMessage]:
        future: asyncio.Future[InboxMessage] = asyncio.get_running_loop().create_future()
        self.stream(stream_id).waiters.append(future)
        if stream_id not in self._watching:
            self._watching[stream_id] = asyncio.get_running_loop().create_task(
                self._watch(stream_id)
            )
        return future

    async def _watch(self, stream_id: str) -> None:
        """While a waiter is pending, pull now and then: a lost poke delays
        a message by at most REPULL_S, never forever."""
        try:
            s = self.streams[stream_id]
            while any(not w.done() for w in s.waiters):
                await asyncio.sleep(REPULL_S)
                if self.live and any(not w.done() for w in s.waiters):
                    self.pull(stream_id)
        finally:
            self._watching.pop(stream_id, None)

    def mark_consumed(self, stream_id: str, seq: int) -> None:
        s = self.stream(stream_id)
        s.consumed.add(seq)
        s.buffer = deque(m for m in s.buffer if m.seq != seq)

    def oldest_unconsumed(self, stream_id: str) -> InboxMessage | None:
        """From the Store: the oldest message this attempt has not taken.
        Blocking: call it in a thread (it creates no stream state)."""
        s = self.streams.get(stream_id)
        if s is not None:
            consumed = s.consumed
        elif self.live and self.ctx is not None:
            consumed = self.ctx.journal.consumed(stream_id)
        else:
            consumed = set()
        start = 0
        while True:
            batch = self.store.inbox_read(self.run_id, stream_id, start, 1000)
            if not batch:
                return None
            for message in batch:
                if message.seq not in consumed:
                    return message
            start = batch[-1].seq + 1

    def latest(self, stream_id: str) -> InboxMessage | None:
        return self.stream(stream_id).latest

    def message(self, stream_id: str, seq: int) -> InboxMessage:
        """Message `seq`: one the journal names (read by `prepare`), the one
        `.wait()` just took, or — only for a result kept under a `.wait()`
        idempotency key by an earlier attempt — read from the Store."""
        known = self._known.pop((stream_id, seq), None)
        if known is not None:
            return known
        s = self.streams.get(stream_id)
        if s is not None and s.taken is not None and s.taken.seq == seq:
            return s.taken
        found = self.store.inbox_read(self.run_id, stream_id, seq, 1)
        if not found or found[0].seq != seq:
            # the journal recorded this message, so the Store had it: only a
            # change to the inbox table outside rayflow removes it
            raise RayflowError(
                f"message {seq} of input stream {stream_id!r} of run {self.run_id} is"
                " journaled but missing from the Store; was the inbox table edited by hand?",
                run_id=self.run_id,
                stream=stream_id,
            )
        return found[0]
