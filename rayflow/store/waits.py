"""The Store's records and methods for wait tokens and sessions (the
`Store` protocol in `store/base.py` includes them). Kept apart from the run
and stream records because they concern no run's own data: a token or a
session outlives the runs that wait on it or serve it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rayflow.store.base import RunRecord


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


#: the `stream_id` of the waitpoint of a run waiting on wait token `id`
TOKEN_WAIT_PREFIX = "token:"


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
        status: str | None = None,
        before: tuple[int, str] | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        """Newest first; `status` ACTIVE, CLOSED or EXPIRED; `tags`: every one."""

    def update_session(
        self, session_id: str, *, tags: list[str] | None = None, metadata: str | None = None
    ) -> SessionRecord | None:
        """Replace the tags and/or metadata; None when unknown."""

    def close_session(self, session_id: str, reason: str | None) -> SessionRecord | None:
        """Close it (idempotent: the first close's time and reason stand)."""

    def continue_session(self, session_id: str, run: RunRecord) -> tuple[SessionRecord, bool]:
        """When the session's current run has finished (or it has none),
        create `run` and make it current, in one transaction; (session,
        whether `run` was created). Raises SessionNotFound, SessionClosed."""

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
