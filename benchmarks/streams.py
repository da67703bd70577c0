"""Output-stream figures of issue 2, item 7, side by side in one run:

(a) durable pipe throughput of 64-byte chunks into one stream, against a bare
    Ray actor called once per chunk (floor) and with 1,000 chunks per call
    (ceiling), and the Store alone (the default SQLite, the pipe's
    group-commit size, in this process: the ceiling of any durable pipe);
(b) append → reader latency, the reader in another process;
(d) trigger → first chunk at a reader, against creating a bare Ray actor and
    calling it once.
(c) — actor memory over a 1M-chunk stream and seek vs start — is
    `benchmarks/long_stream.py`.

    .venv/bin/python benchmarks/streams.py [--chunks 100000] [--reps 3]
"""

from __future__ import annotations

import os

# docs/scaling.md: Ray reads this when it is imported, so it must be set before
# `import ray` (and before rayflow, which imports Ray): with it, and rayflow's
# `_node_ip_address="127.0.0.1"`, nothing listens beyond the loopback
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402

import rayflow  # noqa: E402
from rayflow import streams, task  # noqa: E402
from rayflow._runtime.stream_commit import COMMIT_BATCH  # noqa: E402

out = streams.define("out", str)
go = streams.input("go", dict)


def chunk(i: int) -> str:
    head = f"{i:08d} {time.time_ns():020d} "
    return head + "x" * (64 - len(head))


@task(id="bench-pipe")
async def pipe_task(payload: dict) -> float:
    t0 = time.perf_counter()
    pipe = out.pipe(chunk(i) for i in range(payload["n"]))
    await pipe.wait_until_complete()
    return time.perf_counter() - t0


@task(id="bench-paced")
async def paced(payload: dict) -> int:
    await asyncio.sleep(payload["start_in"])
    for i in range(payload["n"]):
        await out.append(chunk(i))  # acknowledged = durable
        await asyncio.sleep(payload["interval_s"])
    return payload["n"]


@task(id="bench-first")
async def first(payload: dict) -> str:
    await out.append(chunk(0))
    return "ok"


@ray.remote
class Bare:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, item: str) -> None:
        self.items.append(item)

    def add_many(self, items: list[str]) -> None:
        self.items.extend(items)

    def ping(self) -> int:
        return len(self.items)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def throughput(n: int, reps: int) -> None:
    durable = []
    for _ in range(reps):
        handle = pipe_task.trigger({"n": n}).result()
        durable.append(n / rayflow.runs.wait(handle.id).result().output)
    actor = Bare.remote()
    ray.get(actor.ping.remote())
    per_call_n = min(n, 10_000)
    t0 = time.perf_counter()
    ray.get([actor.add.remote(chunk(i)) for i in range(per_call_n)])
    per_call = per_call_n / (time.perf_counter() - t0)
    batched_runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ray.get(
            [
                actor.add_many.remote([chunk(i) for i in range(s, s + 1000)])
                for s in range(0, n, 1000)
            ]
        )
        batched_runs.append(n / (time.perf_counter() - t0))
    ray.kill(actor)
    store_alone = statistics.median(store_ceiling(n) for _ in range(reps))
    d, b = statistics.median(durable), statistics.median(batched_runs)
    print(f"(a) {n:,} chunks × 64 B, median of {reps}")
    print(f"    durable pipe into one stream:       {d:>12,.0f} chunks/s")
    print(f"    bare actor, one call per chunk:     {per_call:>12,.0f} chunks/s ({per_call_n:,})")
    print(f"    bare actor, 1,000 chunks per call:  {b:>12,.0f} chunks/s")
    print(f"    the Store alone, {COMMIT_BATCH:,} per commit: {store_alone:>12,.0f} chunks/s")
    print(
        f"    ratio durable / batched ceiling: {d / b:.2f} (goal ≥ 0.5);"
        f" durable / per-call floor: {d / per_call:.1f}"
    )
    print(
        f"    the Store alone / batched ceiling: {store_alone / b:.2f}"
        f" ({'the goal is out of reach on this Store' if store_alone / b < 0.5 else 'room'});"
        f" durable / the Store alone: {d / store_alone:.2f}"
    )


def store_ceiling(n: int) -> float:
    """chunks/s of the bare Store: the default SQLite (synchronous=FULL), one
    commit per COMMIT_BATCH chunks already JSON-encoded, in this process."""
    import json

    from rayflow.store import open_store
    from rayflow.store.base import ChunkWrite

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/ceiling.db")
        store.migrate()
        writes = [ChunkWrite(json.dumps(chunk(i)), "w", i) for i in range(n)]
        t0 = time.perf_counter()
        for s in range(0, n, COMMIT_BATCH):
            store.append_chunks("run_ceiling", "out", writes[s : s + COMMIT_BATCH], 1 << 40)
        rate = n / (time.perf_counter() - t0)
        store.close()
    return rate


READER = textwrap.dedent(
    """
    import os, sys, time, json
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported
    import rayflow
    from rayflow import streams
    address, store, ns, data_dir, run_id, n = sys.argv[1:7]
    rayflow.init(address=address, store=store, namespace=ns, data_dir=data_dir)
    print("ready", flush=True)
    lat = []
    for c in streams.read(run_id, "out", timeout_s=60):
        lat.append((time.time_ns() - int(c.split()[1])) / 1e6)
        if len(lat) == int(n):
            break
    print(json.dumps(lat), flush=True)
    """
)


def latency(settings: Any, n: int, interval_s: float) -> None:
    handle = paced.trigger({"n": n, "interval_s": interval_s, "start_in": 8.0}).result()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            READER,
            ray.get_runtime_context().gcs_address,
            settings.store,
            settings.namespace,
            str(settings.data_dir),
            handle.id,
            str(n),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready": joined before the first append (start_in)
    import json

    lat = json.loads(proc.stdout.readline())
    proc.wait(60)
    print(f"(b) append → reader in another process, {n} chunks at {1 / interval_s:.0f}/s")
    print(f"    p50 {statistics.median(lat):.2f} ms   p99 {pct(lat, 0.99):.2f} ms")


def first_chunk(reps: int) -> None:
    rf, bare = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        handle = first.trigger({}).result()
        next(iter(out.read(handle.id, timeout_s=30)))
        rf.append(time.perf_counter() - t0)
        rayflow.runs.wait(handle.id).result()
        time.sleep(0.5)  # let the warm pool refill, as between user triggers
        t0 = time.perf_counter()
        actor = Bare.remote()
        ray.get(actor.ping.remote())
        bare.append(time.perf_counter() - t0)
        ray.kill(actor)
    r, b = statistics.median(rf), statistics.median(bare)
    print(f"(d) trigger → first chunk at a reader, median of {reps}")
    print(
        f"    rayflow {r * 1000:.0f} ms; bare actor create + call {b * 1000:.0f} ms;"
        f" ratio {r / b:.2f} (goal ≤ 0.25)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency-chunks", type=int, default=500)
    args = parser.parse_args()
    load_before = os.getloadavg()
    settings = rayflow.init(data_dir=tempfile.mkdtemp(prefix="rf-bench-"))
    try:
        throughput(args.chunks, args.reps)
        latency(settings, args.latency_chunks, 0.01)
        first_chunk(max(5, args.reps))
    finally:
        rayflow.shutdown(stop_runs=True)
    print(
        f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} before,"
        f" {'/'.join(f'{x:.1f}' for x in os.getloadavg())} after"
    )


if __name__ == "__main__":
    main()
