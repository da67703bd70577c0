"""Writers outside a run in processes of their own (Ray actors): each has its
own event loop, ProcessAppender and tellers, as a Serve replica or another
driver has. Pickled by value: Ray's workers cannot import the tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import ray
from ray import cloudpickle

from rayflow._config import Settings

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0, max_restarts=0)
class OutsideWriter:
    """Appends to streams of runs it does not execute; answers what was
    acknowledged, in order per call."""

    def __init__(self, settings_json: str) -> None:
        from rayflow._runtime import connection

        connection.connect(Settings.model_validate_json(settings_json))

    def pid(self) -> int:
        return os.getpid()

    async def append(
        self,
        run_id: str,
        key: str,
        values: list[str],
        *,
        coroutines: int = 1,
        pause_s: float = 0,
        burst: int = 1,
    ) -> tuple[list[str], list[str]]:
        """`values` spread over `coroutines` appenders (round robin), each in
        order, pausing `pause_s` after every `burst` appends: (the acknowledged
        ones, the errors; an error ends its appender)."""
        from rayflow import streams

        acknowledged: list[str] = []
        errors: list[str] = []

        async def one(mine: list[str]) -> None:
            for i, value in enumerate(mine):
                try:
                    await streams.append(key, value, target=run_id)
                except Exception as e:
                    errors.append(f"{value}: {e!r}")
                    return
                acknowledged.append(value)
                if pause_s and i % burst == burst - 1:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(one(values[c::coroutines]) for c in range(coroutines)))
        return acknowledged, errors

    def controller_locates(self) -> int:
        """Calls this process made to the Controller to locate runs (`locations`)."""
        from rayflow._runtime import locations

        return locations.locate_calls

    def pushed_frames(self) -> int:
        """Frames this process pushed straight to readers' inboxes (`push_outbox`)."""
        from rayflow._runtime import push_outbox

        return push_outbox.frames


@contextlib.contextmanager
def outside_writers(settings: Any, n: int) -> Iterator[list[Any]]:
    """`n` writer processes connected to the deployment of `settings`,
    ended when the block is left."""
    writers = [OutsideWriter.remote(settings.model_dump_json()) for _ in range(n)]  # type: ignore[attr-defined]
    try:
        ray.get([w.pid.remote() for w in writers])
        yield writers
    finally:
        for w in writers:
            ray.kill(w)
