"""One process's writes to the streams of one run, sent together: one Ray
call per round trip for all of the run's keys, not one per stream.

Every writer outside the run it targets (a `writer.StreamAppender` per
(run, key): `streams.append(..., target=)`, `streams.writer`, pipes, the
replica's HTTP appends) hands its writes to the `RunAppender` of its (event
loop, run). That appender keeps one call in flight per run: with nothing in
flight a write leaves at once (on the next turn of the event loop, so writes
made in one go share the call); writes made meanwhile, to any key of the
run, queue and leave together in the next call, at most `MAX_BATCH` writes
per call. The call is `RunActor.append_many(run_id, [(key, writes), ...])`;
when the run has no actor (queued or suspended) it is one
`Store.append_chunks_many` for all keys, in one thread hop.

Invariants:
- Per key, writes are sent in the order they were submitted, and a call is
  sent only once the previous one is answered: per-(key, writer) order holds,
  and a call resent after a lost or recycled actor carries the same
  (writer_id, writer_seq)s, which the Store drops if they were stored.
- A future resolves only once its writes are committed (acknowledged =
  durable = visible). An error of one key (StreamClosed, StreamTooLarge,
  RunFinished naming that key) fails only that key's writes of the call;
  `RunMoved` or a dead actor sends them again after locating the run.
- An appender with nothing queued and nothing in flight is dropped, so a
  process that wrote to many runs keeps none of them.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import ray

from rayflow._runtime import connection, hops, locations
from rayflow._runtime.calls import RunMoved, call
from rayflow._runtime.stream_buffer import closed_error
from rayflow._runtime.stream_commit import Entry
from rayflow.errors import RunFinished, RunNotFound, StreamTooLarge
from rayflow.store.base import FINISHED_STATUSES, ChunkWrite

#: most writes in one Ray call (a flood leaves in bounded messages)
MAX_BATCH = 10_000

#: what a call answers per key: the indexes of its writes, or its error
Outcome = list[int | None] | Exception


def finished_error(run_id: str, status: str, key: str | None = None) -> RunFinished:
    return RunFinished(
        f"run {run_id} is {status}; its streams are closed and take no more chunks",
        run_id=run_id,
        stream=key,
        status=status,
    )


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RunAppender]] = (
    weakref.WeakKeyDictionary()
)


def run_appender(run_id: str) -> RunAppender:
    """The appender of `run_id` in the running event loop."""
    by_run = _by_loop.setdefault(asyncio.get_running_loop(), {})
    appender = by_run.get(run_id)
    if appender is None:
        appender = by_run[run_id] = RunAppender(run_id, by_run)
    return appender


class RunAppender:
    """All writes of one event loop to one run, batched adaptively."""

    def __init__(self, run_id: str, registry: dict[str, RunAppender]) -> None:
        self.run_id = run_id
        self._registry = registry
        self._queue: list[tuple[str, Entry]] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, key: str, writes: list[ChunkWrite], single: bool) -> asyncio.Future[Any]:
        """Queue writes to `key`; the future resolves to their indexes (one
        index when `single`) once durable, None for a duplicate."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((key, Entry(writes, future, single)))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_loop())
        return future

    def _take(self) -> list[tuple[str, Entry]]:
        count = n = 0
        queue = self._queue
        while n < len(queue) and (n == 0 or count + len(queue[n][1].writes) <= MAX_BATCH):
            count += len(queue[n][1].writes)
            n += 1
        taken, self._queue = queue[:n], queue[n:]
        return taken

    async def _flush_loop(self) -> None:
        try:
            delay = connection.current().settings.flush_interval_s
            if delay > 0:
                await asyncio.sleep(delay)
            while self._queue:
                await self._send_batch(self._take())
        except BaseException as e:  # e.g. cancelled as the loop closes: nobody may hang
            queued, self._queue = self._queue, []
            for _, entry in queued:
                entry.fail(e)
            if not isinstance(e, Exception):
                raise
        finally:
            if not self._queue and self._registry.get(self.run_id) is self:
                del self._registry[self.run_id]

    async def _send_batch(self, batch: list[tuple[str, Entry]]) -> None:
        by_key: dict[str, list[Entry]] = {}
        for key, entry in batch:
            by_key.setdefault(key, []).append(entry)
        items = [(key, [w for e in entries for w in e.writes]) for key, entries in by_key.items()]
        ids = (
            [hops.write_id(w.writer_id, w.writer_seq) for _, ws in items for w in ws]
            if hops.enabled()
            else []
        )
        hops.mark("send", ids)
        try:
            outcomes = await self._send(items)
        except BaseException as e:
            for _, entry in batch:
                entry.fail(e)
            if not isinstance(e, Exception):
                raise
            return
        hops.mark("ack", ids)
        for entries, outcome in zip(by_key.values(), outcomes, strict=True):
            if isinstance(outcome, Exception):
                for entry in entries:
                    entry.fail(outcome)
                continue
            at = 0
            for entry in entries:
                entry.settle(outcome[at : at + len(entry.writes)])
                at += len(entry.writes)

    async def _send(self, items: list[tuple[str, list[ChunkWrite]]]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        todo = list(range(len(items)))
        for _ in range(10):
            status, actor = await locations.locate(self.run_id)
            if status in FINISHED_STATUSES:
                for i in todo:
                    outcomes[i] = finished_error(self.run_id, status, items[i][0])
                return _complete(outcomes)
            if actor is None:
                got = await self._append_to_store([items[i] for i in todo])
                for i, outcome in zip(todo, got, strict=True):
                    outcomes[i] = outcome
                return _complete(outcomes)
            try:
                answers: list[Outcome] = await call(
                    actor.append_many.remote(self.run_id, [items[i] for i in todo])
                )
            except (ray.exceptions.RayActorError, RunMoved):
                # it moved (finished, suspended, crashed, recycled): look again
                locations.forget(self.run_id, actor)
                continue
            moved = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, RunMoved):
                    moved.append(i)
                else:
                    outcomes[i] = answer
            if not moved:
                return _complete(outcomes)
            todo = moved
            locations.forget(self.run_id, actor)
        for i in todo:
            outcomes[i] = RunNotFound(
                f"could not reach run {self.run_id} to write to {items[i][0]!r}",
                run_id=self.run_id,
                stream=items[i][0],
            )
        return _complete(outcomes)

    async def _append_to_store(self, items: list[tuple[str, list[ChunkWrite]]]) -> list[Outcome]:
        conn = connection.current()
        store, run_id, max_bytes = conn.store, self.run_id, conn.settings.max_stream_bytes

        def append() -> list[Outcome]:
            outcomes: list[Outcome | None] = [None] * len(items)
            todo = []
            for i, (key, _) in enumerate(items):
                # a live run's buffer refuses a closed stream itself; here the
                # Store's flag says it (a stream closed before the run suspended)
                info = store.stream_info(run_id, key)
                if info is not None and info.closed:
                    outcomes[i] = closed_error(run_id, key)
                else:
                    todo.append(i)
            if not todo:
                return _complete(outcomes)
            try:
                results = store.append_chunks_many(
                    [(run_id, items[i][0], items[i][1]) for i in todo], max_bytes
                )
                for i, result in zip(todo, results, strict=True):
                    outcomes[i] = result.seqs
            except StreamTooLarge:
                # one key is too large and nothing was stored: key by key, so
                # only that key's writes fail
                for i in todo:
                    try:
                        outcomes[i] = store.append_chunks(run_id, *items[i], max_bytes).seqs
                    except StreamTooLarge as e:
                        outcomes[i] = e
            return _complete(outcomes)

        return await asyncio.to_thread(append)


def _complete(outcomes: list[Outcome | None]) -> list[Outcome]:
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]
