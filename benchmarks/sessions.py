"""Sessions (issue 22): a record sent to a session's input until the first
record of the reply on its output, side by side in one run with what it is
held to.

On the embedded default (local Ray on 127.0.0.1 + SQLite, or `--store`):

1. live: one session whose run loops `await session.input.once()` and
   answers each record with one output record at once. The user (this
   process) sends a record, then reads the output (`output.read(start,
   wait_s=…)`) until the reply: send -> first output record on the user's
   clock, beside send -> `.once()` returned, measured in the same run for
   the same records (the run puts its clock in the reply). Goal: <= 1.5x.
2. suspended: the same with `await session.input.wait()`: before each send
   the run is WAITING and held by no RunActor (no process), so the send
   revives it. Beside it the floor of a process start: a bare Ray actor
   created and called once (a cold actor). Goal: <= 0.05x a cold actor.
3. many: `--sessions` sessions started at once, each with a run that waits
   in `.input.wait()`; then one record to each at once, read back by one
   reader per session: sessions started/s, all replied after, send -> reply
   p50/p99, runs by status, RunActor processes, Store bytes.

Latency is one machine's `time.time_ns()` (the user's clock before the
send, after the read). The load average is printed beside every figure:
on a shared 2-core box read the ratios, not the digits.

    python benchmarks/sessions.py [--sends 40] [--sessions 1000] [--store URL]

It installs what it needs (scripts/venv.sh) and re-runs itself in .venv.
"""

from __future__ import annotations

import os
import sys

# before anything imports Ray (docs/scaling.md): a local Ray on 127.0.0.1 only
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _input_support as sup  # noqa: E402

if __name__ == "__main__":
    sup.ensure_environment(os.path.abspath(__file__))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402

import rayflow  # noqa: E402
from rayflow import sessions, task  # noqa: E402
from rayflow._runtime import connection, session_reads  # noqa: E402


@task(id="bench-session-live")
async def live_agent(payload: dict) -> int:  # type: ignore[type-arg]
    me = sessions.open(sessions.current().id)
    n = 0
    while True:
        got = await me.input.once(timeout_s=300)
        if not got.ok or got.output.get("bye"):
            return n
        once_ns = time.time_ns()
        took_ms = (once_ns - got.output["ts"]) / 1e6
        await me.output.append({"i": got.output["i"], "once_ms": took_ms, "once_ns": once_ns})
        n += 1


@task(id="bench-session-waiting")
async def waiting_agent(payload: dict) -> int:  # type: ignore[type-arg]
    me = sessions.open(sessions.current().id)
    n = 0
    while True:
        got = await me.input.wait(timeout="1h")
        if not got.ok or got.output.get("bye"):
            return n
        await me.output.append({"i": got.output["i"]})
        n += 1


@ray.remote(num_cpus=0)
class Bare:
    def ping(self) -> int:
        return 1


def start(task_id: str) -> str:
    started = sessions.start(
        type="bench",
        task_id=task_id,
        external_id=f"bench-{uuid.uuid4().hex}",
        trigger_config={"base_payload": {}},
    ).result()
    return str(started.id)


def reply(session_id: str, start_at: int) -> dict[str, Any]:
    """The first output record at `start_at` or after (waits for it)."""
    while True:
        page = sessions.open(session_id).output.read(start=start_at, wait_s=30).result()
        if page.records:
            return dict(json.loads(page.records[0].body)["data"])


def held(session_id: str) -> bool:
    """Whether the session's run is held by a RunActor (not suspended)."""
    run_id = sessions.retrieve(session_id).result().current_run_id
    run = connection.current().store.get_run(run_id) if run_id else None
    return run is None or run.status != "WAITING" or run.actor_name is not None


def ratio(a: list[float], b: list[float]) -> str:
    return f"x{sup.p50(a) / sup.p50(b):.3f} (p50), x{sup.pct(a, 0.99) / sup.pct(b, 0.99):.3f} (p99)"


def part_live(
    sends: int, gap_s: float, stamps: list[dict[str, int]] | None = None
) -> tuple[list[float], list[float]]:
    """`stamps`: filled with each send's clock (`--breakdown`)."""
    sid = start("bench-session-live")
    user = sessions.open(sid)
    e2e, once = [], []
    for i in range(sends):
        time.sleep(gap_s)
        t0 = time.time_ns()
        user.input.send({"i": i, "ts": t0}).result()
        sent = time.time_ns()
        got = reply(sid, i)
        t1 = time.time_ns()
        e2e.append((t1 - t0) / 1e6)
        once.append(float(got["once_ms"]))
        if stamps is not None:
            stamps.append(
                {"sid": sid, "i": i, "send": t0, "sent": sent, "once": got["once_ns"], "client": t1}
            )  # type: ignore[dict-item]
    user.input.send({"bye": True}).result()
    return e2e, once


