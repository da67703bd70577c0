"""What a user gets back from rayflow: `RunHandle` (a triggered run),
`Result` (the outcome of a wait, a once or a child run), `RunInfo` (the
current run) and `RetryPolicy` (how a task retries). Plain values with no
behaviour beyond `Result.unwrap`; re-exported by `rayflow` and `rayflow.task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from rayflow.errors import RayflowError, WaitTimeout

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt is retried: up to `max_attempts` attempts in all,
    waiting min_delay_s * factor**(n-1) (capped at max_delay_s) between them.
    Each attempt runs the task from the top with a fresh journal."""

    max_attempts: int = 3
    min_delay_s: float = 1.0
    max_delay_s: float = 30.0
    factor: float = 2.0


@dataclass(frozen=True)
class RunHandle:
    """A triggered run: its id, and a public access token for frontends
    (read its streams, write its input streams)."""

    id: str
    public_access_token: str
    task_id: str = ""
    is_cached: bool = False


@dataclass
class Result(Generic[T]):
    """The outcome of a wait, a once or a child run: `ok` and `output`, or `error`.

    `unwrap()` returns the output or raises the error (`WaitTimeout` for a
    timed-out wait, `RunFailed` for a child run that did not complete).
    """

    ok: bool
    output: T | None = None
    error: RayflowError | None = None

    def unwrap(self) -> T:
        if not self.ok:
            raise self.error or WaitTimeout("no result")
        return self.output  # type: ignore[return-value]


@dataclass(frozen=True)
class RunInfo:
    """The run the calling code executes in (`rayflow.context()`)."""

    id: str
    task_id: str
    attempt: int
    parent_id: str | None
    root_id: str
    #: True while the run re-executes journaled operations after a revival
    replaying: bool
