"""Group commit for the control plane: many callers, one Store transaction
(or one query, for reads).

While one batch is being committed (in a thread), everything submitted
meanwhile queues and goes into the next batch, so a burst of N triggers or
launches costs a handful of transactions instead of N, and a lone caller
still commits at once (nothing waits for a timer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

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
        return (await self.submit_many([item]))[0]

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
