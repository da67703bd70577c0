"""Per-run costs on this machine, the inputs of docs/scaling.md (issue 6, item 5).

Measures, on the embedded deployment (one Ray node on 127.0.0.1):
- memory (USS) of an idle warm RunActor and of a live RunActor mid-run;
- Store bytes per table: per completed run, per KB streamed, per waiting run
  (its runs row, journal and waitpoint);
- Controller calls per run lifecycle (counted from Ray's task events);
- time to trigger N runs, to suspend N runs in `.wait()` and to revive them.

    .venv/bin/python benchmarks/scale.py [--runs 200] [--store postgresql://…]

Without --store it uses a SQLite file in a temporary directory; with a
PostgreSQL server URL it works in a fresh schema that it drops at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402
import ray  # noqa: E402

import rayflow  # noqa: E402
from rayflow import streams, task  # noqa: E402
from rayflow._runtime import connection  # noqa: E402
from rayflow._runtime.pool import actor_options  # noqa: E402
from rayflow._runtime.run_actor import RunActor  # noqa: E402

TABLES = ["runs", "journal", "chunks", "streams", "stream_writers", "inbox", "waitpoints"]

out = streams.define("out", str)
go = streams.input("go", str)


@task(id="scale-noop")
async def noop(payload: dict) -> dict:
    return {"ok": True}


@task(id="scale-stream")
async def stream_kb(payload: dict) -> int:
    chunk = "x" * 1000
    async with out.writer() as w:
        for _ in range(payload["kb"]):
            w.write(chunk)
    return payload["kb"]


@task(id="scale-hold")
async def hold(payload: dict) -> str:
    await out.append("started")
    return (await go.once(timeout_s=600)).unwrap()


@task(id="scale-wait")
async def wait_for_go(payload: dict) -> str:
    await out.append("waiting")
    return (await go.wait(timeout="1d")).unwrap()


# -- measuring -------------------------------------------------------------------
def uss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_full_info().uss) / 2**20


class StoreSize:
    """Bytes per table, from the database's own accounting."""

    def __init__(self, url: str) -> None:
        self.url = url

    def tables(self) -> dict[str, int]:
        if self.url.startswith("sqlite"):
            import sqlite3

            path = self.url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                # dbstat: pages of each table and of its indexes
                rows = db.execute(
                    "SELECT m.tbl_name, SUM(s.pgsize) FROM dbstat s"
                    " JOIN sqlite_master m ON m.name = s.name GROUP BY m.tbl_name"
                ).fetchall()
            return {t: int(b) for t, b in rows if t in TABLES}
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute("VACUUM ANALYZE")
            rows = db.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
                " WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace"
            ).fetchall()
        return {t: int(b) for t, b in rows if t in TABLES}


def row_bytes(url: str, run_ids: list[str]) -> dict[str, float]:
    """Bytes of these runs' rows per table, per run (the data itself, without
    page and index overhead; page-level sizes are too coarse for N runs)."""
    per_table: dict[str, float] = {}
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            for t in TABLES:
                cols = [r[1] for r in db.execute(f"PRAGMA table_info({t})")]
                size = " + ".join(f"COALESCE(length(CAST({c} AS BLOB)), 0)" for c in cols)
                key = "id" if t == "runs" else "run_id"
                marks = ",".join("?" * len(run_ids))
                (total,) = db.execute(
                    f"SELECT COALESCE(SUM({size}), 0) FROM {t} WHERE {key} IN ({marks})", run_ids
                ).fetchone()
                per_table[t] = total / len(run_ids)
        return per_table
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        for t in TABLES:
            key = "id" if t == "runs" else "run_id"
            (total,) = db.execute(
                f"SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM {t} t WHERE {key} = ANY(%s)",
                (run_ids,),
            ).fetchone()
            per_table[t] = float(total) / len(run_ids)
    return per_table


def delta(before: dict[str, int], after: dict[str, int], per: float) -> dict[str, float]:
    return {t: (after.get(t, 0) - before.get(t, 0)) / per for t in TABLES}


