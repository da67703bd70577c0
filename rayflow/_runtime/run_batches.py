"""Claims and ends of the runs of one process, group-committed; with each
claim, everything a run needs to start, read for the runs claimed together
in one thread hop (`Start`: its task, its journal, its output streams and
the input streams with messages for it).

A RunActor starts and ends many runs at once — a batch trigger placed on it,
a burst of revivals, runs that stream for the same time — and each claim
(QUEUED -> EXECUTING) and each end (`finish_run`) is a Store write: on
SQLite with `synchronous=FULL` one fsync each, one after another. Here the
claims (and the ends) arriving while one transaction commits share the next
one (`batching.GroupCommit`): 1,000 runs placed at once cost a handful of
transactions, and a lone run still commits at once.

A claimed run then needs its task, its journal, the streams it has in the
Store: each was once a read of its own, shared by the runs asking together
(`GroupCommit`) — but every such read is a round for each of 500 runs
starting on one event loop: its thread hop, then every run resuming in turn
before the next read could start, ~60-90 ms a round in a burst (measured).
Now they are read right after the claim's commit, in the claim's thread
hop (`start`): a run is claimed and ready to start in one round.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from rayflow._runtime.batching import GroupCommit
from rayflow._runtime.journal import Journal
from rayflow.store.base import Claim, JournalEntry, Store, StreamInfo


@dataclass
class Start:
    """A run's claim and, when claimed, what it starts with — each read
    after the claim committed: the pickled task (None: not registered), the
    journal of the claimed attempt, the run's output streams in the Store by
    key, and the input streams with messages for it."""

    claim: Claim
    blob: bytes | None = None
    journal: list[JournalEntry] = field(default_factory=list)
    streams: dict[str, StreamInfo] = field(default_factory=dict)
    inbox_streams: list[str] = field(default_factory=list)


#: claim transactions this process made (`start_many`: tests count them —
#: a new run the Controller placed as it created it needs none)
claim_rounds = 0


def start_many(store: Store, claims: list[tuple[str, str]]) -> list[Start]:
    """`store.claim_runs`, then the reads that the claimed runs start with,
    a few statements for them all (in the caller's thread)."""
    global claim_rounds
    claim_rounds += 1
    starts = [Start(c) for c in store.claim_runs(claims)]
    claimed = [s for s in starts if s.claim.claimed and s.claim.run is not None]
    if not claimed:
        return starts
    runs = [s.claim.run for s in claimed if s.claim.run is not None]
    ids = [r.id for r in runs]
    journals = store.journal_load_many([(r.id, r.attempt) for r in runs])
    blobs = {task_id: store.get_task(task_id) for task_id in sorted({r.task_id for r in runs})}
    streams = store.list_streams_many(ids)
    inbox = store.inbox_streams_many(ids)
    for s, run, entries, infos, named in zip(claimed, runs, journals, streams, inbox, strict=True):
        s.blob, s.journal, s.inbox_streams = blobs[run.task_id], entries, named
        s.streams = {info.key: info for info in infos}
    return starts


class RunBatches:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.starts: GroupCommit[tuple[str, str], Start] = GroupCommit(
            lambda claims: start_many(store, claims)
        )
        self.finishes: GroupCommit[tuple[str, str, str | None, str | None], bool] = GroupCommit(
            store.finish_runs
        )
        # one read for the journals of later attempts (a retry) asked for together
        self.journals: GroupCommit[tuple[str, int], Journal] = GroupCommit(
            lambda items: [
                Journal(store, run_id, attempt, entries)
                for (run_id, attempt), entries in zip(
                    items, store.journal_load_many(items), strict=True
                )
            ],
            max_batch=500,
        )
        #: ... the input streams with messages for runs that started without
        #: them (`RunInputs` built without a `Start`)
        self.inbox_streams: GroupCommit[str, list[str]] = GroupCommit(
            store.inbox_streams_many, max_batch=500
        )
        #: ... and the lengths of streams a `Start` did not list (a reader's
        #: key of a run built without one, a stream written from outside)
        self.stream_infos: GroupCommit[tuple[str, str], StreamInfo | None] = GroupCommit(
            store.stream_infos, max_batch=500
        )


_batches: weakref.WeakKeyDictionary[Store, RunBatches] = weakref.WeakKeyDictionary()


def _for(store: Store) -> RunBatches:
    batches = _batches.get(store)
    if batches is None:
        batches = _batches[store] = RunBatches(store)
    return batches


async def start(store: Store, run_id: str, actor_name: str) -> Start:
    """`store.claim_run`, sharing a transaction with the claims arriving
    meanwhile, and what the run starts with (`start_many`)."""
    return await _for(store).starts.submit((run_id, actor_name))


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
