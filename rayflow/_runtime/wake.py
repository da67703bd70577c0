"""A wake-up one task waits for, with a timeout, without `asyncio.wait_for`.

`asyncio.wait_for` wraps what it waits for in a task of its own and arms a
timer, per wait: a reader waiting for each token that way spent ~10 % of
its process's CPU there. And on Python 3.10/3.11 it swallows a cancellation
that arrives in the same loop step as its result: the reader's task goes
on as if never cancelled (a reader without an idle timeout then follows its
stream for ever). A `Wake` is one future per wait and one timer; a
cancellation always reaches the waiter.
"""

from __future__ import annotations

import asyncio


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Wake:
    """Set by anyone, awaited by one task at a time (`wait`)."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[bool] | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, timeout_s: float) -> bool:
        """Whether it was set (at once when it is), else False after `timeout_s`."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None
