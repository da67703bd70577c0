"""Ray calls with rayflow's own errors: a RayflowError raised in an actor
reaches the caller as itself, not wrapped in Ray's remote traceback."""

from __future__ import annotations

from typing import Any

import ray

from rayflow.errors import RayflowError


class RunMoved(RayflowError):
    """A RunActor was asked about a run it does not execute (the run
    suspended, finished or moved; the actor may serve another run now).
    Internal: callers look the run up again and never show this to a user."""


async def call(ref: Any) -> Any:
    try:
        return await ref
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if isinstance(cause, RayflowError):
            raise cause from None
        raise
