"""A bare Ray relay: the floor under rayflow's many-stream latency parts.

The same shape as `http_sse.py`'s 10- and 100-stream parts, with none of
rayflow's code and no Store: the benchmark's process calls `append` on one
async actor per run (`Relay`, standing in for a RunActor), and one async
actor standing in for the Serve replica (`Sink`) long-polls every relay —
one poll per stream (what rayflow did until session 4) or, `multiplexed`,
one poll per relay for all its streams and one append call per relay and
tick for all its streams. A chunk's latency is from the append call
to the sink holding it: two Ray crossings, no commit, no HTTP. When this
alone misses a goal at a rate, no design that carries a chunk across two
Ray actor boundaries meets it on this box.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

#: longest single long poll
POLL_S = 5.0


@ray.remote
class Relay:
    """One run's streams in memory; long polls wait for new items."""

    def __init__(self) -> None:
        self.items: dict[str, list[int]] = {}
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def append(self, key: str, sent_ns: int) -> int:
        items = self.items.setdefault(key, [])
        items.append(sent_ns)
        self._notify()
        return len(items) - 1

    async def append_many(self, sent: dict[str, int]) -> None:
        for key, sent_ns in sent.items():
            self.items.setdefault(key, []).append(sent_ns)
        self._notify()

    async def poll(self, starts: dict[str, int], wait_s: float) -> dict[str, list[int]]:
        """New items of the streams in `starts` (key -> next index); waits
        up to `wait_s` until one of them has any."""

        def new() -> dict[str, list[int]]:
            return {
                k: self.items.get(k, [])[s:]
                for k, s in starts.items()
                if len(self.items.get(k, [])) > s
            }

        out = new()
        if not out:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), wait_s)
            except asyncio.TimeoutError:
                return {}
            out = new()
        return out


@ray.remote
class Sink:
    """Stands in for the Serve replica: follows streams, records latencies."""

    def __init__(self) -> None:
        self.lat_ms: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = False

    async def _follow(self, relay: Any, keys: list[str]) -> None:
        starts = dict.fromkeys(keys, 0)
        while not self._stop:
            got = await relay.poll.remote(starts, POLL_S)
            now = time.time_ns()
            for key, items in got.items():
                starts[key] += len(items)
                self.lat_ms.extend((now - sent) / 1e6 for sent in items)

    async def follow(self, relays: list[Any], keys: list[str], multiplexed: bool) -> None:
        loop = asyncio.get_running_loop()
        for relay in relays:
            groups = [keys] if multiplexed else [[k] for k in keys]
            self._tasks += [loop.create_task(self._follow(relay, g)) for g in groups]

    async def collected(self, total: int, timeout_s: float) -> list[float]:
        deadline = time.monotonic() + timeout_s
        while len(self.lat_ms) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._stop = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.lat_ms


def relay_latency(
    runs: int, keys: int, rate: float, seconds: float, *, multiplexed: bool
) -> list[float]:
    """ms from append call to the sink, `runs` relays × `keys` streams ×
    `rate` chunks/s each, for `seconds` (Ray must be initialised)."""
    relays = [Relay.remote() for _ in range(runs)]  # type: ignore[attr-defined]
    sink = Sink.remote()  # type: ignore[attr-defined]
    ray.get([r.append.remote("warm", 0) for r in relays])
    names = [f"k{i}" for i in range(keys)]
    ray.get(sink.follow.remote(relays, names, multiplexed))
    n = int(rate * seconds)

    async def write() -> None:
        start = time.perf_counter()
        pending = []
        for i in range(n):
            for relay in relays:
                if multiplexed:
                    pending.append(relay.append_many.remote(dict.fromkeys(names, time.time_ns())))
                else:
                    for key in names:
                        pending.append(relay.append.remote(key, time.time_ns()))
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        await asyncio.gather(*pending)

    asyncio.run(write())
    lat: list[float] = ray.get(sink.collected.remote(n * runs * keys, 60))
    for actor in [*relays, sink]:
        ray.kill(actor)
    return lat
