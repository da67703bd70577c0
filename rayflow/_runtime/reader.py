"""Reading an output stream from any process: history, then live, then the end.

A reader starts at the Store, not the Controller: one look gives the run's
status and the first batch (acknowledged = durable = visible, so every
chunk a writer was told about is there). A finished, queued or suspended
run is read from the Store only. A live run's reader, once it has caught
up, long-polls the run's RunActor (one Ray call per batch, not per chunk),
found through the `locations` cache or named by the run's row at the first
look (`RunRecord.actor_name`; the Controller is asked only when neither
knows it); chunks the actor no longer holds come
from a sealed segment in the Ray object store or from the Store. When the
actor does not execute the run (any more) it says `from_store`, and the
reader reads the Store and looks for the run again. It ends when the
stream is closed (run finished or writer closed it) or after `timeout_s`
without a new chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import ray

from rayflow._runtime import actor_polls, connection, hops, locations
from rayflow._runtime.actor_polls import LONG_POLL_S
from rayflow._runtime.batching import GroupCommit
from rayflow._runtime.stream_rows import Row, rows_from_chunks, segment_rows
from rayflow._runtime.wake import Wake
from rayflow._status import RunStatus
from rayflow.errors import InvalidArgument, RunNotFound
from rayflow.store.base import FINISHED_STATUSES, RunRecord, Store

#: how often a reader without a live actor asks where the run went
RELOCATE_S = 0.25
#: a reader of a run without a live actor (queued, suspended) looks at the
#: Store every POLL_S at first; after IDLE_RAMP_S without a chunk it slows
#: down to one look (and one Controller `locate`) every POLL_MAX_S — a run
#: that waits days for an approval costs a reader ~3 Store reads a second,
#: not ~60 and 4 `locate`s
POLL_S = 0.05
POLL_MAX_S = 1.0
IDLE_RAMP_S = 2.0


def idle_pause(idle_s: float) -> float:
    """How long a reader without a live actor waits before it looks again,
    `idle_s` after its last chunk: POLL_S, rising to POLL_MAX_S over ~10 s."""
    if idle_s < IDLE_RAMP_S:
        return POLL_S
    return min(POLL_MAX_S, POLL_S + (idle_s - IDLE_RAMP_S) / 10)


#: one reader's first look: (run id, key, start index, batch)
Look = tuple[str, str, int, int]
#: what a first look saw: the run, the first batch of rows, and the RunActor
#: the run's row names when it is EXECUTING (None when Ray does not know it)
Seen = tuple[RunRecord | None, list[Row], Any]

#: per event loop, per Store: the first looks of the readers starting meanwhile
_looks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, GroupCommit[Look, Seen]]] = (
    weakref.WeakKeyDictionary()
)


#: batches of first looks this process made (tests count them)
first_look_batches = 0
#: Store reads a reader of this process made on its own, each a thread hop
#: (`ChunkReader._read_store`, `_store_says_closed`; tests count them)
lone_reads = 0


def first_looks(store: Store, looks: list[Look]) -> list[tuple[RunRecord | None, list[Row]]]:
    """Per look, its run and the first batch of its stream, for many readers
    at once (in the caller's thread): the runs in one read, then which of
    their streams hold chunks past the reader's start in one more; only
    those are read (a burst of readers of new runs: two reads in all). The
    runs are read first, as one reader did: a run that has finished has
    every chunk of its streams committed."""
    global first_look_batches
    first_look_batches += 1
    found = store.get_runs([run_id for run_id, _, _, _ in looks])
    live = [(look, run) for look, run in zip(looks, found, strict=True) if run is not None]
    infos = store.stream_infos([(run_id, key) for (run_id, key, _, _), _ in live])
    batches = {}
    for ((run_id, key, start, batch), _), info in zip(live, infos, strict=True):
        if info is not None and info.length > start:
            batches[(run_id, key, start, batch)] = store.read_chunks(run_id, key, start, batch)
    return [
        (run, rows_from_chunks(batches.get(look, [])) if run is not None else [])
        for look, run in zip(looks, found, strict=True)
    ]


def _executing_on(run: RunRecord | None) -> str | None:
    """The Ray name of the RunActor an EXECUTING run's row names."""
    if run is None or run.status != RunStatus.EXECUTING:
        return None
    return run.actor_name


def first_looks_with_actors(store: Store, namespace: str, looks: list[Look]) -> list[Seen]:
    """`first_looks`, and per EXECUTING run the RunActor its row names
    (`locations.named`: one Ray lookup per actor this process has not met):
    its reader follows it without asking the Controller where it runs."""
    seen = first_looks(store, looks)
    names = {name for run, _ in seen if (name := _executing_on(run)) is not None}
    actors = locations.named(names, namespace) if names else {}
    return [(run, rows, actors.get(_executing_on(run) or "")) for run, rows in seen]


def _first_looks(conn: connection.Connection) -> GroupCommit[Look, Seen]:
    groups = _looks.setdefault(asyncio.get_running_loop(), {})
    store, namespace = conn.store, conn.settings.namespace
    group = groups.get(id(store))
    if group is None:
        groups.clear()  # an earlier connection's (rayflow.init after shutdown)
        group = groups[id(store)] = GroupCommit(
            lambda looks: first_looks_with_actors(store, namespace, looks), max_batch=500
        )
    return group


def _being_cancelled() -> bool:
    """Whether the current task has been asked to cancel and has not
    recovered (`Task.cancelling`, Python 3.11+)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is not None and cancelling() > 0


class ChunkReader:
    """Batches of rows `(seq, JSON text, created_at ms, record id)`, in order."""

    def __init__(
        self,
        run_id: str,
        key: str,
        start_index: int = 0,
        timeout_s: float | None = 60.0,
        batch: int = 1000,
        pushed: bool = False,
    ) -> None:
        if start_index < 0:
            raise InvalidArgument(
                f"start_index must be >= 0, not {start_index}", run_id=run_id, stream=key
            )
        self.run_id, self.key, self.batch = run_id, key, batch
        self.next_index = start_index
        self.timeout_s = timeout_s
        #: also take rows that outside writers push to this event loop
        #: (`push_inbox`; for a long-lived loop, e.g. a Serve replica's)
        self.pushed = pushed
        #: set when the reader ended because the stream is closed
        self.closed = False
        #: `wake()` was called: look at the Store and locate the run at once
        self._woken = False
        self._wake = Wake()
        #: `stop()` was called: end at the next look, whatever it finds
        self._stopped = False
        #: this reader's place in its RunActor's multiplexed long poll
        self._sub: actor_polls.Subscription | None = None

    def wake(self) -> None:
        """Look again now, not after the idle pause: the run changed (it was
        revived, moved or finished). A Serve replica's hub calls it from the
        run change feed; without it a reader notices within POLL_MAX_S."""
        self._woken = True
        self._wake.set()

    def stop(self) -> None:
        """End the reader at its next step (its owner is gone). Cancelling
        its task is not enough when code the reader does not own swallows
        the cancellation (`asyncio.wait_for` on Python 3.10/3.11 does, when
        it meets its result): the reader's own waits never do (`wake`), and
        it ends at its next step when its task is being cancelled."""
        self._stopped = True
        self.wake()

    async def _idle(self, pause_s: float) -> None:
        if not self._woken:
            await self._wake.wait(pause_s)
        self._wake.clear()

    async def _read_store(self, start: int) -> list[Row]:
        global lone_reads
        lone_reads += 1
        store = connection.current().store
        chunks = await asyncio.to_thread(
            store.read_chunks, self.run_id, self.key, start, self.batch
        )
        return rows_from_chunks(chunks)

    async def _first_look(self) -> tuple[RunRecord, list[Row], Any]:
        """The run, the first batch from the Store and the RunActor the row
        names (or None), in one thread hop shared with the readers of this
        event loop starting meanwhile."""
        run, rows, actor = await self._look()
        if run is None:
            raise RunNotFound(
                f"run {self.run_id} does not exist", run_id=self.run_id, stream=self.key
            )
        return run, rows, actor

    async def _look(self) -> Seen:
        """A first look from where this reader is (`first_looks_with_actors`)."""
        looks = _first_looks(connection.current())
        return await looks.submit((self.run_id, self.key, self.next_index, self.batch))

    async def _store_says_closed(self) -> bool:
        global lone_reads
        lone_reads += 2
        store = connection.current().store
        run = await asyncio.to_thread(store.get_run, self.run_id)
        if run is None or run.status in FINISHED_STATUSES:
            return True
        info = await asyncio.to_thread(store.stream_info, self.run_id, self.key)
        return info is not None and info.closed

    def _advance(self, rows: list[Row]) -> None:
        if hops.enabled():  # not a string per row when tracing is off
            hops.mark("read", [hops.stream_id(self.run_id, self.key, r[0]) for r in rows])
        self.next_index = rows[-1][0] + 1

    async def batches(self) -> AsyncIterator[list[Row]]:
        try:
            async with contextlib.aclosing(self._follow()) as follow:
                async for rows in follow:
                    yield rows
        finally:
            if self._sub is not None:
                self._sub.close()
                self._sub = None

    async def _follow(self) -> AsyncGenerator[list[Row], None]:
        idle_deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s

        last_rows_at = time.monotonic()

        def touched() -> None:
            nonlocal idle_deadline, last_rows_at
            last_rows_at = time.monotonic()
            if self.timeout_s is not None:
                idle_deadline = time.monotonic() + self.timeout_s

        run, rows, named = await self._first_look()
        status: str | None = run.status
        if rows:
            self._advance(rows)
            touched()
            yield rows
        actor: Any = None
        located_at = 0.0
        if status == RunStatus.EXECUTING:
            # the actor this process last saw executing it, else the one its
            # row names; the Controller only when neither is known
            actor = locations.cached(self.run_id)
            if actor is None and named is not None:
                actor = named
                locations.remember(self.run_id, actor)
            if actor is None:
                status, actor = await locations.locate(self.run_id)
            located_at = time.monotonic()
        while not self._stopped:
            if _being_cancelled():
                # a cancellation swallowed on the way (see `stop`): a reader
                # without a timeout would otherwise follow the stream for ever
                raise asyncio.CancelledError
            now = time.monotonic()
            if idle_deadline is not None and now >= idle_deadline:
                return
            relocate_s = max(RELOCATE_S, idle_pause(now - last_rows_at))
            if (
                actor is None
                and status not in FINISHED_STATUSES
                and (self._woken or now - located_at >= relocate_s)
            ):
                self._woken = False
                status, actor = await locations.locate(self.run_id)
                located_at = time.monotonic()
            rows = []
            if actor is not None:
                if (
                    self._sub is None
                    or self._sub.poll.actor._actor_id != actor._actor_id
                    or (not self._sub.active and not self._sub.queue)
                ):
                    if self._sub is not None:
                        self._sub.close()
                    if self.pushed:
                        await actor_polls.take_pushes()
                    self._sub = actor_polls.subscribe(actor, self.run_id, self.key, self.next_index)
                wait = (
                    LONG_POLL_S if idle_deadline is None else min(idle_deadline - now, LONG_POLL_S)
                )
                try:
                    reply = await self._sub.get(wait)
                except ray.exceptions.RayActorError:
                    self._sub.close()
                    self._sub = None
                    locations.forget(self.run_id, actor)
                    locations.dead(actor)
                    actor, located_at = None, 0.0
                    continue
                if reply is None:
                    # a whole long poll without news: look at the Store once.
                    # An outside writer commits there first and tells the
                    # RunActor after (`run_appender`); if the telling was lost
                    # (the writer died in between), the chunk comes late
                    # from here, it is never stranded
                    rows = await self._read_store(self.next_index)
                    if not rows:
                        continue
                    self._sub.close()  # follow on from the new position
                    self._sub = None
                elif reply.rows:
                    rows = reply.rows
                elif reply.ref is not None:
                    segment = segment_rows(await reply.ref)
                    offset = self.next_index - reply.ref_start
                    rows = segment[offset : offset + self.batch]
                elif reply.from_store:
                    # the rows are too old for the actor, or it does not
                    # execute this run (any more): the run, its rows and the
                    # actor its row names, in one look shared with the readers
                    # of this loop looking meanwhile (a burst of runs ending
                    # together: one thread hop, not five per reader)
                    seen, rows, named = await self._look()
                    if not rows:
                        if seen is None or seen.status in FINISHED_STATUSES:
                            # the look read the run first: a finished run
                            # had every chunk committed
                            self.closed = True
                            return
                        # the Store is the truth until the run is found again
                        locations.forget(self.run_id, actor)
                        self._sub.close()
                        self._sub = None
                        status, located_at = seen.status, time.monotonic()
                        moved = named is not None and named._actor_id != actor._actor_id
                        actor = named if moved else None
                        if moved:
                            locations.remember(self.run_id, actor)
                        continue
                elif reply.closed:
                    # a last look: a chunk that reached the Store directly
                    # (while the run was not live for its writer) before the close
                    _, rows, _ = await self._look()
                    if not rows:
                        self.closed = True
                        return
            else:
                rows = await self._read_store(self.next_index)
                if not rows:
                    if status in FINISHED_STATUSES or await self._store_says_closed():
                        # a last look: chunks committed just before the close
                        rows = await self._read_store(self.next_index)
                        if not rows:
                            self.closed = True
                            return
                    else:
                        await self._idle(idle_pause(time.monotonic() - last_rows_at))
                        continue
            if rows:
                self._advance(rows)
                touched()
                yield rows
