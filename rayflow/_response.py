"""The two-way response of every call that reaches the cluster.

Ray Serve's `DeploymentResponse` convention: `await` it in async code, or
call `.result(timeout_s=)` to block in a plain script. The work starts when
it is awaited or `.result()` is called, and errors are raised there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's rayflow I/O loop, on a daemon thread, for blocking callers."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="rayflow-io", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run `coro` on the background loop and block for its result."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    loop = background_loop()
    if running is loop:
        coro.close()
        raise RuntimeError("cannot block on a rayflow call from rayflow's own I/O loop")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
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
