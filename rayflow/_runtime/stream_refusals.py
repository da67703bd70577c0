"""The errors a write to a run's stream gets when it is refused: the run
does not exist, has finished, or the stream is closed — one wording for the
RunActor's buffers, the outside writers (`run_appender`) and the HTTP API."""

from __future__ import annotations

from rayflow.errors import RayflowError, RunFinished, RunNotFound, StreamClosed
from rayflow.store.base import Refused


def finished_error(run_id: str, status: str, key: str | None = None) -> RunFinished:
    """What a write to a run that has finished raises."""
    return RunFinished(
        f"run {run_id} is {status}; its streams are closed and take no more chunks",
        run_id=run_id,
        stream=key,
        status=status,
    )


def refusal_error(run_id: str, key: str, refused: Refused) -> RayflowError:
    """What a write the Store refused (`Refused`) raises."""
    if refused.reason == "missing":
        return RunNotFound(f"run {run_id} does not exist", run_id=run_id, stream=key)
    if refused.reason == "finished":
        return finished_error(run_id, refused.status or "finished", key)
    return closed_error(run_id, key)


def closed_error(run_id: str, key: str) -> StreamClosed:
    """What a write to a closed stream raises."""
    return StreamClosed(
        f"stream {key!r} of run {run_id} is closed; it takes no more chunks",
        run_id=run_id,
        stream=key,
    )
