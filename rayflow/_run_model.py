"""`Run`: a run as a user sees it (`runs.retrieve`, the HTTP client).

No Ray here: the HTTP client (`rayflow.client`, the `rayflow-client`
distribution) imports it without the runtime.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from rayflow._status import FAILED_STATUSES, RunStatus

if TYPE_CHECKING:
    from rayflow.store.base import RunRecord


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class Run(BaseModel):
    """A run as a user sees it."""

    #: its validator is built on first use, not at import
    model_config = ConfigDict(defer_build=True)

    id: str
    task_id: str
    status: RunStatus
    payload: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    tags: list[str] = []
    #: what the task set with `rayflow.metadata` (or was triggered with)
    metadata: dict[str, Any] = {}
    #: the batch trigger that created the run, if any
    batch_id: str | None = None
    #: the longest the run's code held its RunActor's event loop (ms), when
    #: past `loop_lag_s`: every run sharing that actor waited (None: never)
    loop_blocked_ms: int | None = None
    attempt_count: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def is_queued(self) -> bool:
        return self.status == RunStatus.QUEUED

    @property
    def is_executing(self) -> bool:
        return self.status == RunStatus.EXECUTING

    @property
    def is_waiting(self) -> bool:
        return self.status == RunStatus.WAITING

    @property
    def is_finished(self) -> bool:
        """Whether the run has ended, in any way (it never changes again)."""
        return self.status.is_finished

    @property
    def is_completed(self) -> bool:
        """Whether the run ran to an end: succeeded or failed (Trigger.dev's
        `isCompleted`). A canceled run is finished but not completed: wait for
        `is_finished` to cover every end."""
        return self.status == RunStatus.COMPLETED or self.status in FAILED_STATUSES

    @property
    def is_success(self) -> bool:
        return self.status == RunStatus.COMPLETED

    @property
    def is_failed(self) -> bool:
        """FAILED, CRASHED or TIMED_OUT."""
        return self.status in FAILED_STATUSES

    @property
    def is_canceled(self) -> bool:
        return self.status == RunStatus.CANCELED

    @classmethod
    def from_record(cls, r: RunRecord) -> Run:
        return cls(
            id=r.id,
            task_id=r.task_id,
            status=RunStatus(r.status),
            payload=json.loads(r.payload),
            output=json.loads(r.output) if r.output is not None else None,
            error=json.loads(r.error) if r.error is not None else None,
            tags=json.loads(r.tags),
            metadata=run_metadata(r) or {},
            batch_id=r.batch_id,
            loop_blocked_ms=r.loop_blocked_ms,
            attempt_count=r.attempt,
            parent_id=r.parent_id,
            root_id=r.root_id,
            created_at=datetime.fromtimestamp(r.created_at / 1000, tz=timezone.utc),
            updated_at=datetime.fromtimestamp(r.updated_at / 1000, tz=timezone.utc),
            started_at=_time(r.started_at),
            finished_at=_time(r.finished_at),
        )


def run_metadata(r: RunRecord) -> dict[str, Any] | None:
    """The run's metadata: what its task last wrote, else what it was
    triggered with, else None."""
    if r.metadata is not None:
        value = json.loads(r.metadata)
        return value if isinstance(value, dict) else None
    given = json.loads(r.options).get("metadata")
    return given if isinstance(given, dict) else None