#: the stages of one live send, in order: (hop, stream) — `in`: the sent
#: record's, `out`: the reply's; `send`, `once`, `client`: the benchmark's clocks
STAGES = [
    ("send", ""),
    ("stored", "in"),
    ("changed", "in"),
    ("read_in", "in"),
    ("consumed", "in"),
    ("once", ""),
    ("commit_start", "out"),
    ("committed", "out"),
    ("resolved", "out"),
    ("learned", "out"),
    ("reply", "out"),
    ("arrived", "out"),
    ("taken", "out"),
    ("client", ""),
]


def breakdown(hops_dir: str, stamps: list[dict[str, Any]]) -> None:
    """Per stage of a live send, ms from the stage before (rayflow's hop
    lines, `rayflow/_runtime/hops.py`, joined with the benchmark's clocks)."""
    import glob
    from collections import defaultdict

    at: dict[tuple[str, str], list[int]] = defaultdict(list)
    for f in glob.glob(os.path.join(hops_dir, "*.tsv")):
        for line in Path(f).read_text().splitlines():
            hop, ident, ns = line.split("\t")[:3]
            if hop in ("poll_sent", "poll_got", "look", "looked"):
                ident = ident.split("\x00named:")[-1]
                at[(hop, ident)].append(int(ns))
                continue
            if "\x00named:" in ident:  # a RunActor's poll: run/\x00named:path/seq
                path, _, seq = ident.split("\x00named:", 1)[1].rpartition("/")
                ident = f"{path}@{seq}"
            if hop.startswith("taken_"):
                at[("taken", ident)].append(int(ns))
                at[(hop, ident)].append(int(ns))
            else:
                at[(hop, ident)].append(int(ns))
    rows: dict[str, list[float]] = defaultdict(list)
    how: dict[str, int] = defaultdict(int)
    for st in stamps:
        ids = {
            "in": f"sessions/{st['sid']}/in@{st['i']}",
            "out": f"sessions/{st['sid']}/out@{st['i']}",
        }
        prev_name, prev = "send", st["send"]
        # a reply pushed from the commit thread went committed -> pushed -> taken
        pushed = bool(at[("pushed", ids["out"])]) and bool(at[("taken_pushed", ids["out"])])
        actor_path = {"resolved", "learned", "reply", "arrived"}
        for hop, stream in STAGES[1:]:
            if hop in actor_path and pushed:
                continue
            if hop == "taken" and pushed:
                t = min(at[("pushed", ids["out"])])
                rows[f"{prev_name} -> pushed"].append((t - prev) / 1e6)
                prev_name, prev = "pushed", t
            if stream == "":
                t = st[hop]
            elif hop == "changed":  # one line per poke, by path: the first after the store
                t = min((x for x in at[(hop, ids["in"].split("@")[0])] if x >= prev), default=None)
            else:
                t = min(at[(hop, ids[stream])], default=None)
            if t is None:
                continue
            rows[f"{prev_name} -> {hop}"].append((t - prev) / 1e6)
            prev_name, prev = hop, t
        path = ids["out"].split("@")[0]
        for hop in ("look", "looked", "poll_sent", "poll_got"):
            t = min((x for x in at[(hop, path)] if x >= st["sent"]), default=None)
            if t is not None:
                rows[f"(reader: sent -> {hop})"].append((t - st["sent"]) / 1e6)
        rows["(reader: sent -> committed)"].append(
            (min(at[("committed", ids["out"])], default=st["sent"]) - st["sent"]) / 1e6
        )
        for kind in ("taken_pushed", "taken_woken", "taken_read"):
            if at[(kind, ids["out"])]:
                how[kind] += 1
        rows["TOTAL send -> once"].append((st["once"] - st["send"]) / 1e6)
        rows["TOTAL once -> client"].append((st["client"] - st["once"]) / 1e6)
        rows["(send returned: send -> sent)"].append((st["sent"] - st["send"]) / 1e6)
    print(f"   breakdown of {len(stamps)} live sends (ms from the stage before):")
    for name, xs in rows.items():
        print(
            f"     {name:<34} p50 {sup.p50(xs):7.2f}   p99 {sup.pct(xs, 0.99):7.2f}   n={len(xs)}"
        )
    print(f"     reply taken: {dict(how)}")


def part_suspended(sends: int) -> tuple[list[float], int]:
    sid = start("bench-session-waiting")
    user = sessions.open(sid)
    e2e: list[float] = []
    unsuspended = 0
    for i in range(sends):
        if not sup.wait_until(lambda: not held(sid), 30, every_s=0.05):
            unsuspended += 1
        t0 = time.time_ns()
        user.input.send({"i": i}).result()
        reply(sid, i)
        e2e.append((time.time_ns() - t0) / 1e6)
    user.input.send({"bye": True}).result()
    return e2e, unsuspended


def cold_actors(n: int) -> list[float]:
    cold = []
    for _ in range(n):
        t0 = time.perf_counter()
        actor = Bare.remote()  # type: ignore[attr-defined]
        ray.get(actor.ping.remote())
        cold.append((time.perf_counter() - t0) * 1000)
        ray.kill(actor)
        time.sleep(0.3)  # let the process go before the next one
    return cold


