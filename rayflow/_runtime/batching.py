"""Group commit for the control plane: many callers, one Store transaction
(or one query, for reads).

While one batch is being committed (in a thread), everything submitted
meanwhile queues and goes into the next batch, so a burst of N triggers or
launches costs a handful of transactions instead of N, and a lone caller
still commits at once (nothing waits for a timer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from rayflow._runtime.calls import shared_task

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


class GroupCommit(Generic[I, R]):
    def __init__(self, commit: Callable[[list[I]], list[R]], *, max_batch: int = 1000) -> None:
        """`commit(items)` runs in a thread and returns one result per item,
        in order; an exception fails every caller of that batch."""
        self._commit, self._max_batch = commit, max_batch
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        # one future, no `gather` (500 runs starting on an actor submit one each)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return await future

    async def submit_many(self, items: list[I]) -> list[R]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures, strict=True))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            self._pending = self._pending[self._max_batch :]
            try:
                results = await asyncio.to_thread(self._commit, [item for item, _ in batch])
            except Exception as e:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class CallGroup(Generic[I, R]):
    """Group commit for calls made from one event loop (a Ray call to the
    Controller): one call in flight at a time, carrying everything submitted
    meanwhile; a lone caller still calls at once.

    `call(items)` returns one outcome per item, in order: a value, or an
    exception that only that item's caller raises; an exception raised by
    `call` itself fails every caller of that batch."""

    def __init__(
        self,
        call: Callable[[list[I]], Awaitable[list[R | BaseException]]],
        *,
        max_batch: int = 1000,
    ) -> None:
        self._call, self._max_batch = call, max_batch
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return not self._pending and (self._runner is None or self._runner.done())

    async def submit(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._runner is None or self._runner.done():
            # in no caller's context: a Serve request that ends must not
            # cancel the call that carries the other callers' items
            self._runner = shared_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            self._pending = self._pending[self._max_batch :]
            try:
                outcomes = await self._call([item for item, _ in batch])
            except BaseException as e:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
