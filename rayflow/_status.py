"""Run and waitpoint statuses: the one place they are spelled.

A run goes QUEUED -> EXECUTING <-> WAITING (-> QUEUED when revived) and ends
in one of the finished statuses; a finished run never changes again. The
values are the strings stored in the Store and sent over HTTP (the subset of
Trigger.dev's API statuses that applies), so a `RunStatus` compares equal to
its string and formats as it.
"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    """Where a run is in its life."""

    #: waiting for a RunActor (new, past `max_live_runs`, or revived)
    QUEUED = "QUEUED"
    #: its function runs on a RunActor
    EXECUTING = "EXECUTING"
    #: suspended in `.wait()`: no actor, no process
    WAITING = "WAITING"
    #: the function returned
    COMPLETED = "COMPLETED"
    #: the function raised (after its retries)
    FAILED = "FAILED"
    #: canceled (`runs.cancel`, or its parent was)
    CANCELED = "CANCELED"
    #: lost its actor more often than it may be resumed
    CRASHED = "CRASHED"
    #: exceeded `max_duration`
    TIMED_OUT = "TIMED_OUT"

    def __str__(self) -> str:
        # f"{status}" and str(status) give the bare value, as stored and sent
        return self.value

    @property
    def is_finished(self) -> bool:
        """Whether the run has ended, in any way."""
        return self.value in FINISHED_STATUSES


class WaitpointStatus(str, Enum):
    """Where a suspended `.wait()` is: the `waitpoints.status` column."""

    #: the run waits for a message on the stream or the deadline
    PENDING = "PENDING"
    #: a message arrived (`inbox_seq` says which)
    RESOLVED = "RESOLVED"
    #: the deadline passed first
    TIMED_OUT = "TIMED_OUT"

    def __str__(self) -> str:
        return self.value


class WaitTokenStatus(str, Enum):
    """Where a wait token is (`rayflow.wait.create_token`); Trigger.dev's
    waitpoint token statuses. A token leaves WAITING once, and never again."""

    #: not completed yet; runs waiting on it are suspended
    WAITING = "WAITING"
    #: completed with data (the first completion; later ones change nothing)
    COMPLETED = "COMPLETED"
    #: its timeout passed before anyone completed it
    TIMED_OUT = "TIMED_OUT"

    def __str__(self) -> str:
        return self.value


#: a run in one of these may still change (values as stored)
ACTIVE_STATUSES: tuple[str, ...] = (
    RunStatus.QUEUED.value,
    RunStatus.EXECUTING.value,
    RunStatus.WAITING.value,
)
#: a run in one of these has ended and never changes again
FINISHED_STATUSES: tuple[str, ...] = (
    RunStatus.COMPLETED.value,
    RunStatus.FAILED.value,
    RunStatus.CANCELED.value,
    RunStatus.CRASHED.value,
    RunStatus.TIMED_OUT.value,
)
#: the finished statuses that count as a failure (Trigger.dev's `isFailed`)
FAILED_STATUSES: tuple[str, ...] = (
    RunStatus.FAILED.value,
    RunStatus.CRASHED.value,
    RunStatus.TIMED_OUT.value,
)
