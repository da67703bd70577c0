"""Ray calls with rayflow's own errors: a RayflowError raised in an actor
reaches the caller as itself, not wrapped in Ray's remote traceback."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import ray

from rayflow.errors import RayflowError

T = TypeVar("T")


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


def shared_task(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task on the running loop whose Ray calls belong to no request.

    A task copies the context it is created in, and Ray takes a call's
    parent task from it: in a Serve replica a task created while serving an
    HTTP request has that request as the parent of every Ray call it makes,
    and Ray cancels them all when the request ends (the client went away).
    A task that serves many requests (one long poll for every reader of a
    run, the run change feed) is created in an empty context instead.
    """
    loop = asyncio.get_running_loop()
    return contextvars.Context().run(loop.create_task, coro)


class PerProcess(Generic[T]):
    """`make()` once per process, on first use from any thread: for what
    serves every event loop of the process, e.g. a daemon thread of its own
    (`commit_thread()`, `telling()`). Call it to get the one instance."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._made: T | None = None
        self._lock = threading.Lock()

    def __call__(self) -> T:
        with self._lock:
            if self._made is None:
                self._made = self._make()
            return self._made
