"""CPU an outside writer spends per chunk, and how the cyclic collector weighs on it.

    .venv/bin/python benchmarks/writer_cpu.py [--chunks 20000] [--reps 3]

A task holds its run open; this process writes `--chunks` chunks of 64 B
into a new stream of it per rep through `streams.writer(..., target=)` —
the path of every writer outside the run (rayflow/_runtime/run_appender.py:
the commit happens in this process) — and prints chunks/s and this
process's CPU per chunk (all its threads), three ways in one run: the
collector as rayflow leaves it (`gc.freeze()` when the process connects),
as Python has it (`gc.unfreeze()`), and off (`gc.disable()`, the floor).
"""

from __future__ import annotations

import os

# docs/scaling.md: Ray reads this when it is imported, so it must be set before
# `import ray` (and before rayflow, which imports Ray): Ray stays on 127.0.0.1
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import rayflow  # noqa: E402
from rayflow import streams, task  # noqa: E402

go = streams.input("writer-cpu-go", dict)


@task(id="writer-cpu-hold")
async def hold(payload: dict) -> str:  # type: ignore[type-arg]
    await go.once(timeout_s=600)
    return "done"


def chunk(seq: int) -> str:
    return f"{seq:08d} {time.time_ns()}".ljust(64)


async def write(run_id: str, key: str, n: int) -> tuple[float, float]:
    """(chunks/s, µs of this process's CPU per chunk) for n chunks."""
    t0, c0 = time.perf_counter(), time.process_time()
    async with streams.writer(key, target=run_id) as w:
        for start in range(0, n, 100):
            for s in range(start, min(n, start + 100)):
                w.write(chunk(s))
            await asyncio.sleep(0)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


async def main(n: int, reps: int) -> None:
    handle = await hold.trigger({})
    while (await rayflow.runs.retrieve(handle.id)).status != "EXECUTING":
        await asyncio.sleep(0.1)
    modes = [
        ("gc.freeze() (rayflow)", lambda: gc.freeze()),
        ("collector as Python has it", lambda: gc.unfreeze()),
        ("collector off (floor)", lambda: gc.disable()),
    ]
    for label, setup in modes:
        setup()
        got = [await write(handle.id, f"{label[:8]}-{r}", n) for r in range(reps)]
        rates = ", ".join(f"{r:,.0f}" for r, _ in got)
        cpus = ", ".join(f"{c:.1f}" for _, c in got)
        print(f"{label:28} chunks/s {rates}; µs CPU per chunk {cpus}")
    gc.enable()
    await go.send(handle.id, {})
    await rayflow.runs.wait(handle.id)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--chunks", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rayflow-writer-cpu-") as tmp:
        rayflow.init(data_dir=tmp)
        try:
            asyncio.run(main(args.chunks, args.reps))
        finally:
            rayflow.shutdown()
    print(
        f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load)} before,"
        f" {'/'.join(f'{x:.1f}' for x in os.getloadavg())} after"
    )
