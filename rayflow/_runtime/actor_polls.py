"""One stream of replies per (process, RunActor) for every stream read there.

A Ray call costs ~1 ms of CPU on these machines however little it carries
(docs/scaling.md), so a Serve replica following the 10 streams of a run
must not keep 10 long polls on its RunActor: when the run writes its 10
streams in one group commit, that is 10 replies for one commit. Here every
reader in this process (event loop) of a stream of runs on one RunActor
subscribes to that actor's `ActorPoll`, which keeps one `follow_many` call
in flight for all of them and hands each reader its replies. Measured with a
bare Ray relay (benchmarks/_ray_relay.py): 10 runs × 10 streams × 20/s,
one poll per stream p50 174 ms, one per actor 11 ms.

`follow_many` is a Ray streaming generator: the actor sends each reply as
soon as a commit is visible, with no call to wait for between two replies.
With one long poll per reply, under a writer flood every commit waited for
the next poll to reach the actor (peers workload 5: ~3.5 ms of a chunk's
~8 ms). The stream ends after LONG_POLL_S (then the next one starts), when
kicked, or when no subscription in it is left.

A subscription follows its stream on its own: after rows it stays in the
stream at its new position, so a reader that is slower than the stream
finds the next rows waiting (at most MAX_QUEUED replies; beyond that the
stream starts again without it until it catches up). Any other reply — a
sealed segment, `closed`, `from_store` — or a failed call (every subscriber
hears its error) ends the subscription: the reader decides what to do and
subscribes again. A new subscription, or one that leaves, while a stream is
in flight `kick`s it, so the stream starts again with the readers there are.

A process whose readers take pushed rows (`take_pushes`: a Serve
replica's hubs) names its loop's `push_inbox` in every `follow_many`
call; writers outside the run then send their commits' rows there too
(`push_outbox`). A subscription takes rows from either source where they
continue from its position (`offer`), so neither order nor count depends
on which came first. A reader of a named stream (a session's `.out`) also
`listen`s: a `Listener` takes the rows pushed for its path from its position
on, whichever run's RunActor pushed them, also while it has no subscription
(`named_tails.push`: the RunActor pushes to the processes that followed the
path lately, from its commit thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
import weakref
from collections import deque
from typing import Any

import ray

from rayflow._runtime import hops, push_inbox
from rayflow._runtime.calls import call, shared_task
from rayflow._runtime.named_tails import path_of
from rayflow._runtime.push_listener import Listener
from rayflow._runtime.stream_rows import FollowReply, ReadReply, Row, unpack_rows
from rayflow._runtime.wake import Wake

log = logging.getLogger("rayflow")

#: longest single stream, so readers notice their runs' actors change
LONG_POLL_S = 5.0
#: a poll not answered this long after its wait is given up: every reader
#: in it locates its run again, instead of waiting forever
CALL_GRACE_S = 10.0
#: replies a subscription holds before it is left out of the poll
MAX_QUEUED = 8


class Subscription:
    """One reader's place in its actor's poll."""

    def __init__(self, poll: ActorPoll, run_id: str, key: str, start: int) -> None:
        self.poll, self.run_id, self.key = poll, run_id, key
        #: the index the next poll asks for (ahead of the reader while
        #: replies wait in `queue`)
        self.position = start
        self.queue: deque[ReadReply | BaseException] = deque()
        self.active = True
        self._ready = Wake()

    def offer(self, rows: list[Row]) -> int:
        """Take the part of `rows` (one stream, ascending) that continues
        from this subscription's position; how many rows that was. Nothing
        when the rows hold a gap before the position (the next ones come
        from the actor), or the reader took over."""
        if not self.active:
            return 0
        at = self.position - rows[0][0]
        if at < 0 or at >= len(rows):
            return 0
        fresh = rows[at:]
        if fresh[-1][0] - fresh[0][0] != len(fresh) - 1:
            return 0  # not contiguous: no writer sends that
        self._deliver(ReadReply(rows=fresh))
        return len(fresh)

    def _deliver(self, reply: ReadReply | BaseException) -> None:
        self.queue.append(reply)
        if isinstance(reply, BaseException) or not reply.rows:
            self.active = False  # the reader takes it from here
        else:
            self.position = reply.rows[-1][0] + 1
        self._ready.set()

    async def get(self, timeout_s: float) -> ReadReply | None:
        """The next reply (raises what the poll raised), or None after
        `timeout_s` without one."""
        if not self.queue:
            self._ready.clear()
            await self._ready.wait(timeout_s)
        if not self.queue:
            return None
        reply = self.queue.popleft()
        if len(self.queue) == MAX_QUEUED - 1 and self.active:
            self.poll.resumed()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def skip_to(self, start: int) -> None:
        """Drop the queued rows before `start` (the reader got them pushed
        another way), so the subscription serves a reader at `start`."""
        while self.queue:
            head = self.queue[0]
            if isinstance(head, BaseException) or not head.rows or head.rows[0][0] >= start:
                return
            if head.rows[-1][0] < start:
                self.queue.popleft()
                continue
            self.queue[0] = dataclasses.replace(head, rows=[r for r in head.rows if r[0] >= start])
            return

    def take_at(self, start: int) -> list[Row]:
        """The rows queued from `start` on (those before it dropped), when
        the next reply holds them; else none."""
        self.skip_to(start)
        head = self.queue[0] if self.queue else None
        if not isinstance(head, ReadReply) or not head.rows or head.rows[0][0] != start:
            return []
        self.queue.popleft()
        if len(self.queue) == MAX_QUEUED - 1 and self.active:
            self.poll.resumed()
        return head.rows

    def close(self) -> None:
        self.poll.unsubscribe(self)


class ActorPoll:
    """The one `follow_many` stream of this process on one RunActor."""

    def __init__(
        self, actor: Any, forget: Any, streams: dict[tuple[str, str], list[Subscription]]
    ) -> None:
        self.actor = actor
        #: the subscriptions of this loop's polls by stream (pushed rows go there)
        self._streams = streams
        self.poll_id = uuid.uuid4().hex
        self.subs: list[Subscription] = []
        self._forget = forget
        #: the subscriptions the `follow_many` stream in flight carries
        #: (a newcomer, a leaver or a full one ends it)
        self._following: set[Subscription] = set()
        #: that stream was told to end
        self._kicked = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, run_id: str, key: str, start: int) -> Subscription:
        sub = Subscription(self, run_id, key, start)
        self.subs.append(sub)
        self._streams.setdefault((run_id, key), []).append(sub)
        self._poke()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.active = False
        with contextlib.suppress(ValueError):
            self.subs.remove(sub)
        same = self._streams.get((sub.run_id, sub.key))
        if same is not None:
            with contextlib.suppress(ValueError):
                same.remove(sub)
            if not same:
                del self._streams[(sub.run_id, sub.key)]
        if sub in self._following:
            self._restart()  # the stream must not go on sending its rows
        # the poll may be idle, every subscription left out (full queues):
        # it looks again, and is forgotten when none is left
        self._wake.set()

    def resumed(self) -> None:
        """A subscription left out of the poll (too far ahead) may be polled again."""
        self._poke()

    def _poke(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = shared_task(self._run())
        else:
            # the stream in flight does not carry the newcomer: end it now
            self._restart()

    def _restart(self) -> None:
        """End the stream in flight (if any): the next one follows the
        subscriptions as they are now."""
        if self._following and not self._kicked:
            self._kicked = True
            self.actor.kick.remote(self.poll_id)

    async def _run(self) -> None:
        while True:
            subs = [s for s in self.subs if s.active and len(s.queue) < MAX_QUEUED]
            if not subs:
                if not self.subs:
                    self._forget(self)
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.clear()
            polls = [(s.run_id, s.key, s.position) for s in subs]
            self._following, self._kicked = set(subs), False
            try:
                await self._follow(subs, polls)
            except Exception as e:
                # every reader hears it (none may wait on a poll that ended):
                # a lost or silent actor as RayActorError (locate the run
                # again), anything else as itself
                if isinstance(e, asyncio.TimeoutError):
                    log.warning(
                        "a RunActor did not answer a long poll within %.0f s;"
                        " its readers locate their runs again",
                        LONG_POLL_S + CALL_GRACE_S,
                    )
                    e = ray.exceptions.RayActorError()
                for s in list(self.subs):
                    s._deliver(e)
                self.subs.clear()
                self._forget(self)
                return
            finally:
                self._following = set()

    async def _follow(self, subs: list[Subscription], polls: list[tuple[str, str, int]]) -> None:
        """One `follow_many` stream, until the actor ends it."""
        global calls
        calls += 1
        # where writers may push this process's rows (an actor learns it here)
        inbox = push_inbox.address()
        pushes = () if inbox is None else (inbox,)
        if hops.enabled():
            hops.mark("poll_sent", [k for _, k, _ in polls])
        stream = self.actor.follow_many.remote(polls, BATCH, LONG_POLL_S, self.poll_id, *pushes)
        while True:
            try:
                ref = await asyncio.wait_for(anext(stream), LONG_POLL_S + CALL_GRACE_S)
            except StopAsyncIteration:
                return
            reply: FollowReply = await asyncio.wait_for(call(ref), CALL_GRACE_S)
            for i, rows in unpack_rows(reply):
                sub = subs[i]
                if hops.enabled():
                    ids = [hops.stream_id(sub.run_id, sub.key, r[0]) for r in rows]
                    hops.mark("arrived", ids)
                # rows follow on from what this subscription holds (pushed
                # rows may have come first), unless it left (its rows are
                # nobody's)
                sub.offer(rows)
                if len(sub.queue) >= MAX_QUEUED:
                    self._restart()  # the stream goes on without it
            for i, other in reply[1].items():
                sub = subs[i]
                if sub.active:
                    sub._deliver(other)
                self._following.discard(sub)  # the actor let it go


#: rows per reply (a reader's batch)
BATCH = 1000

#: `follow_many` calls this process made (tests count them)
calls = 0


class _LoopPolls:
    """One event loop's polls, by RunActor, and their subscriptions by stream."""

    def __init__(self) -> None:
        self.polls: dict[Any, ActorPoll] = {}
        self.streams: dict[tuple[str, str], list[Subscription]] = {}
        #: readers of named streams by path (`listen`)
        self.listeners: dict[str, list[Listener]] = {}

    def deliver(self, run_id: str, key: str, rows: list[Row]) -> int:
        """Pushed rows of one stream to its subscriptions here (`push_inbox`)."""
        path = path_of(key)
        taken = 0
        if path is not None:
            for listener in list(self.listeners.get(path, ())):
                taken += listener.offer(rows)
        for sub in list(self.streams.get((run_id, key), ())):
            # one with enough queued is left out of its poll: it asks again
            n = sub.offer(rows) if len(sub.queue) < MAX_QUEUED else 0
            if n and hops.enabled():
                ids = [hops.stream_id(run_id, key, r[0]) for r in rows[-n:]]
                hops.mark("arrived", ids)
                hops.mark("taken_pushed", ids)  # this way first
            taken += n
        return taken


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPolls] = (
    weakref.WeakKeyDictionary()
)


def _here() -> _LoopPolls:
    loop = asyncio.get_running_loop()
    here = _loops.get(loop)
    if here is None:
        here = _loops[loop] = _LoopPolls()
    return here


async def take_pushes() -> None:
    """Let writers outside the runs push committed rows to this event loop's
    readers (`push_inbox`); for a long-lived loop (a Serve replica's)."""
    await push_inbox.inbox(_here().deliver).start()


def listen(path: str, start: int) -> Listener | None:
    """Wait for the rows of named stream `path` pushed to this loop from
    `start` on (`Listener`); None when this loop takes no pushes (`take_pushes`)."""
    if push_inbox.address() is None:
        return None
    return Listener(_here().listeners, path, start)


def subscribe(actor: Any, run_id: str, key: str, start: int) -> Subscription:
    """Follow stream `key` of `run_id` on `actor` from index `start`."""
    here = _here()
    polls = here.polls
    actor_id = actor._actor_id
    poll = polls.get(actor_id)
    if poll is None:

        def forget(p: ActorPoll) -> None:
            if polls.get(actor_id) is p:
                del polls[actor_id]

        poll = polls[actor_id] = ActorPoll(actor, forget, here.streams)
    return poll.subscribe(run_id, key, start)
