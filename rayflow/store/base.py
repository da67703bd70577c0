"""The Store protocol: everything rayflow has told a user has happened lives here.

Two implementations share this protocol: SQLite (embedded default, one machine)
and PostgreSQL (a multi-node cluster). Callers only ever see `Store`; the
implementation is chosen by URL in `open_store`.

All methods are synchronous and short; async callers run them with
`asyncio.to_thread`. Timestamps are integer milliseconds since the epoch.
JSON values are stored as JSON text and handed back as text, so the Store
never re-serialises a user's chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# Statuses are spelled in one place, rayflow/_status.py (RunStatus).
from rayflow._status import ACTIVE_STATUSES as ACTIVE_STATUSES
from rayflow._status import FINISHED_STATUSES as FINISHED_STATUSES
from rayflow._status import RunStatus
from rayflow.errors import RunFinished, RunNotFound
from rayflow.store.named import NamedStreamStore
from rayflow.store.waits import SESSION_WAIT_PREFIX as SESSION_WAIT_PREFIX
from rayflow.store.waits import TOKEN_WAIT_PREFIX as TOKEN_WAIT_PREFIX
from rayflow.store.waits import SessionRecord as SessionRecord
from rayflow.store.waits import SessionSend as SessionSend
from rayflow.store.waits import TokenAndSessionStore
from rayflow.store.waits import WaitTokenRecord as WaitTokenRecord


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RunRecord:
    id: str
    task_id: str
    status: str = RunStatus.QUEUED.value
    payload: str = "null"  # JSON text
    output: str | None = None  # JSON text
    error: str | None = None  # JSON text: {"name", "message", "stack"?}
    parent_id: str | None = None
    root_id: str | None = None
    options: str = "{}"  # JSON text: retry, max_duration, resources, ...
    tags: str = "[]"  # JSON text
    idempotency_key: str | None = None
    attempt: int = 0
    created_at: int = field(default_factory=now_ms)
    updated_at: int = field(default_factory=now_ms)
    started_at: int | None = None
    finished_at: int | None = None
    actor_name: str | None = None  # the Ray actor currently executing it
    metadata: str | None = None  # JSON text: an object, set by rayflow.metadata
    batch_id: str | None = None  # the batch trigger that created it
    loop_blocked_ms: int | None = None  # the longest it held its actor's event loop

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


@dataclass
class ChunkWrite:
    """One chunk to append. `data` is JSON text."""

    data: str
    writer_id: str | None = None
    writer_seq: int | None = None
    record_id: str | None = None


@dataclass
class Chunk:
    seq: int
    data: str  # JSON text
    created_at: int
    record_id: str | None = None


@dataclass
class StreamInfo:
    run_id: str
    key: str
    length: int  # number of chunks == next seq
    size_bytes: int
    closed: bool
    created_at: int
    updated_at: int


@dataclass
class AppendResult:
    """What `append_chunks` did with each write, in order.

    `seqs[i]` is the index given to write i, or None when it was a duplicate
    of an already stored (writer_id, writer_seq) and was dropped.
    """

    seqs: list[int | None]
    length: int  # stream length after the append
    #: `append_chunks_guarded` only: the Ray actor executing the run when the
    #: write committed (its row's `actor_name`), a hint for whom to tell
    actor_name: str | None = None


@dataclass
class Refused:
    """Why `append_chunks_guarded` stored nothing of one item: the run does
    not exist (`missing`), has finished (`finished`, with its `status`), or
    the stream is closed (`closed`). `duplicates`, per write of the item:
    it was already stored (a retried or replayed write, answered as such
    whatever else is refused; None: none was)."""

    reason: str
    status: str | None = None
    duplicates: list[bool] | None = None


@dataclass
class JournalEntry:
    seq: int
    kind: str  # "step", "once", "wait", "on", "child", "now", "random", ...
    name: str
    value: str  # JSON text


@dataclass
class InboxMessage:
    seq: int
    data: str  # JSON text
    created_at: int


@dataclass
class Waitpoint:
    run_id: str
    stream_id: str
    deadline: int | None  # ms; None = no timeout
    idempotency_key: str | None
    status: str  # a WaitpointStatus value
    inbox_seq: int | None  # the message that resolved it
    created_at: int = field(default_factory=now_ms)


@dataclass
class Claim:
    """What `claim_run` found: the run (None if unknown), whether this caller
    now executes it, and the resolved waitpoint it took off the run."""

    run: RunRecord | None
    claimed: bool
    waitpoint: Waitpoint | None = None


#: called with the ids of runs whose row (status, metadata, streams) changed,
#: after the change is committed; `rayflow._runtime.run_events` installs one
#: that pushes the ids to run subscriptions
RunChangeHook = Callable[[list[str]], None]
#: called with the paths of named streams that changed (data, closed,
#: created, deleted), after the commit, in the process that committed it,
#: and those of them that a reader elsewhere follows (`named_follow`): only
#: these need telling other processes
NamedChangeHook = Callable[[list[str], list[str]], None]


class Store(TokenAndSessionStore, NamedStreamStore, Protocol):
    url: str
    on_run_change: RunChangeHook | None
    on_named_change: NamedChangeHook | None

    def migrate(self) -> None:
        """Create or upgrade the schema to the current version (idempotent)."""

    def close(self) -> None: ...

    # -- tasks: the pickled task function, so any process can run it ---------
    def put_task(self, task_id: str, blob: bytes, defaults: str = "{}") -> None:
        """Store the pickled task and its default run options (JSON text)."""

    def get_task_defaults(self, task_id: str) -> str | None: ...
    def get_task(self, task_id: str) -> bytes | None: ...
    def list_task_ids(self) -> list[str]: ...

    # -- runs ----------------------------------------------------------------
    def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """Insert `run`; with an idempotency key already used for the same
        task, return the existing run instead. Returns (run, created)."""

    def get_run(self, run_id: str) -> RunRecord | None: ...
    def get_runs(self, run_ids: list[str]) -> list[RunRecord | None]:
        """`get_run` for many ids in one read, in the order given."""

    def update_run(self, run_id: str, **fields: object) -> None:
        """Set the given RunRecord fields; `updated_at` is set too."""

    def set_active_status(self, run_id: str, status: str, **fields: object) -> bool:
        """Set an active status (and fields) unless the run has finished;
        returns False, changing nothing, if it has."""

    def create_runs(self, runs: list[RunRecord]) -> list[tuple[RunRecord, bool]]:
        """`create_run` for many runs, in one transaction."""

    def claim_run(self, run_id: str, actor_name: str) -> Claim:
        """QUEUED -> EXECUTING on `actor_name` (attempt at least 1, started_at
        set once), in one transaction that also deletes and returns the run's
        resolved or timed-out waitpoint. Only one caller can claim a queued
        run: a second one (a relaunch racing an old launch) gets claimed=False."""

    def claim_runs(self, claims: list[tuple[str, str]]) -> list[Claim]:
        """`claim_run` for many (run id, actor name), in one transaction."""

    def suspend_run(self, wp: Waitpoint) -> bool:
        """EXECUTING -> WAITING (no actor) with its PENDING waitpoint, in one
        transaction (a wait on a session settles what the run took of it:
        `session_cursors`). False, changing nothing, when the run has finished."""

    def finish_run(self, run_id: str, status: str, output: str | None, error: str | None) -> bool:
        """Move an active run to a finished status; closes all its streams.
        Returns False (and changes nothing) when it had already finished."""

    def finish_runs(self, finishes: list[tuple[str, str, str | None, str | None]]) -> list[bool]:
        """`finish_run` for many (run id, status, output, error), in one transaction."""

    def list_runs(
        self,
        *,
        statuses: list[str] | None = None,
        task_id: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        before_created_at: int | None = None,
        tags: list[str] | None = None,
        batch_id: str | None = None,
        created_after: int | None = None,
        before_id: str | None = None,
    ) -> list[RunRecord]:
        """Newest first (by creation time, then id). `tags`: runs carrying
        every one of them. `before_created_at` with `before_id`: the runs
        after that one in this order (a page's cursor)."""

    def recoverable_runs(self, after_id: str | None, limit: int) -> list[RunRecord]:
        """One page of the runs a starting Controller must launch: QUEUED and
        EXECUTING runs, and WAITING runs whose waitpoint is no longer PENDING
        (resolved by a version that did not queue the run). Ordered by id;
        the next page starts after the last id of this one (`after_id`)."""

    # -- output streams ------------------------------------------------------
    def append_chunks(
        self, run_id: str, key: str, writes: list[ChunkWrite], max_bytes: int
    ) -> AppendResult:
        """Append atomically: assign the next indexes, drop writes whose
        (writer_id, writer_seq) is not above the writer's last stored seq,
        and raise StreamTooLargeError (storing none of `writes`) past
        `max_bytes`. Creates the stream on first use."""

    def append_chunks_many(
        self, items: list[tuple[str, str, list[ChunkWrite]]], max_bytes: int
    ) -> list[AppendResult]:
        """`append_chunks` for several (run id, key, writes) in one transaction:
        one commit (one fsync) for all; StreamTooLargeError stores none."""

    def append_chunks_own(
        self, items: list[tuple[str, str, list[ChunkWrite]]], max_bytes: int
    ) -> list[AppendResult | Refused]:
        """`append_chunks_many` for a run's own writes (its RunActor's group
        commit): an item whose stream is closed stores nothing and answers
        `Refused` (duplicates of stored writes answer their None seqs).
        `finish_run` closes the run's streams in its transaction, and the
        stream row is locked here, so no chunk lands after the run's end — a
        canceled run's last writes are refused, not committed after it. A
        stream this would create for a run that has finished refuses too
        (read in the same transaction: on PostgreSQL, unlike the stream
        rows, not ordered by a lock against a concurrent `finish_run`)."""

    def append_chunks_guarded(
        self, items: list[tuple[str, str, list[ChunkWrite]]], max_bytes: int
    ) -> list[AppendResult | Refused]:
        """`append_chunks_many` for a writer outside the run: in the same
        transaction, an item whose run does not exist or has finished, or
        whose stream is closed, stores nothing and answers `Refused` — but
        writes that are all duplicates of stored ones answer their None seqs
        (a retry after a lost answer). The run's row is locked (shared) first,
        so `finish_run` is either before a guarded append (refused) or after
        it (stored, then closed). A stored item's `AppendResult.actor_name`
        is the run row's, read in the same statement."""

    def read_chunks(self, run_id: str, key: str, start: int, limit: int) -> list[Chunk]:
        """Chunks with start <= seq, in order, at most `limit`; an index seek."""

    def stream_info(self, run_id: str, key: str) -> StreamInfo | None: ...
    def stream_infos(self, keys: list[tuple[str, str]]) -> list[StreamInfo | None]:
        """`stream_info` for many (run id, key) in one read, in the order given."""

    def list_streams(self, run_id: str) -> list[StreamInfo]: ...
    def list_streams_many(self, run_ids: list[str]) -> list[list[StreamInfo]]:
        """`list_streams` for many runs in one read, in the order given."""

    def close_stream(self, run_id: str, key: str) -> None: ...
    def writer_positions(self, run_id: str) -> dict[tuple[str, str], int]:
        """(key, writer_id) -> last stored writer_seq, for a reviving run."""

    def delete_expired(self, finished_before: int) -> int:
        """Delete streams, journals, inbox logs of runs that finished before
        the given time. Never touches an active run. Returns runs cleaned."""

    # -- journal (durable operations of a run, for replay) ------------------
    def journal_append(self, run_id: str, attempt: int, entries: list[JournalEntry]) -> None: ...
    def journal_load(self, run_id: str, attempt: int) -> list[JournalEntry]: ...
    def journal_load_many(self, keys: list[tuple[str, int]]) -> list[list[JournalEntry]]:
        """`journal_load` for many (run id, attempt) in one read, in the order given."""

    # -- input streams -------------------------------------------------------
    def inbox_append(
        self, run_id: str, stream_id: str, data: str, message_id: str | None = None
    ) -> InboxMessage:
        """Append a message to the run's log for `stream_id` (seq 0, 1, ...),
        atomically with checking that the run exists (RunNotFound) and
        has not finished (RunFinished). A `message_id` already stored
        for this run and stream returns the stored message instead (a
        retried send is not duplicated), whatever the run's status now:
        a retried send answers as the first one did."""

    def inbox_find(self, run_id: str, stream_id: str, message_id: str) -> InboxMessage | None:
        """The message stored with `message_id` on the run's input stream, if any."""

    def inbox_send(
        self, run_id: str, stream_id: str, data: str, message_id: str | None = None
    ) -> tuple[InboxMessage, bool]:
        """`inbox_append`, and in the same transaction: when the run waits on
        this stream (a PENDING waitpoint), resolve it with this message and
        queue the run. Returns (message, whether it woke the run)."""

    def inbox_send_many(
        self, sends: list[tuple[str, str, str, str | None]]
    ) -> list[tuple[InboxMessage, bool] | RunNotFound | RunFinished]:
        """`inbox_send` for many (run id, stream id, data, message id), in one
        transaction; a send to a missing or finished run gets its error in
        its place and stores nothing, the others are stored."""

    def inbox_read(
        self, run_id: str, stream_id: str, start: int, limit: int
    ) -> list[InboxMessage]: ...
    def inbox_streams(self, run_id: str) -> list[str]: ...
    def inbox_streams_many(self, run_ids: list[str]) -> list[list[str]]:
        """`inbox_streams` for many runs in one read, in the order given."""

    def inbox_usage(self, run_id: str) -> dict[str, tuple[int, int]]:
        """Per input stream of the run: (messages, characters of their JSON
        text), without reading them (quotas, counts for the dashboard)."""

    def put_waitpoint(self, wp: Waitpoint) -> None: ...
    def get_waitpoint(self, run_id: str) -> Waitpoint | None: ...
    def resolve_waitpoint(self, run_id: str, status: str, inbox_seq: int | None) -> bool:
        """PENDING -> status, and a WAITING run -> QUEUED, in one transaction;
        False when it was not pending (someone else won)."""

    def delete_waitpoint(self, run_id: str) -> None: ...
    def due_waitpoints(self, now: int) -> list[Waitpoint]: ...
    def pending_waitpoints(self) -> list[Waitpoint]: ...
