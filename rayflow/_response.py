"""The two-way response of every call that reaches the cluster.

Ray Serve's `DeploymentResponse` convention: `await` it in async code, or
call `.result(timeout_s=)` to block in a plain script. The work starts when
it is awaited or `.result()` is called, and errors are raised there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

T = TypeVar("T")

_portal: BlockingPortal | None = None
#: kept so the portal is never garbage-collected (its exit would stop the loop)
_portal_cm: AbstractContextManager[BlockingPortal] | None = None
_portal_lock = threading.Lock()
#: the portal's event loop (see `io_loop`)
_portal_loop: asyncio.AbstractEventLoop | None = None


class _ProcessExit(Exception):
    """Thrown into the portal at exit, so its remaining tasks are cancelled."""


def _stop_portal() -> None:
    """Stop the portal while its thread still runs. Left to the interpreter's
    finalisation, the portal's exit waits on a loop whose daemon thread is
    already frozen, and the process never exits."""
    global _portal, _portal_cm, _portal_loop
    with _portal_lock:
        cm, _portal, _portal_cm, _portal_loop = _portal_cm, None, None, None
    if cm is None:
        return

    def stop() -> None:
        with contextlib.suppress(_ProcessExit, RuntimeError):
            cm.__exit__(_ProcessExit, _ProcessExit(), None)

    # bounded: a task the loop cannot cancel must not hold the exit either
    stopper = threading.Thread(target=stop, name="rayflow-io-stop", daemon=True)
    stopper.start()
    stopper.join(5)


def portal() -> BlockingPortal:
    """The process's rayflow I/O loop (an anyio blocking portal on a daemon
    thread), for blocking callers. One for the life of the process: readers
    and writers created through it stay bound to its loop."""
    global _portal, _portal_cm, _portal_loop
    with _portal_lock:
        if _portal is None:
            _portal_cm = start_blocking_portal(name="rayflow-io")
            _portal = _portal_cm.__enter__()
            _portal_loop = _portal.call(_running_loop)
            atexit.register(_stop_portal)
        return _portal


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def on_io_loop() -> bool:
    """Whether the caller runs on the process's rayflow I/O loop (long-lived:
    what it sets up, e.g. a listener, lasts as long as the process)."""
    try:
        return _portal_loop is not None and asyncio.get_running_loop() is _portal_loop
    except RuntimeError:
        return False


async def _await(coro: Coroutine[Any, Any, T]) -> T:
    return await coro


def run_sync(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run `coro` on the I/O loop and block for its result; on TimeoutError
    the coroutine is cancelled."""
    try:
        future: Future[T] = portal().start_task_soon(_await, coro)
    except RuntimeError:  # called from the portal's own loop: it would deadlock
        coro.close()
        raise RuntimeError("cannot block on a rayflow call from rayflow's own I/O loop") from None
    try:
        return future.result(timeout_s)
    except TimeoutError:
        future.cancel()
        raise


class Response(Generic[T]):
    """A pending result: `await response` or `response.result(timeout_s=...)`."""

    __slots__ = ("_factory",)

    def __init__(self, factory: Callable[[], Awaitable[T]]) -> None:
        self._factory = factory

    def __await__(self) -> Generator[Any, None, T]:
        return self._factory().__await__()

    def result(self, timeout_s: float | None = None) -> T:
        """Block until the call completes; raises its error, or TimeoutError."""

        async def call() -> T:
            return await self._factory()

        return run_sync(call(), timeout_s)
