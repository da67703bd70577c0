"""Input streams: how fast a send reaches a task, and what a suspended run
costs (issue 3, item 7).

In one run, on the embedded default (local Ray on 127.0.0.1 + SQLite):

1. send -> resumed after `.wait()` (the run was suspended: it had no actor),
   p50 / p99, against the floor of creating a bare Ray actor and calling it
   once, measured in the same run; each sample also notes how many warm
   RunActors the pool held just before the send;
2. send -> `.once()` returned (the run is live), p50 / p99, against one
   call round trip to a live bare actor;
3. how many runs can be suspended in `.wait()` at once within a time
   budget: runs whose actor is live while they wait (the Controller's
   `live_runs`) and RunActor processes alive in Ray (the warm pool), Store
   bytes per suspended run, the time to get them all suspended and the
   time to send to them all and see them finish;
4. the time to revive a run whose journal has 1,000 entries (1,000 steps
   before the wait), against one with an empty journal.

Latency is the task's `time.time_ns()` right after it resumed (returned as
the run's output, or appended to an output stream) minus the driver's
`time.time_ns()` just before `send` (one machine, one clock).

    .venv/bin/python benchmarks/input.py [--waits 30] [--onces 200]
        [--suspend 2000] [--suspend-budget-s 150] [--wake-budget-s 90]
"""

from __future__ import annotations

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path
from typing import Any  # noqa: E402

import ray  # noqa: E402

import rayflow  # noqa: E402
from rayflow import step, streams, task  # noqa: E402
from rayflow._response import run_sync  # noqa: E402
from rayflow._runtime import connection  # noqa: E402

go = streams.input("bench-go", dict)
ping = streams.input("bench-ping", dict)
pongs = streams.define("bench-pong", int)


@task(id="bench-input-wait")
async def wait_task(payload: dict) -> int:
    """`steps` steps, then suspends; returns the clock right after it resumed."""
    for i in range(payload.get("steps", 0)):
        await step("s", _identity, i)
    (await go.wait(timeout="1h")).unwrap()
    return time.time_ns()


def _identity(i: int) -> int:
    return i


@task(id="bench-input-once")
async def once_task(payload: dict) -> int:
    """Takes `n` messages with `.once()`; appends the clock after each."""
    for _ in range(payload["n"]):
        (await ping.once(timeout_s=120)).unwrap()
        await pongs.append(time.time_ns())
    return payload["n"]


@ray.remote(num_cpus=0)
class Bare:
    def ping(self) -> int:
        return time.time_ns()


# -- helpers -------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is the maximum)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def line(label: str, xs: list[float]) -> None:
    print(f"  {label:<44} p50 {p50(xs):8.1f} ms   p99 {pct(xs, 0.99):8.1f} ms   n={len(xs)}")


def db_path() -> Path:
    return Path(connection.current().store.url.removeprefix("sqlite:///"))


def store_bytes() -> int:
    """Bytes the Store's SQLite database uses (pages in use, WAL included)."""
    with sqlite3.connect(f"file:{db_path()}?mode=ro", uri=True, timeout=30) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def count_status(ids: list[str], status: str) -> int:
    with sqlite3.connect(f"file:{db_path()}?mode=ro", uri=True, timeout=30) as db:
        db.execute("CREATE TEMP TABLE ids (id TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO ids VALUES (?)", [(i,) for i in ids])
        row = db.execute(
            "SELECT count(*) FROM runs JOIN ids USING (id) WHERE status = ?", (status,)
        ).fetchone()
    return int(row[0])


def waiting_among(ids: list[str]) -> list[str]:
    with sqlite3.connect(f"file:{db_path()}?mode=ro", uri=True, timeout=30) as db:
        db.execute("CREATE TEMP TABLE ids (id TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO ids VALUES (?)", [(i,) for i in ids])
        rows = db.execute("SELECT id FROM runs JOIN ids USING (id) WHERE status = 'WAITING'")
        return [r[0] for r in rows]


def live_runs() -> int:
    """Runs the Controller holds a RunActor for."""
    return len(ray.get(connection.current().controller.live_runs.remote()))


def run_actor_processes() -> int:
    """RunActors ALIVE in Ray's GCS (started: live runs and the warm pool;
    actors still being created are PENDING_CREATION and not counted)."""
    from ray._private import state

    alive = state.actors(actor_state_name="ALIVE").values()
    return sum(1 for a in alive if a["Name"].startswith("rayflow-run-"))


def wait_until(pred: Any, timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every_s)
    return pred()


def trigger_many(payloads: list[dict]) -> list[str]:
    async def go_all() -> list[str]:
        handles = await asyncio.gather(*[wait_task.trigger(p) for p in payloads])
        return [h.id for h in handles]

    return run_sync(go_all())


