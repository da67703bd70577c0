"""Every error a rayflow user can catch. One base class: `RayflowError`.

Each message says what happened, to which run or stream, and what to do.
The HTTP layer maps each class to one status code (`http_status`).
"""

from __future__ import annotations


class RayflowError(Exception):
    """Base class of every rayflow error."""

    http_status = 500


class NotInitialized(RayflowError):
    """`rayflow.init()` has not been called in this process."""

    http_status = 500


class ValidationError(RayflowError):
    """A payload, chunk or option failed its declared type."""

    http_status = 422


class PayloadTooLarge(RayflowError):
    """A payload is over its size limit (1 MiB for input-stream messages)."""

    http_status = 413


class StreamTooLarge(RayflowError):
    """An append would take an output stream past its size limit (300 MiB)."""

    http_status = 413


class RunNotFound(RayflowError):
    """No run with that id exists (or it was deleted by retention)."""

    http_status = 404


class TaskNotFound(RayflowError):
    """No task with that id is registered."""

    http_status = 404


class RunFinished(RayflowError):
    """The run has finished; it takes no more input or output."""

    http_status = 400


class RunFailed(RayflowError):
    """A child run awaited with `trigger_and_wait` ended without success."""

    http_status = 500

    def __init__(self, message: str, *, run_id: str, status: str, error: object = None) -> None:
        super().__init__(message)
        self.run_id, self.status, self.error = run_id, status, error

    def __reduce__(self) -> tuple[object, ...]:
        return (_run_failed, (str(self), self.run_id, self.status, self.error))


def _run_failed(message: str, run_id: str, status: str, error: object) -> RunFailed:
    return RunFailed(message, run_id=run_id, status=status, error=error)


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


__all__ = [
    "Canceled",
    "Forbidden",
    "IdempotencyConflict",
    "NonDeterminism",
    "NotInitialized",
    "OutsideTask",
    "PayloadTooLarge",
    "RayflowError",
    "RunFailed",
    "RunFinished",
    "RunNotFound",
    "StreamClosed",
    "StreamTooLarge",
    "TaskNotFound",
    "TooManyRequests",
    "Unauthorized",
    "ValidationError",
    "WaitTimeout",
]
