"""One process's writes to streams of runs it does not execute: committed to
the Store by this process, every run and key together, then told to the
runs' RunActors.

Every writer outside the run it targets (a `writer.StreamAppender` per
(run, key): `streams.append(..., target=)`, `streams.writer`, pipes, the
replica's HTTP appends) hands its writes to the `ProcessAppender` of its
event loop. It keeps one commit in flight: with nothing in flight a write
leaves at once (on the next turn of the event loop, so writes made in one go
share the commit); writes made meanwhile, to any stream of any run, queue
and leave together in the next one, at most `MAX_BATCH` writes: one guarded
transaction (`Store.append_chunks_guarded`), one fsync, on the process's
commit thread. The acknowledgement is that commit — no Ray call, no
Controller, no RunActor on the way.

First the commit thread pushes the rows straight to the processes that
follow the run and take pushes (a Serve replica's SSE readers:
`push_outbox`, as the run's RunActor last named them), then the RunActor
executing the run, if there is one, is told
(`RunActor.published`, in the background; one call in flight per RunActor
for every run it executes, what commits meanwhile goes in the next call,
and under a flood calls at least `TELL_GAP_S` apart): it takes the rows
into its streams' tails and wakes the long polls of the readers following
them.
The commit thread hands the stored rows over as soon as its commit returns,
and telling runs on the process's own telling thread (`run_tells.telling`), not on
the writer's event loop: a busy loop (a replica's, a benchmark's SSE
client's) is not on the way to the readers, and a script's `asyncio.run`
that returns as soon as its appends are acknowledged would cancel a teller
of its loop before the actor heard (its followers would wait a whole long
poll for the chunks).

Invariants:
- Acknowledged = durable = visible. A future resolves once its commit is
  done. A reader that starts after that finds the chunk in the Store (a
  reader's first look is there); a reader already following the run's
  RunActor gets it when the actor is told, one Ray call later. A RunActor
  never skips a chunk: a commit of its own that lands after an outside one
  fills the gap from the Store (`StreamBuffer.merge`).
- Who is told: the RunActor found executing the run *after* the commit
  (through the `locations` cache, else the actor the run's row names in
  the commit itself — no Controller call before a process's first write
  to a run is told —, else the Controller; a run the actor answers as not
  its own, or a dead actor, means: locate again, through the Controller).
  A RunActor that starts executing the run later loads its streams'
  lengths from the Store after the commit, so it has the chunks.
- The run is checked in the same transaction: a write to a run that does not
  exist or has finished, or to a closed stream, stores nothing and fails with
  RunNotFound / RunFinished / StreamClosed — only that (run, key)'s writes,
  and of those not a call whose writes were all stored before (a retry or a
  replay batched with a refused write is acknowledged as duplicates).
  A run that finishes concurrently is ordered by its row lock: before (the
  write is refused) or after (the write is stored and then closed).
- Per (run, key, writer), writes are committed in the order submitted, one
  commit at a time; a commit retried after a lost connection carries the same
  (writer_id, writer_seq)s, which the Store drops if they were stored.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from rayflow._runtime import connection, hops, push_outbox
from rayflow._runtime.calls import shared_task
from rayflow._runtime.run_tells import telling
from rayflow._runtime.stream_commit import Entry, commit_thread
from rayflow._runtime.stream_refusals import finished_error, refusal_error
from rayflow._runtime.stream_rows import Row
from rayflow.errors import StreamTooLarge
from rayflow.store import Store
from rayflow.store.base import AppendResult, ChunkWrite, Refused, now_ms

__all__ = ["ProcessAppender", "finished_error", "process_appender"]

log = logging.getLogger("rayflow")

#: most writes in one commit (a flood is committed in bounded transactions)
MAX_BATCH = 10_000

#: what a commit answers per (run, key): the indexes of its writes, or its
#: error — with, when refused, which writes were stored duplicates
Outcome = list[int | None] | Exception | tuple[Exception, list[bool]]


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProcessAppender] = (
    weakref.WeakKeyDictionary()
)


def process_appender() -> ProcessAppender:
    """The appender of the running event loop."""
    loop = asyncio.get_running_loop()
    appender = _by_loop.get(loop)
    if appender is None:
        appender = _by_loop[loop] = ProcessAppender()
    return appender


class ProcessAppender:
    """All of one event loop's writes to runs it does not execute, committed
    together, adaptively batched."""

    def __init__(self) -> None:
        self._queue: list[tuple[str, str, Entry]] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(
        self, run_id: str, key: str, writes: list[ChunkWrite], single: bool
    ) -> asyncio.Future[Any]:
        """Queue writes to (run, key); the future resolves to their indexes
        (one index when `single`) once durable, None for a duplicate."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((run_id, key, Entry(writes, future, single)))
        if self._flusher is None or self._flusher.done():
            # in no request's context: it commits for every request of a
            # replica, and Ray cancels a request's calls when its client leaves
            self._flusher = shared_task(self._flush_loop())
        return future

    def _take(self) -> list[tuple[str, str, Entry]]:
        count = n = 0
        queue = self._queue
        while n < len(queue) and (n == 0 or count + len(queue[n][2].writes) <= MAX_BATCH):
            count += len(queue[n][2].writes)
            n += 1
        taken, self._queue = queue[:n], queue[n:]
        return taken

    async def _flush_loop(self) -> None:
        try:
            delay = connection.current().settings.flush_interval_s
            if delay > 0:
                await asyncio.sleep(delay)
            while self._queue:
                await self._commit(self._take())
        except BaseException as e:  # e.g. cancelled as the loop closes: nobody may hang
            queued, self._queue = self._queue, []
            for _, _, entry in queued:
                entry.fail(e)
            if not isinstance(e, Exception):
                raise

    async def _commit(self, batch: list[tuple[str, str, Entry]]) -> None:
        by_stream: dict[tuple[str, str], list[Entry]] = {}
        for run_id, key, entry in batch:
            by_stream.setdefault((run_id, key), []).append(entry)
        items = [
            (run_id, key, [w for e in entries for w in e.writes])
            for (run_id, key), entries in by_stream.items()
        ]
        ids = (  # not a string per write when tracing is off
            [hops.write_id(w.writer_id, w.writer_seq) for *_, ws in items for w in ws]
            if hops.enabled()
            else []
        )
        hops.mark("send", ids)
        conn = connection.current()
        try:
            outcomes = await commit_thread().run(
                _append_and_tell, conn.store, conn.settings.max_stream_bytes, items
            )
        except BaseException as e:
            for *_, entry in batch:
                entry.fail(e)
            if not isinstance(e, Exception):
                raise
            return
        hops.mark("ack", ids)
        for entries, outcome in zip(by_stream.values(), outcomes, strict=True):
            if isinstance(outcome, Exception):
                for entry in entries:
                    entry.fail(outcome)
                continue
            if isinstance(outcome, tuple):
                # refused: an entry of duplicates only (a retry, a replay) was
                # stored before and is acknowledged as such; the others fail
                error, duplicates = outcome
                at = 0
                for entry in entries:
                    n = len(entry.writes)
                    if all(duplicates[at : at + n]):
                        entry.settle([None] * n)
                    else:
                        entry.fail(error)
                    at += n
                continue
            at = 0
            for entry in entries:
                entry.settle(outcome[at : at + len(entry.writes)])
                at += len(entry.writes)