def send_many(ids: list[str]) -> None:
    async def go_all() -> None:
        for start in range(0, len(ids), 100):
            await asyncio.gather(*[go.send(i, {}) for i in ids[start : start + 100]])

    run_sync(go_all())


def suspend(payloads: list[dict], timeout_s: float) -> list[str]:
    ids = trigger_many(payloads)
    if not wait_until(lambda: count_status(ids, "WAITING") == len(ids), timeout_s):
        raise SystemExit(f"only {count_status(ids, 'WAITING')} of {len(ids)} runs suspended")
    return ids


def revive_one(run_id: str) -> float:
    """Send to a suspended run; ms until the run's clock after `.wait()`."""
    t0 = time.time_ns()
    go.send(run_id, {}).result()
    t1 = rayflow.runs.wait(run_id).result().output
    return (t1 - t0) / 1e6


def pool_warm() -> int:
    """Warm RunActors ready (no run is live here, so every RunActor is one)."""
    return run_actor_processes() - live_runs()


# -- the four measurements ---------------------------------------------------------
def floors(n_cold: int, n_calls: int) -> tuple[list[float], list[float]]:
    cold = []
    for _ in range(n_cold):
        t0 = time.perf_counter()
        a = Bare.remote()
        ray.get(a.ping.remote())
        cold.append((time.perf_counter() - t0) * 1000)
        ray.kill(a)
        time.sleep(0.3)
    a = Bare.remote()
    ray.get(a.ping.remote())
    calls = []
    for _ in range(n_calls):
        t0 = time.perf_counter()
        ray.get(a.ping.remote())
        calls.append((time.perf_counter() - t0) * 1000)
    ray.kill(a)
    return cold, calls


def wait_latency(n: int, gap_s: float) -> tuple[list[float], list[int]]:
    """Suspend n runs, then wake them one at a time, gap_s apart."""
    ids = suspend([{} for _ in range(n)], timeout_s=60 + 3 * n)
    lat, warm = [], []
    for run_id in ids:
        wait_until(lambda: pool_warm() >= 1, gap_s, every_s=0.2)
        time.sleep(0.2)
        warm.append(pool_warm())
        lat.append(revive_one(run_id))
    return lat, warm


def once_latency(n: int, gap_s: float = 0.02) -> list[float]:
    handle = once_task.trigger({"n": n + 1}).result()
    reader = iter(pongs.read(handle.id, start_index=0, timeout_s=120))
    out = []
    for _ in range(n + 1):
        t0 = time.time_ns()
        ping.send(handle.id, {}).result()
        out.append((next(reader) - t0) / 1e6)
        time.sleep(gap_s)
    rayflow.runs.wait(handle.id).result()
    return out[1:]  # the first also waited for the run to start


def long_journal(steps: int, n: int) -> tuple[list[float], list[float], float]:
    """Revive n runs with `steps` journal entries and n with none, alternating,
    each into a warm pool."""
    t0 = time.perf_counter()
    deep = suspend([{"steps": steps} for _ in range(n)], timeout_s=120 + steps * 0.1)
    build_s = time.perf_counter() - t0
    shallow = suspend([{} for _ in range(n)], timeout_s=60 + 3 * n)
    d, s = [], []
    for a, b in zip(deep, shallow, strict=True):
        for run_id, out in ((a, d), (b, s)):
            wait_until(lambda: pool_warm() >= 1, 15, every_s=0.2)
            time.sleep(0.2)
            out.append(revive_one(run_id))
    return d, s, build_s


