"""A long stream must not grow its RunActor's memory, and reading near its
end must not scan from the start (issue 2, item 4).

Writes N chunks (default 1,000,000) from one task; samples the RunActor's
USS and its stream stats (heap tail, sealed segments) as the stream grows;
then times the first chunk of a reader at index 0 and at index N-1000,
several times each, and prints medians and their ratio.

    .venv/bin/python benchmarks/long_stream.py [--chunks 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

import psutil
import ray

import rayflow
from rayflow import streams, task
from rayflow._runtime import connection

numbers = streams.define("numbers", int)
gate = streams.input("gate", dict)


@task(id="bench-long-stream")
async def long_stream(payload: dict) -> int:
    n, every = payload["n"], payload["checkpoint_every"]
    for start in range(0, n, every):
        # writes in blocks, as a producer would: memory held by in-flight
        # writes is the writer's, not the stream's
        for block in range(start, min(n, start + every), 10_000):
            async with numbers.writer() as w:
                for i in range(block, min(n, start + every, block + 10_000)):
                    w.write(i)
        # a checkpoint: the driver samples memory, then lets us go on
        (await gate.once(timeout_s=600)).unwrap()
    return n


def uss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_full_info().uss / 2**20


def first_chunk_s(run_id: str, start: int) -> float:
    t0 = time.perf_counter()
    reader = iter(numbers.read(run_id, start_index=start, timeout_s=30))
    value = next(reader)
    elapsed = time.perf_counter() - t0
    assert value == start, (value, start)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--reads", type=int, default=7)
    args = parser.parse_args()
    n = args.chunks
    every = n // args.checkpoints
    rayflow.init(data_dir=tempfile.mkdtemp(prefix="rf-bench-"), sqlite_synchronous="NORMAL")
    conn = connection.current()
    handle = long_stream.trigger({"n": n, "checkpoint_every": every}).result()
    print(f"run {handle.id}: {n:,} chunks, checkpoint every {every:,}")
    print(
        f"{'chunks':>10} {'actor USS MiB':>14} {'heap tail':>10} {'segments':>9} {'chunks/s':>10}"
    )
    samples: list[tuple[int, float]] = []
    t_prev = time.perf_counter()
    actor: Any = None
    for k in range(1, args.checkpoints + 1):
        target = min(n, k * every)
        while True:
            info = {s["key"]: s for s in streams.list_streams(handle.id).result()}
            if info.get("numbers", {}).get("length", 0) >= target:
                break
            time.sleep(0.2)
        now = time.perf_counter()
        _, actor = ray.get(conn.controller.locate.remote(handle.id))
        pid = ray.get(actor.pid.remote())
        stats = ray.get(actor.stream_stats.remote(handle.id))["numbers"]
        uss = uss_mib(pid)
        samples.append((target, uss))
        rate = every / (now - t_prev)
        print(
            f"{target:>10,} {uss:>14.1f} {stats['tail']:>10} {stats['segments']:>9} {rate:>10,.0f}"
        )
        gate.send(handle.id, {}).result()
        t_prev = time.perf_counter()
    rayflow.runs.wait(handle.id).result()
    growth = samples[-1][1] - samples[0][1]
    print(
        f"actor USS growth from {samples[0][0]:,} to {samples[-1][0]:,} chunks:"
        f" {growth:+.1f} MiB ({growth * 2**20 / (samples[-1][0] - samples[0][0]):+.2f} B/chunk)"
    )
    head = [first_chunk_s(handle.id, 0) for _ in range(args.reads)]
    tail = [first_chunk_s(handle.id, n - 1000) for _ in range(args.reads)]
    h, t = statistics.median(head), statistics.median(tail)
    print(f"first chunk from index 0:        median {h * 1000:.1f} ms")
    print(f"first chunk from index {n - 1000:,}: median {t * 1000:.1f} ms")
    print(f"ratio end/start: {t / h:.2f} (≈1 means a seek, not a scan)")
    asyncio.run(asyncio.sleep(0))
    rayflow.shutdown(stop_runs=True)


if __name__ == "__main__":
    main()