async def part_many(n: int) -> dict[str, Any]:
    t0 = time.monotonic()
    ids: list[str] = []
    for at in range(0, n, 100):  # 100 starts in flight at once
        batch = [
            sessions.start(
                type="bench",
                task_id="bench-session-waiting",
                external_id=f"many-{uuid.uuid4().hex}",
                trigger_config={"base_payload": {}},
            )
            for _ in range(min(n, at + 100) - at)
        ]
        ids.extend(s.id for s in await asyncio.gather(*batch))
    started_s = time.monotonic() - t0
    store = connection.current().store

    def waiting() -> int:
        runs = [sessions.retrieve(i).result().current_run_id for i in ids[:: max(1, n // 50)]]
        return sum(1 for r in runs if r and str(store.get_run(r).status) == "WAITING")

    sup.wait_until(lambda: waiting() == len(ids[:: max(1, n // 50)]), 300, every_s=1.0)
    settled_s = time.monotonic() - t0
    processes = sup.run_actor_processes()

    async def one(sid: str) -> tuple[float, float, float]:
        sent = time.time_ns()
        await sessions.open(sid).input.send({"i": 0})
        send_ms = (time.time_ns() - sent) / 1e6
        while True:
            page = await sessions.open(sid).output.read(start=0, wait_s=60)
            if page.records:
                committed_ms = page.records[0].timestamp - sent / 1e6  # the Store's clock
                return send_ms, committed_ms, (time.time_ns() - sent) / 1e6

    t1 = time.monotonic()
    lat = await asyncio.gather(*(one(i) for i in ids))
    return {
        "started_s": started_s,
        "settled_s": settled_s,
        "processes_while_waiting": processes,
        "all_replied_s": time.monotonic() - t1,
        "send": [s for s, _, _ in lat],
        "committed": [c for _, c, _ in lat],
        "lat": [r for _, _, r in lat],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sends", type=int, default=40, help="records per part 1/2 (default 40)")
    p.add_argument("--gap", type=float, default=0.05, help="seconds between live sends")
    p.add_argument("--cold", type=int, default=10, help="cold actors for the floor")
    p.add_argument("--sessions", type=int, default=1000, help="sessions of part 3 (0: skip)")
    p.add_argument("--store", help="a PostgreSQL URL (default: SQLite in a temp dir)")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="only part 1, traced: where a live send's time goes, stage by stage",
    )
    a = p.parse_args()
    print(f"benchmarks/sessions.py {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"  before: {sup.load()}")
    with tempfile.TemporaryDirectory(prefix="rayflow-sessions-") as tmp:
        kw: dict[str, Any] = {"store": a.store} if a.store else {}
        if a.breakdown:
            kw["trace_hops_dir"] = os.path.join(tmp, "hops")
        rayflow.init(data_dir=tmp, **kw)
        try:
            if a.breakdown:
                stamps: list[dict[str, Any]] = []
                e2e, once = part_live(a.sends, a.gap, stamps)
                sup.line("   send -> first .out record (traced)", e2e)
                sup.line("   send -> .once() returned (traced)", once)
                print(f"   ratio: {ratio(e2e, once)}   [{sup.load()}]")
                breakdown(kw["trace_hops_dir"], stamps[1:])  # the first: a fresh session
                return
            print("1. live run: send -> first output record vs send -> .once() returned")
            e2e, once = part_live(a.sends, a.gap)
            sup.line("   send -> first .out record", e2e)
            sup.line("   send -> .once() returned", once)
            print(f"   ratio (goal <= 1.5): {ratio(e2e, once)}   [{sup.load()}]")
            pages = session_reads.pages
            print(f"   reader pages pushed by the run's RunActor / read after a wake: {pages}")

            print("2. suspended run: send -> first output record vs a cold actor")
            revived, not_suspended = part_suspended(a.sends)
            cold = cold_actors(a.cold)
            sup.line("   send -> first .out record (revived)", revived)
            sup.line("   cold actor: create + call once", cold)
            print(f"   ratio (goal <= 0.05): {ratio(revived, cold)}   [{sup.load()}]")
            if not_suspended:
                print(f"   ({not_suspended} sends went to a run not yet suspended)")

            if a.sessions:
                print(f"3. {a.sessions:,} sessions, each run waiting; one record to each at once")
                many = asyncio.run(part_many(a.sessions))
                rate = a.sessions / many["started_s"]
                print(
                    f"   started in {many['started_s']:.1f} s ({rate:,.0f} sessions/s); all"
                    f" runs WAITING after {many['settled_s']:.1f} s; RunActor processes"
                    f" {many['processes_while_waiting']}   [{sup.load()}]"
                )
                sup.line("   send returned (stored, run queued)", many["send"])
                sup.line("   send -> reply committed (run revived)", many["committed"])
                sup.line("   send -> reply, all at once", many["lat"])
                print(f"   all {a.sessions:,} replied after {many['all_replied_s']:.1f} s")
        finally:
            rayflow.shutdown(stop_runs=True)
    print(f"  after: {sup.load()}")


if __name__ == "__main__":
    main()