def _append_and_tell(
    store: Store, max_bytes: int, items: list[tuple[str, str, list[ChunkWrite]]]
) -> list[Outcome]:
    """`_append`, then the runs' RunActors told of the stored rows straight
    from the commit thread: the writer's event loop (busy, or about to
    close) is not on the way to the readers."""
    outcomes, actors = _append(store, max_bytes, items)
    created_at = now_ms()
    news: dict[str, list[tuple[str, list[Row]]]] = {}
    for (run_id, key, writes), outcome in zip(items, outcomes, strict=True):
        if not isinstance(outcome, list):
            continue
        stored = [(w, s) for w, s in zip(writes, outcome, strict=True) if s is not None]
        if stored:
            rows = [(s, w.data, created_at, w.record_id) for w, s in stored]
            news.setdefault(run_id, []).append((key, rows))
            if hops.enabled():
                hops.mark(
                    "stored",
                    [hops.stream_id(run_id, key, s) for _, s in stored],
                    [hops.write_id(w.writer_id, w.writer_seq) for w, _ in stored],
                )
    if news:
        try:  # the processes following these runs, first
            push_outbox.push(news)
        except Exception as e:  # committed all the same: the RunActor passes them on
            log.warning("rayflow: pushing new chunks to their readers failed: %s", e)
        telling().tell(news, actors)
    return outcomes


def _append(
    store: Store, max_bytes: int, items: list[tuple[str, str, list[ChunkWrite]]]
) -> tuple[list[Outcome], dict[str, str]]:
    """One guarded commit of every item (on the commit thread); when one
    stream would grow past its limit (nothing stored), item by item, so only
    that stream's writes fail. Also, per run stored to, the name of the
    actor its row says executes it (`AppendResult.actor_name`)."""
    results: list[AppendResult | Refused | Exception]
    try:
        results = list(store.append_chunks_guarded(items, max_bytes))
    except StreamTooLarge:
        results = []
        for item in items:
            try:
                results.extend(store.append_chunks_guarded([item], max_bytes))
            except StreamTooLarge as e:
                results.append(e)
    outcomes: list[Outcome] = []
    actors: dict[str, str] = {}
    for (run_id, key, _), result in zip(items, results, strict=True):
        if isinstance(result, AppendResult):
            outcomes.append(result.seqs)
            if result.actor_name:
                actors[run_id] = result.actor_name
        elif isinstance(result, Refused):
            error = refusal_error(run_id, key, result)
            outcomes.append((error, result.duplicates) if result.duplicates else error)
        else:
            outcomes.append(result)
    return outcomes, actors
