"""Ray calls with rayflow's own errors: a RayflowError raised in an actor
reaches the caller as itself, not wrapped in Ray's remote traceback."""

from __future__ import annotations

from typing import Any

import ray

from rayflow.errors import RayflowError


async def call(ref: Any) -> Any:
    try:
        return await ref
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if isinstance(cause, RayflowError):
            raise cause from None
        raise