def controller_calls() -> Counter[str]:
    """Calls to the control plane and RunActors so far, by method (Ray's
    task events; RunActor.execute is the Controller's call to start a run)."""
    from ray.util.state import summarize_tasks

    summary = summarize_tasks(
        address=ray.get_runtime_context().gcs_address, raise_on_missing_output=False
    )
    calls: Counter[str] = Counter()
    for name, info in summary["cluster"]["summary"].items():
        if name.startswith(("Controller.", "InboxActor.", "RunActor.")):
            calls[name] += sum(info["state_counts"].values())
    return calls


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def statuses(ids: list[str]) -> Counter[str]:
    store = connection.current().store
    return Counter(store.get_run(i).status for i in ids)  # type: ignore[union-attr]


async def trigger_many(t: Any, n: int, payload: dict[str, Any]) -> list[str]:
    handles = await asyncio.gather(*(t.trigger(payload) for _ in range(n)))
    return [h.id for h in handles]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200, help="runs per batch (N)")
    parser.add_argument("--live", type=int, default=10, help="live runs whose memory is sampled")
    parser.add_argument("--kb", type=int, default=1000, help="KB streamed by one run")
    parser.add_argument("--store", default="", help="postgresql://… (default: a SQLite file)")
    args = parser.parse_args()
    n = args.runs

    tmp = Path(tempfile.mkdtemp(prefix="rf-scale-"))
    schema = None
    url = args.store or f"sqlite:///{tmp / 'scale.db'}"
    if url.startswith("postgres"):
        import psycopg

        schema = "rf_scale_" + uuid.uuid4().hex[:10]
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(f"CREATE SCHEMA {schema}")
        server_url = url
        url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"

    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=True,  # Ray's state API counts the Controller's calls
        dashboard_host="127.0.0.1",
        dashboard_port=0,
        num_cpus=4,
        namespace="rf-scale",
    )
    settings = rayflow.init(
        store=url,
        data_dir=tmp,
        namespace="rf-scale",
        pool_size=2,
        max_live_runs=n + 10,
        sqlite_synchronous="NORMAL",
    )
    size = StoreSize(url)
    report: dict[str, Any] = {"store": url.split(":")[0], "runs_per_batch": n}
    try:
        # warm-up: task registration, the pool, Ray's worker start-up
        for t in (noop, stream_kb, hold, wait_for_go):
            t.register().result()
        rayflow.runs.wait(noop.trigger({}).result().id).result(timeout_s=60)

        # -- idle warm RunActor ------------------------------------------------
        idle = [
            RunActor.options(**actor_options(settings.namespace, None)).remote(
                settings.model_dump_json()
            )
            for _ in range(5)
        ]
        pids = ray.get([a.pid.remote() for a in idle], timeout=120)
        time.sleep(2)
        report["idle_actor_uss_mib"] = statistics.median(uss_mib(p) for p in pids)
        for a in idle:
            ray.kill(a)

        # -- N runs triggered, completed: time, bytes, Controller calls -----------
        calls0, size0 = controller_calls(), size.tables()
        t0 = time.perf_counter()
        ids = asyncio.run(trigger_many(noop, n, {}))
        t_triggered = time.perf_counter() - t0
        wait_until(lambda: statuses(ids)["COMPLETED"] == n, 600, "the runs to complete")
        t_done = time.perf_counter() - t0
        calls1, size1 = controller_calls(), size.tables()
        report["trigger_s_per_run"] = t_triggered / n
        report["trigger_to_all_completed_s"] = t_done
        report["completed_run_bytes"] = delta(size0, size1, n)
        report["completed_run_row_bytes"] = row_bytes(url, ids)
        report["controller_calls_per_completed_run"] = {
            k: v / n for k, v in (calls1 - calls0).items()
        }

        # -- one run streams args.kb KB ----------------------------------------
        run_id = stream_kb.trigger({"kb": args.kb}).result().id
        rayflow.runs.wait(run_id).result(timeout_s=300)
        size2 = size.tables()
        report["stream_bytes_per_kb"] = delta(size1, size2, args.kb)
        report["stream_row_bytes_per_kb"] = {
            t: v / args.kb for t, v in row_bytes(url, [run_id]).items()
        }

        # -- live runs: memory -------------------------------------------------
        live = asyncio.run(trigger_many(hold, args.live, {}))
        store = connection.current().store
        wait_until(
            lambda: all(
                (r := store.get_run(i)) is not None and r.status == "EXECUTING" and r.actor_name
                for i in live
            ),
            300,
            "the live runs to start",
        )
        for i in live:  # each has appended: its buffers and Store link are in use
            next(iter(out.read(i, timeout_s=60)))
        live_pids = [
            ray.get(ray.get_actor(store.get_run(i).actor_name, namespace="rf-scale").pid.remote())  # type: ignore[union-attr]
            for i in live
        ]
        report["live_actor_uss_mib"] = statistics.median(uss_mib(p) for p in live_pids)
        for i in live:
            go.send(i, "done").result()
        wait_until(lambda: statuses(live)["COMPLETED"] == len(live), 300, "live runs to end")

        # -- N runs suspend in .wait(), then revive ----------------------------
        calls2, size3 = controller_calls(), size.tables()
        t0 = time.perf_counter()
        waiting = asyncio.run(trigger_many(wait_for_go, n, {}))
        wait_until(lambda: statuses(waiting)["WAITING"] == n, 900, "the runs to suspend")
        t_suspend = time.perf_counter() - t0
        size4 = size.tables()
        report["suspend_n_s"] = t_suspend
        report["waiting_run_bytes"] = delta(size3, size4, n)
        report["waiting_run_row_bytes"] = row_bytes(url, waiting)
        report["waiting_runs_actors"] = len(
            ray.get(connection.current().controller.live_runs.remote())
        )
        t0 = time.perf_counter()

        async def send_all() -> None:
            await asyncio.gather(*(go.send(i, "go") for i in waiting))

        asyncio.run(send_all())
        t_sent = time.perf_counter() - t0
        wait_until(lambda: statuses(waiting)["COMPLETED"] == n, 900, "the runs to revive")
        t_revive = time.perf_counter() - t0
        calls3 = controller_calls()
        report["send_n_s"] = t_sent
        report["revive_n_s"] = t_revive
        report["controller_calls_per_wait_cycle_run"] = {
            k: v / n for k, v in (calls3 - calls2).items()
        }
    finally:
        rayflow.shutdown(stop_runs=True)
        ray.shutdown()
        if schema is not None:
            import psycopg

            with psycopg.connect(server_url, autocommit=True) as db:
                db.execute(f"DROP SCHEMA {schema} CASCADE")
    print_report(report)


