"""Every error a rayflow user can catch. One base class: `RayflowError`.

    RayflowError                     (http_status)
    ├── NotInitialized               500  call rayflow.init() first
    ├── InvalidArgument (ValueError) 400  an argument rayflow cannot use
    │   └── NoParentRun                   target="parent" in a run without one
    ├── ValidationError              422  a payload or chunk failed its declared type
    ├── PayloadTooLarge              413  an input message over max_input_bytes
    ├── StreamTooLarge               413  an append past max_stream_bytes
    ├── RunNotFound / TaskNotFound   404
    ├── WaitTokenNotFound            404  no wait token with that id
    ├── SessionNotFound              404  no session with that id or external id
    ├── SessionClosed                409  a closed or expired session
    ├── RunFinished                  400  input or output for a finished run
    ├── StreamClosed                 409  a write to a closed output stream
    ├── RunFailed                    500  a child run awaited with trigger_and_wait failed
    ├── WaitTimeout                  408  Result.unwrap() after a timeout
    ├── OutsideTask                  400  a task-only operation outside a task
    ├── NonDeterminism               500  a replay met a different operation
    ├── Unauthorized / Forbidden     401 / 403
    ├── Canceled                     409  raised inside a task that was canceled
    ├── IdempotencyConflict          409  a reused idempotency key, another payload
    ├── TooManyRequests              429  a per-run quota is used up
    └── Unavailable (ConnectionError) 503 a part of rayflow could not be reached

Each message says what happened, to which run or stream, and what to do;
`run_id` and `stream` carry the run and the stream key (or input stream id)
where there is one. The HTTP layer maps each class to one status code
(`http_status`, in `serve/errors.py`); docs/wire.md lists them.
"""

from __future__ import annotations

from typing import Any


class RayflowError(Exception):
    """Base class of every rayflow error. `run_id` and `stream` name the run
    and the stream key (or input stream id) concerned, when there is one."""

    http_status = 500
    #: the run concerned, if any
    run_id: str | None = None
    #: the output stream key or input stream id concerned, if any
    stream: str | None = None

    def __init__(
        self, message: str = "", *, run_id: str | None = None, stream: str | None = None
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.stream = stream

    def __reduce__(self) -> tuple[Any, ...]:
        # errors cross Ray calls pickled: keep the attributes, not only the message
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type[RayflowError], message: str, state: dict[str, Any]) -> RayflowError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class NotInitialized(RayflowError):
    """`rayflow.init()` has not been called in this process."""

    http_status = 500


class InvalidArgument(RayflowError, ValueError):
    """An argument rayflow cannot use (a duration, a start index, lists of
    different lengths). Also a `ValueError`."""

    http_status = 400


class NoParentRun(InvalidArgument):
    """`target="parent"` inside a run that has no parent run."""


class ValidationError(RayflowError):
    """A payload, chunk or option failed its declared type."""

    http_status = 422


class PayloadTooLarge(RayflowError):
    """A payload is over its size limit (1 MiB for input-stream messages)."""

    http_status = 413


class StreamTooLarge(RayflowError):
    """An append would take an output stream past its size limit (300 MiB);
    nothing of that write was stored. `size` is what it would have grown to,
    `limit` the limit, in bytes."""

    http_status = 413

    def __init__(
        self,
        message: str = "",
        *,
        run_id: str | None = None,
        stream: str | None = None,
        size: int | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, stream=stream)
        self.size, self.limit = size, limit


class RunNotFound(RayflowError):
    """No run with that id exists (or it was deleted by retention)."""

    http_status = 404


class TaskNotFound(RayflowError):
    """No task with that id is registered."""

    http_status = 404


class WaitTokenNotFound(RayflowError):
    """No wait token with that id exists (or it was deleted by retention)."""

    http_status = 404


class SessionNotFound(RayflowError):
    """No session with that id or external id exists."""

    http_status = 404


class SessionClosed(RayflowError):
    """The session was closed or has expired: it takes no more records and
    starts no more runs. Start a new session (another external id)."""

    http_status = 409


class RunFinished(RayflowError):
    """The run has finished; it takes no more input or output. `status` says
    how it finished (when known)."""

    http_status = 400

    def __init__(
        self,
        message: str = "",
        *,
        run_id: str | None = None,
        stream: str | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, stream=stream)
        self.status = status


class RunFailed(RayflowError):
    """A child run awaited with `trigger_and_wait` ended without success."""

    http_status = 500

    def __init__(
        self, message: str = "", *, run_id: str, status: str, error: object = None
    ) -> None:
        super().__init__(message, run_id=run_id)
        self.status, self.error = status, error


class WaitTimeout(RayflowError):
    """`Result.unwrap()` on a wait or once that timed out."""

    http_status = 408


class OutsideTask(RayflowError):
    """A task-only operation (step, `.on()`, `.wait()`, target="self") was
    used outside a running task."""

    http_status = 400


class NonDeterminism(RayflowError):
    """On replay, the task did something different from what its journal
    recorded: code between durable operations is not deterministic."""

    http_status = 500


class Unauthorized(RayflowError):
    """A missing, malformed, expired or wrongly signed key or token."""

    http_status = 401


class Forbidden(RayflowError):
    """A valid token whose scopes do not allow this operation."""

    http_status = 403


class Canceled(RayflowError):
    """Raised inside a task when its run has been canceled."""

    http_status = 409


class IdempotencyConflict(RayflowError):
    """An idempotency key already used for a run of this task with a
    different payload: the caller is not retrying the same trigger."""

    http_status = 409


class StreamClosed(RayflowError):
    """A write to an output stream that was closed: it takes no more chunks."""

    http_status = 409


class TooManyRequests(RayflowError):
    """A per-run quota is used up (e.g. the messages of its input streams)."""

    http_status = 429


class Unavailable(RayflowError, ConnectionError):
    """A part of rayflow (an Inbox actor, the database, the HTTP API) could not
    be reached after retries. Also a `ConnectionError`; retrying later is safe
    where the message says the operation is idempotent."""

    http_status = 503


__all__ = [
    "Canceled",
    "Forbidden",
    "IdempotencyConflict",
    "InvalidArgument",
    "NoParentRun",
    "NonDeterminism",
    "NotInitialized",
    "OutsideTask",
    "PayloadTooLarge",
    "RayflowError",
    "RunFailed",
    "RunFinished",
    "RunNotFound",
    "SessionClosed",
    "SessionNotFound",
    "StreamClosed",
    "StreamTooLarge",
    "TaskNotFound",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "WaitTimeout",
    "WaitTokenNotFound",
]
