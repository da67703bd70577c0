"""The Store's records and methods for wait tokens and sessions (the
`Store` protocol in `store/base.py` includes them). Kept apart from the run
and stream records because they concern no run's own data: a token or a
session outlives the runs that wait on it or serve it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rayflow.store.base import JournalEntry, RunRecord
    from rayflow.store.named import NamedWrite, NamedWriteResult


@dataclass
class WaitTokenRecord:
    """A wait token (`rayflow.wait`): runs suspend on it until it is
    completed or times out. Times in ms; `output` is JSON text."""

    id: str
    status: str  # a WaitTokenStatus value
    output: str | None
    output_is_error: bool
    timeout_at: int | None
    idempotency_key: str | None
    idempotency_key_expires_at: int | None
    tags: list[str]
    created_at: int
    completed_at: int | None = None


@dataclass
class SessionRecord:
    """A session: its identity, the task and trigger config every run of it
    gets, the run currently serving it, and whether it was closed. Times in
    ms; `trigger_config` and `metadata` are JSON text."""

    id: str
    external_id: str | None
    type: str
    task_id: str
    trigger_config: str
    current_run_id: str | None
    tags: list[str]
    metadata: str | None
    closed_at: int | None
    closed_reason: str | None
    expires_at: int | None
    created_at: int
    updated_at: int

    def closed_or_expired(self, now: int) -> bool:
        expired = self.expires_at is not None and self.expires_at <= now
        return self.closed_at is not None or expired


@dataclass
class SessionSend:
    """What `Store.session_send` did: the write's outcome (nothing else
    happened unless it is OK), the record's seq, and the run it woke (queued)
    or created (a continuation, now the session's current run)."""

    result: NamedWriteResult
    seq: int | None = None
    woke: str | None = None
    continued: str | None = None
    #: the session's current run after the send (as the transaction saw it)
    run_id: str | None = None
    #: a send retried with a key already stored: nothing new was stored
    duplicate: bool = False


#: the `stream_id` of the waitpoint of a run waiting on wait token `id`
TOKEN_WAIT_PREFIX = "token:"
#: the `stream_id` of the waitpoint of a run waiting on its session's `.in`
SESSION_WAIT_PREFIX = "session:"


class TokenAndSessionStore(Protocol):
    # -- sessions --------------------------------------------------------------
    def start_session(
        self, session: SessionRecord, first_run: RunRecord
    ) -> tuple[SessionRecord, bool]:
        """Create the session and its first run (QUEUED) in one transaction,
        or — when a session holds `session.external_id` — return that one
        (its tags, metadata and trigger config updated to these) and create
        no run; (session, whether it was created). Concurrent starts with one
        external id converge on one session and one run. Raises
        SessionClosed when the session with that external id is closed or
        expired."""

    def get_session(self, id_or_external_id: str) -> SessionRecord | None:
        """By id when it starts with `session_`, else by external id."""

    def list_sessions(
        self,
        *,
        types: list[str] | None = None,
        task_ids: list[str] | None = None,
        tags: list[str] | None = None,
        external_id: str | None = None,
        statuses: list[str] | None = None,
        created_from: int | None = None,
        created_to: int | None = None,
        before: tuple[int, str] | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        """Newest first, at most `limit` matches after the cursor `before`
        (created_at, id); `statuses`: any of ACTIVE, CLOSED, EXPIRED; `tags`:
        every one; `created_from`/`created_to`: ms, inclusive."""

    def update_session(
        self, session_id: str, *, tags: list[str] | None = None, metadata: str | None = None
    ) -> SessionRecord | None:
        """Replace the tags and/or metadata; None when unknown."""

    def close_session(self, session_id: str, reason: str | None) -> SessionRecord | None:
        """Close it (idempotent: the first close's time and reason stand)."""

    def session_send(
        self,
        session_id: str,
        write: NamedWrite,
        max_bytes: int,
        *,
        wakes: bool,
        next_run: Callable[[SessionRecord], RunRecord] | None,
        send_key: str | None = None,
        ttl_s: int | None = None,
        send_key_window_ms: int | None = None,
    ) -> SessionSend:
        """Append `write` (to one of the session's streams, created with
        `ttl_s` when missing) under the session row's lock; when it is stored
        and `wakes`: queue the current run if it waits on the session
        (`SESSION_WAIT_PREFIX`), or — when it has ended — insert
        `next_run(session)` and make it current. One transaction: two sends
        continue a session once. A `send_key` seen on that stream within
        `send_key_window_ms` stores nothing (`duplicate`, the first seq).
        Raises SessionNotFound, SessionClosed."""

    def session_consume(
        self,
        run_id: str,
        attempt: int,
        entry: JournalEntry | None,
        session_id: str,
        path: str,
        next_seq: int,
        settled_seq: int | None = None,
    ) -> None:
        """Journal `entry` (if any) and move the session's cursor on `path` to
        `next_seq` (never back) in one transaction, and its settled cursor
        to `settled_seq` when given (the run has finished with the records
        before it; never back). Raises InvalidArgument when `run_id` is not
        the session's current run. A continuation after a run that did not
        return starts again at the settled cursor (`session_send`)."""

    def session_swap(
        self, session_id: str, calling_run_id: str, next_run: Callable[[SessionRecord], RunRecord]
    ) -> tuple[str | None, bool]:
        """When `calling_run_id` is the session's current run: insert
        `next_run(session)` and make it current (the caller ends); (the
        session's current run after, whether it was swapped). Raises
        SessionNotFound, SessionClosed."""

    def session_settle(self, run_id: str, session_id: str, path: str, settled_seq: int) -> bool:
        """The run has finished with the records of `path` before
        `settled_seq` (a chat turn answered them): move the settled and the
        consumed cursor there (never back). Nothing (False) when `run_id` is
        not the session's current run."""

    def session_cursor(self, session_id: str, path: str) -> int:
        """The next seq of `path` no run of the session has consumed."""

    def settle_session_wait(self, run_id: str, session_id: str) -> bool:
        """After the run suspended on its session's `.in` (`suspend_run`
        settled what it took): when a record past the cursor is there
        already (or the session was closed), resolve its waitpoint and
        queue it; True when this call queued it."""

    def delete_expired_sessions(self, ended_before: int, keys_before: int) -> int:
        """Retention: delete the sessions closed (or expired) before
        `ended_before` whose current run has finished (or is gone), with
        their `.in` and `.out`, cursors and send keys (side channels expire
        by their own TTL), and every send key stored before `keys_before`;
        and of open sessions the input records stored before `ended_before`
        that runs which have ended took and finished with (the current run's
        replay keeps what it took); how many sessions."""

    # -- wait tokens -----------------------------------------------------------
    def create_wait_token(self, token: WaitTokenRecord) -> tuple[WaitTokenRecord, bool]:
        """Store `token`, or return the token already holding its unexpired
        idempotency key; (token, whether it was created). Concurrent creations
        with one key converge on one token."""

    def get_wait_token(self, token_id: str) -> WaitTokenRecord | None: ...
    def list_wait_tokens(
        self,
        *,
        statuses: list[str] | None = None,
        tags: list[str] | None = None,
        idempotency_key: str | None = None,
        created_from: int | None = None,
        created_to: int | None = None,
        before: tuple[int, str] | None = None,
        limit: int = 100,
    ) -> list[WaitTokenRecord]:
        """Newest first; `before` = (created_at, id) of the last one seen."""

    def complete_wait_token(
        self, token_id: str, output: str | None, is_error: bool = False
    ) -> tuple[WaitTokenRecord | None, list[str]]:
        """WAITING -> COMPLETED with `output` (or TIMED_OUT when `is_error`;
        `output` None: the standard timeout message),
        and every run waiting on it -> QUEUED, in one transaction; a token
        that already left WAITING keeps its first outcome. Returns the token
        as stored (None if unknown) and the runs it woke."""

    def settle_token_wait(self, run_id: str, token_id: str) -> bool:
        """After the run suspended on the token: when the token had left
        WAITING already (its completion woke nobody), resolve the run's
        waitpoint and queue the run; True when this call queued it."""

    def expire_wait_tokens(self, now: int) -> list[str]:
        """Time out every WAITING token whose timeout passed, waking the runs
        that wait on them; returns those runs."""