def print_report(r: dict[str, Any]) -> None:
    def table_line(name: str, d: dict[str, float]) -> str:
        parts = ", ".join(f"{t} {v:,.0f}" for t, v in d.items() if v)
        return f"{name}: {sum(d.values()):,.0f} B ({parts})"

    n = r["runs_per_batch"]
    print(f"store: {r['store']}, N = {n}")
    print(f"idle warm RunActor USS: {r['idle_actor_uss_mib']:.1f} MiB (median of 5)")
    print(f"live RunActor USS: {r['live_actor_uss_mib']:.1f} MiB (median)")
    for what, key in (
        ("completed run", "completed_run"),
        ("KB streamed", "stream_row_bytes_per_kb"),
        ("waiting run", "waiting_run"),
    ):
        rows = r[key] if key.startswith("stream") else r[f"{key}_row_bytes"]
        pages = r["stream_bytes_per_kb"] if key.startswith("stream") else r[f"{key}_bytes"]
        print(table_line(f"row bytes per {what}", rows))
        print(table_line(f"  allocated (pages, indexes) per {what}", pages))
    print(
        f"trigger: {r['trigger_s_per_run'] * 1000:.1f} ms per run ({n} concurrent);"
        f" all {n} completed after {r['trigger_to_all_completed_s']:.1f} s"
    )
    print(
        f"suspend {n} runs: {r['suspend_n_s']:.1f} s ({r['suspend_n_s'] / n * 1000:.0f} ms/run);"
        f" RunActors held while they wait: {r['waiting_runs_actors']}"
    )
    print(
        f"revive {n} runs: sends acknowledged after {r['send_n_s']:.1f} s, all completed after"
        f" {r['revive_n_s']:.1f} s ({r['revive_n_s'] / n * 1000:.0f} ms/run)"
    )
    for key in ("controller_calls_per_completed_run", "controller_calls_per_wait_cycle_run"):
        calls = r[key]
        on_controller = sum(v for k, v in calls.items() if k.startswith("Controller."))
        print(f"{key}: {on_controller:.2f} on the Controller; all: {json.dumps(calls)}")


if __name__ == "__main__":
    main()
