"""Reading a session's streams by sequence number, live, from any process.

The Store is the truth: every look reads it (`named_read` from the reader's
position). A reader with nothing new waits for two things at once:

- the change feed (`Waiter`): a commit to the path anywhere wakes it, then
  it reads the Store again. Outside Serve this process's feed follower sets
  the path's signal (`named_feed`); a Serve replica passes a waiter on its
  shared feed (`serve/session_records.py`). A waiter is *armed before the
  read* and waited on after it, so a commit in between wakes the wait.
- while the session's current run executes (its `.out` and its channels'
  `.out`: what a run writes), the run's RunActor, which pushes the rows
  its run commits to the path (`named_tails`; one `follow_many` stream per
  reader process and actor, `actor_polls`): those rows need no feed hop and
  no Store read. Rows pushed are exactly the Store's at their positions, and
  a reader takes them only when they start at its position, so pushed and
  read rows never overlap or leave a gap. When the actor does not execute
  the run (it suspended, ended, moved) or does not know the rows at the
  reader's position (written by another process), the reader goes on with
  the feed and the Store; after a continuation it follows the new run.
- on a long-lived event loop (the process's rayflow I/O loop, a Serve
  replica's): the rows the run's commit thread pushes to this loop's
  loopback inbox the moment its commit returns (`named_tails.push`), to
  every reader process that followed the path lately — also between two
  reads, while no `follow_many` call is in flight. A `Listener` holds them
  for the reader from its position on; its next read takes them with no
  Store look. Measured (benchmarks/sessions.py --breakdown): the reply
  reached the reader ~2 ms sooner than through `follow_many`, whose call
  and reply are two Ray messages on a busy box.

`wait_records` keeps its follower `LINGER_S` after it returns, for the same
reader's next call at the next position (a user reading page after page):
one `follow_many` call for all of them, not one (and a kick) per page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import ray

from rayflow._response import on_io_loop
from rayflow._runtime import actor_polls, connection, hops, locations, session_runs
from rayflow._runtime.context import current_run
from rayflow._runtime.named_tails import named_key
from rayflow._runtime.push_listener import Listener
from rayflow._runtime.session_follow_waits import Armed, Waiter, lingering, local_waiter
from rayflow._runtime.session_io import (
    IO,
    REREAD_S,
    RecordPage,
    S2Record,
    s2_record,
    session_stream_path,
)
from rayflow._runtime.stream_rows import ReadReply, Row
from rayflow._status import RunStatus
from rayflow.errors import InvalidArgument, RayflowError, SessionNotFound
from rayflow.store.base import RunRecord, SessionRecord

log = logging.getLogger("rayflow")

#: pages this process's readers got pushed by a run's RunActor / read from
#: the Store after a wait (benchmarks and tests count them)
pages = {"pushed": 0, "woken": 0}


async def read_records(
    id_or_external: str,
    io: IO,
    *,
    channel: str | None = None,
    start: int = 0,
    limit: int = 1000,
) -> RecordPage:
    """The records at `start` and after (at most `limit`), without waiting."""
    session = await session_runs.get_session(id_or_external)
    path = session_stream_path(session.id, io, channel)
    _check_start(start)
    conn = connection.current()
    read = await asyncio.to_thread(
        conn.store.named_read, path, start, limit, conn.settings.max_input_bytes * 4
    )
    return _page(session, read)


async def wait_records(
    id_or_external: str,
    io: IO,
    *,
    channel: str | None = None,
    start: int = 0,
    limit: int = 1000,
    timeout_s: float = 60.0,
    waiter: Waiter | None = None,
) -> RecordPage:
    """`read_records`, waiting up to `timeout_s` while there are none at
    `start` (see the module: the feed, and the live run's pushed rows).
    `waiter`: how this process hears of commits elsewhere (default: its
    feed follower)."""
    session_id = await session_runs.session_id_of(id_or_external)
    key = (session_stream_path(session_id, io, channel), waiter)
    follower = lingering.take(key) or RecordFollower(session_id, io, channel, waiter)
    try:
        page = await follower.next(start, limit, timeout_s)
    except BaseException:
        follower.close()
        raise
    lingering.keep(key, follower)
    return page


async def follow_records(
    id_or_external: str,
    io: IO,
    *,
    channel: str | None = None,
    start: int = 0,
    timeout_s: float = 60.0,
) -> AsyncIterator[list[S2Record]]:
    """Batches of records from `start` on, live, until `timeout_s` passes
    with none (resume from the last `seq_num` + 1)."""
    session_id = await session_runs.session_id_of(id_or_external)
    follower = RecordFollower(session_id, io, channel)
    try:
        while True:
            page = await follower.next(start, 1000, timeout_s)
            if not page.records:
                return
            yield page.records
            start = page.records[-1].seq_num + 1
    finally:
        follower.close()


class RecordFollower:
    """One reader of one session stream, page after page (see the module).
    Keep one for a reader's life: its push subscription follows on from
    page to page. `close()` it at the end."""

    def __init__(
        self,
        session_id: str,
        io: IO,
        channel: str | None = None,
        waiter: Waiter | None = None,
        *,
        closed_ends: bool = False,
        reread_s: float | None = REREAD_S,
        take_pushes: bool = False,
    ) -> None:
        """`closed_ends`: `next` returns at once, with no records, when the
        session is closed and nothing is left at the reader's position.
        `reread_s`: a waiting reader reads the Store at least this often
        (a lost wake-up of this process's feed follower delays a record by
        at most this); None for a waiter whose feed says when it lost track.
        `take_pushes`: its event loop lives long (a Serve replica's): it may
        listen for rows pushed by runs' commit threads (`named_tails.push`);
        the process's rayflow I/O loop always does."""
        self.session_id = session_id
        self.path = session_stream_path(session_id, io, channel)
        self._arm = waiter or local_waiter
        self._closed_ends = closed_ends
        self._reread_s = reread_s
        # runs write `.out` streams; `.in` is written by senders (no push).
        # A reader inside a run hears its own process's commits directly
        self._pushable = io == "out" and current_run() is None
        self._push: actor_polls.Subscription | None = None
        self._take_pushes = take_pushes
        self._listener: Listener | None = None
        #: whether the session was closed at the last look
        self._closed = False
        #: (run id, actor id) of a RunActor that said it does not execute the run
        self._refused: tuple[str, Any] | None = None

    async def next(self, start: int, limit: int, timeout_s: float) -> RecordPage:
        """The records at `start` and after, waiting up to `timeout_s` while
        there are none (then a page without records)."""
        _check_start(start)
        deadline = time.monotonic() + timeout_s
        waited = False
        listener = await self._listen(start)  # before the look: a push after it is held
        held = self._held(listener, start)
        if held:
            # pushed while the reader was away: committed rows at their
            # positions, no Store look needed
            pages["pushed"] += 1
            return self._pushed_page(held, limit, self._closed)
        while True:
            if hops.enabled():
                hops.mark("look", [self.path])
            wait = await self._arm(self.path)  # before the read: a commit after it wakes us
            session, run, page = await self._look(start, limit)
            if hops.enabled():
                hops.mark("looked", [self.path])
            left = deadline - time.monotonic()
            self._closed = page.closed
            if page.records or left <= 0 or (self._closed_ends and page.closed):
                if page.records and waited:
                    pages["woken"] += 1
                if page.records and hops.enabled():
                    hop = "taken_woken" if waited else "taken_read"
                    hops.mark(hop, [hops.named_id(self.path, r.seq_num) for r in page.records])
                return page
            if self._reread_s is not None:
                left = min(left, self._reread_s)
            waited = True
            push = await self._follow(run, start)
            rows = await self._wait(push, listener, wait, start, left)
            if rows:
                pages["pushed"] += 1
                return self._pushed_page(rows, limit, page.closed)

    def _pushed_page(self, rows: list[Row], limit: int, closed: bool) -> RecordPage:
        if hops.enabled():
            hops.mark("taken_pushed", [hops.named_id(self.path, r[0]) for r in rows])
        if len(rows) > limit:  # the rest stays held for the next call
            if self._listener is not None:
                self._listener.rows = rows[limit:] + self._listener.rows
            rows = rows[:limit]
        records = [s2_record(r[0], r[1], r[2]) for r in rows]
        return RecordPage(self.session_id, records, rows[-1][0] + 1, closed)

    def _held(self, listener: Listener | None, start: int) -> list[Row]:
        """Rows from `start` pushed before this call and held (by the
        listener, or queued on the subscription)."""
        if listener is not None and listener.rows and listener.rows[0][0] == start:
            rows = listener.take()
            if self._push is not None:
                self._push.skip_to(rows[-1][0] + 1)
            return rows
        rows = self._push.take_at(start) if self._push is not None else []
        if rows and listener is not None:
            listener.at(rows[-1][0] + 1)
        return rows

    @property
    def following(self) -> bool:
        """Whether it follows the live run's pushed rows now."""
        return self._push is not None and self._push.active

    def close(self) -> None:
        self._unfollow()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _unfollow(self) -> None:
        if self._push is not None:
            self._push.close()
            self._push = None

    async def _listen(self, start: int) -> Listener | None:
        """This loop's listener for the rows pushed to the path from `start`
        (`actor_polls.listen`), when the reader may be pushed to and its
        loop lives long enough to listen (the I/O loop, a Serve replica's)."""
        if not self._pushable or not (self._take_pushes or on_io_loop()):
            return None
        if self._listener is None:
            await actor_polls.take_pushes()
            self._listener = actor_polls.listen(self.path, start)
        else:
            self._listener.at(start)
        return self._listener

    async def _look(
        self, start: int, limit: int
    ) -> tuple[SessionRecord, RunRecord | None, RecordPage]:
        """The session, its current run (when it may push) and the records
        at `start`, in one thread hop."""
        conn = connection.current()
        store, pushable = conn.store, self._pushable

        def look() -> tuple[SessionRecord | None, RunRecord | None, Any]:
            session = store.get_session(self.session_id)
            if session is None:
                return None, None, None
            run_id = session.current_run_id
            run = store.get_run(run_id) if pushable and run_id is not None else None
            read = store.named_read(self.path, start, limit, conn.settings.max_input_bytes * 4)
            return session, run, read

        session, run, read = await asyncio.to_thread(look)
        if session is None:
            raise SessionNotFound(f"session {self.session_id!r} not found")
        return session, run, _page(session, read)

    async def _follow(self, run: RunRecord | None, start: int) -> actor_polls.Subscription | None:
        """The subscription to the live run's pushed rows from `start`, or
        None while the session has no run executing (or it cannot be found)."""
        if run is None or run.status != RunStatus.EXECUTING:
            self._unfollow()
            return None
        push = self._push
        if push is not None and push.run_id == run.id and push.active:
            push.skip_to(start)  # rows the reader got another way
            head = push.queue[0] if push.queue else None
            if head is None and (
                push.position == start
                # behind: its rows up to `start` come (the reader had them
                # pushed from the commit thread first) and are skipped; the
                # listener has what is pushed from `start` meanwhile
                or (self._listener is not None and push.position < start)
            ):
                return push
            if isinstance(head, ReadReply) and head.rows and head.rows[0][0] == start:
                return push
        self._unfollow()  # another run, or rows already read from the Store
        try:
            _, actor = await locations.locate(run.id)
        except RayflowError:
            return None
        if actor is None or self._refused == (run.id, actor._actor_id):
            return None
        self._push = actor_polls.subscribe(actor, run.id, named_key(self.path), start)
        return self._push

    async def _wait(
        self,
        push: actor_polls.Subscription | None,
        listener: Listener | None,
        wait: Armed,
        start: int,
        timeout_s: float,
    ) -> list[Row] | None:
        """Rows pushed from `start` (by the live run's RunActor: `push`, or
        straight from its commit thread: `listener`), or None once the feed
        woke us (read the Store), at the timeout, or when the push ended."""
        got = asyncio.ensure_future(push.get(timeout_s)) if push is not None else None
        heard = asyncio.ensure_future(listener.wait(timeout_s)) if listener is not None else None
        woke = asyncio.ensure_future(wait(timeout_s))
        tasks = [t for t in (got, heard, woke) if t is not None]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        if listener is not None and listener.rows and listener.rows[0][0] == start:
            rows = listener.take()
            if push is not None:
                push.skip_to(rows[-1][0] + 1)
            return rows
        if push is None or got is None or not got.done() or got.cancelled():
            return None
        try:
            reply = got.result()
        except Exception as e:  # the actor is gone or its poll failed: the feed and the Store
            if not isinstance(e, ray.exceptions.RayActorError):
                log.warning("session %s: following its run's pushed rows failed: %r", self.path, e)
            locations.forget(push.run_id, push.poll.actor)
            self._unfollow()
            return None
        if reply is None:
            return None
        if reply.rows:
            rows = [r for r in reply.rows if r[0] >= start]
            if not rows:
                return None  # rows the reader had already (pushed first): look again
            if rows[0][0] == start:
                if listener is not None:
                    listener.at(rows[-1][0] + 1)
                return rows
            self._unfollow()  # not where this reader is: follow again from there
            return None
        # the actor does not execute the run (any more): the Store and the
        # feed until the session's run is found live elsewhere
        self._refused = (push.run_id, push.poll.actor._actor_id)
        locations.forget(push.run_id, push.poll.actor)
        self._unfollow()
        return None


def _check_start(start: int) -> None:
    if start < 0:
        raise InvalidArgument(f"start must be 0 or more, not {start}")


def _page(session: SessionRecord, read: Any) -> RecordPage:
    records = [s2_record(c.pos, c.data, c.created_at) for c in read.chunks]
    tail = read.stream.length if read.stream is not None else 0
    return RecordPage(session.id, records, tail, _closed(session))


def _closed(session: SessionRecord) -> bool:
    return session.closed_or_expired(int(time.time() * 1000))
