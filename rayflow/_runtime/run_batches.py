"""Claims and ends of the runs of one process, group-committed; their
journals, the input streams with messages for them and the lengths of the
streams they write, loaded in one read each for the runs that start
together; and the task objects they load, read once for those runs.

A RunActor starts and ends many runs at once — a batch trigger placed on it,
a burst of revivals, runs that stream for the same time — and each claim
(QUEUED -> EXECUTING) and each end (`finish_run`) is a Store write: on
SQLite with `synchronous=FULL` one fsync each, one after another. Here the
claims (and the ends) arriving while one transaction commits share the next
one (`batching.GroupCommit`): 1,000 runs placed at once cost a handful of
transactions, and a lone run still commits at once.
"""

from __future__ import annotations

import asyncio
import weakref

from rayflow._runtime.batching import GroupCommit
from rayflow._runtime.journal import Journal
from rayflow.store.base import Claim, Store, StreamInfo


class RunBatches:
    def __init__(self, store: Store) -> None:
        self.store = store
        #: task blobs being read, by task id: runs starting meanwhile share
        #: the read (only while it is in flight: a re-registered task is
        #: read afresh by the next run)
        self.task_reads: dict[str, asyncio.Future[bytes | None]] = {}
        self.claims: GroupCommit[tuple[str, str], Claim] = GroupCommit(store.claim_runs)
        self.finishes: GroupCommit[tuple[str, str, str | None, str | None], bool] = GroupCommit(
            store.finish_runs
        )
        # one read for the journals of the runs starting together
        self.journals: GroupCommit[tuple[str, int], Journal] = GroupCommit(
            lambda items: [
                Journal(store, run_id, attempt, entries)
                for (run_id, attempt), entries in zip(
                    items, store.journal_load_many(items), strict=True
                )
            ],
            max_batch=500,
        )
        #: ... the input streams with messages for them
        self.inbox_streams: GroupCommit[str, list[str]] = GroupCommit(
            store.inbox_streams_many, max_batch=500
        )
        #: ... and the lengths of the streams they write first
        self.stream_infos: GroupCommit[tuple[str, str], StreamInfo | None] = GroupCommit(
            store.stream_infos, max_batch=500
        )


_batches: weakref.WeakKeyDictionary[Store, RunBatches] = weakref.WeakKeyDictionary()


def _for(store: Store) -> RunBatches:
    batches = _batches.get(store)
    if batches is None:
        batches = _batches[store] = RunBatches(store)
    return batches


async def claim(store: Store, run_id: str, actor_name: str) -> Claim:
    """`store.claim_run`, sharing a transaction with the claims arriving meanwhile."""
    return await _for(store).claims.submit((run_id, actor_name))


async def finish(
    store: Store, run_id: str, status: str, output: str | None, error: str | None
) -> bool:
    """`store.finish_run`, sharing a transaction with the ends arriving meanwhile."""
    return await _for(store).finishes.submit((run_id, status, output, error))


async def journal(store: Store, run_id: str, attempt: int) -> Journal:
    """The run's journal of `attempt`, loaded with those of the runs asking meanwhile."""
    return await _for(store).journals.submit((run_id, attempt))


async def stream_info(store: Store, run_id: str, key: str) -> StreamInfo | None:
    """`store.stream_info`, in one read with the streams asked for meanwhile
    (the first write of each of many runs that start together)."""
    return await _for(store).stream_infos.submit((run_id, key))


async def inbox_streams(store: Store, run_id: str) -> list[str]:
    """`store.inbox_streams`, in one read with the runs asking meanwhile (the
    runs that start together look for messages sent before they started)."""
    return await _for(store).inbox_streams.submit(run_id)


async def task_blob(store: Store, task_id: str) -> bytes | None:
    """`store.get_task`, one read for the runs that ask while it is in flight."""
    batches = _for(store)
    read = batches.task_reads.get(task_id)
    if read is None:
        read = asyncio.ensure_future(asyncio.to_thread(store.get_task, task_id))
        batches.task_reads[task_id] = read

        def done(f: asyncio.Future[bytes | None]) -> None:
            if batches.task_reads.get(task_id) is f:
                del batches.task_reads[task_id]

        read.add_done_callback(done)
    return await asyncio.shield(read)