def many_suspended(target: int, budget_s: float, wake_budget_s: float, wave: int) -> None:
    before = store_bytes()
    ids: list[str] = []
    t0 = time.perf_counter()
    # waves of `wave` runs (the Controller's max_live_runs): each wave is
    # triggered once the previous one is suspended, until target or budget
    while len(ids) < target and time.perf_counter() - t0 < budget_s:
        batch = trigger_many([{} for _ in range(min(wave, target - len(ids)))])
        left = budget_s - (time.perf_counter() - t0)
        wait_until(lambda b=batch: count_status(b, "WAITING") == len(b), max(left, 0), 0.5)
        ids.extend(batch)
    suspend_s = time.perf_counter() - t0
    waiting = count_status(ids, "WAITING")
    if waiting < len(ids):
        # the budget ran out mid-wave: let the last wave settle (bounded)
        wait_until(lambda: count_status(ids, "WAITING") == len(ids), 30, 0.5)
        suspend_s = time.perf_counter() - t0
        waiting = count_status(ids, "WAITING")
    time.sleep(1.0)
    live, procs = live_runs(), run_actor_processes()
    per_run = (store_bytes() - before) / max(1, waiting)
    print(
        f"  runs suspended in .wait() at once            {waiting:,} of {len(ids):,} triggered"
        f" (target {target:,}; budget {budget_s:.0f} s)"
    )
    print(
        f"  time to trigger and suspend them all         {suspend_s:.1f} s"
        f" ({waiting / suspend_s:.1f} runs/s)"
    )
    print(f"  runs holding a live RunActor while waiting   {live} (goal 0)")
    print(f"  RunActor processes alive in Ray              {procs} (the warm pool)")
    print(f"  Store bytes per suspended run                {per_run:,.0f} B (goal <= 2,048)")
    waiting_ids = waiting_among(ids)
    t1 = time.perf_counter()
    send_many(waiting_ids)
    sent_s = time.perf_counter() - t1
    wait_until(
        lambda: count_status(waiting_ids, "COMPLETED") == len(waiting_ids), wake_budget_s, 0.5
    )
    done = count_status(waiting_ids, "COMPLETED")
    woke_s = time.perf_counter() - t1
    print(
        f"  send to all of them (acknowledged)           {sent_s:.1f} s"
        f" ({len(waiting_ids) / sent_s:,.0f} sends/s)"
    )
    print(
        f"  ... and all revived and finished             {done:,} of {len(waiting_ids):,}"
        f" in {woke_s:.1f} s ({done / woke_s:.1f} runs/s)"
    )
    for run_id in ids:  # whatever did not finish in the budget
        rayflow.runs.cancel(run_id).result()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", type=int, default=10, help="bare actors created")
    parser.add_argument("--waits", type=int, default=20, help="runs revived one by one")
    parser.add_argument("--gap-s", type=float, default=15.0, help="max wait for a warm pool")
    parser.add_argument("--onces", type=int, default=200)
    parser.add_argument("--journal", type=int, default=1000, help="entries before the wait")
    parser.add_argument("--journal-runs", type=int, default=2)
    parser.add_argument("--suspend", type=int, default=2000, help="target of suspended runs")
    parser.add_argument("--suspend-budget-s", type=float, default=150.0)
    parser.add_argument("--wake-budget-s", type=float, default=90.0)
    args = parser.parse_args()
    t_start = time.perf_counter()
    data_dir = tempfile.mkdtemp(prefix="rf-bench-input-")
    try:
        settings = rayflow.init(data_dir=data_dir)
    except Exception as e:  # Ray's start-up can time out on a loaded box: once more
        print(f"rayflow.init failed ({e}); retrying once")
        ray.shutdown()
        settings = rayflow.init(data_dir=data_dir)
    print(
        f"embedded default: local Ray on 127.0.0.1, {settings.store}"
        f" (synchronous={settings.sqlite_synchronous}), pool_size={settings.pool_size},"
        f" max_live_runs={settings.max_live_runs}, {os.cpu_count()} cores,"
        f" load {os.getloadavg()[0]:.1f}"
    )

    cold, calls = floors(args.cold, args.onces)
    print("floors (bare Ray actors)")
    line("create an actor + call it once", cold)
    line("call a live actor (round trip)", calls)

    print("1. send -> resumed after .wait() (run suspended, no actor)")
    lat, warm = wait_latency(args.waits, args.gap_s)
    line("all", lat)
    hot = [x for x, w in zip(lat, warm, strict=True) if w > 0]
    empty = [x for x, w in zip(lat, warm, strict=True) if w == 0]
    if hot:
        line("warm RunActor in the pool at the send", hot)
    if empty:
        line("pool empty at the send", empty)
    print(
        f"  ratio to create+call a bare actor           p50 {p50(lat) / p50(cold):.2f}"
        " (goal <= 0.25)"
        f"   p99 {pct(lat, 0.99) / pct(cold, 0.99):.2f} (goal <= 1)"
    )

    print("2. send -> .once() returned (run live)")
    onces = once_latency(args.onces)
    line("all", onces)
    print(
        f"  ratio to a bare actor call                  p50 {p50(onces) / p50(calls):.1f}"
        f"   p99 {pct(onces, 0.99) / pct(calls, 0.99):.1f}"
    )

    print(f"4. revive a run with a {args.journal:,}-entry journal")
    deep, shallow, build_s = long_journal(args.journal, args.journal_runs)
    line(f"send -> resumed, {args.journal:,} entries", deep)
    line("send -> resumed, empty journal", shallow)
    print(
        f"  replay cost                                  {p50(deep) - p50(shallow):+.1f} ms"
        f" ({(p50(deep) - p50(shallow)) * 1000 / args.journal:+.1f} us/entry);"
        f" writing the {args.journal_runs} journals took {build_s:.1f} s"
    )

    print("3. many runs suspended in .wait() at once")
    many_suspended(args.suspend, args.suspend_budget_s, args.wake_budget_s, settings.max_live_runs)

    print(f"whole benchmark: {time.perf_counter() - t_start:.0f} s")
    rayflow.shutdown(stop_runs=True)


if __name__ == "__main__":
    main()
