"""Many live runs at once (issue 21, item 6): rayflow against its floor on Ray, in one run.

    .venv/bin/python benchmarks/density.py --runs 100 --duration 20
    .venv/bin/python benchmarks/density.py --runs 1000 --duration 20 --once 10000
    .venv/bin/python benchmarks/density.py --store "$RAYFLOW_TEST_POSTGRES_URL" ...

**tokens** (both systems): N runs, each a plain ``async def`` that appends one
token every 1/rate s for D s (open loop: the schedule does not drift with the
append's latency), each read by its own Python reader. The readers live in
``--reader-procs`` helper processes (asyncio, one task per run); each helper
triggers its share of the runs at one agreed instant and starts reading each
run as soon as its trigger returns — a backend that triggers a run and
streams it to its user.

- *rayflow*: ``@task async def`` that ``await out.append(token)``s (durable
  on return), embedded default (local Ray, SQLite ``synchronous=FULL``, or
  ``--store``); readers ``async for`` over ``out.read(run_id)``.
- *floor*: one bare Ray async actor hosting the N coroutines, each
  appending to an in-memory list. Each reader process does what rayflow's
  readers of one process do, without anything durable: it starts its runs
  in one call (rayflow coalesces the triggers of a process) and follows all
  of them through one push stream (a Ray streaming generator that sends,
  per reply, every run's rows not sent yet: rayflow's ``follow_many``).
  The least Ray does for this work. (Until 2026-12-07 the floor's readers
  long-polled once per token each: above N = 100 its latency was the
  floor actor's queue of 1,000 polls, no lower bound.)

Figures (each with the 1-minute load average at the part's start and end):
all done after (last reader's end − first trigger, and × D); runs executing
at once over time (a run executes from its first token's writer clock to its
last's), peak and % of N; memory per executing run: USS of the processes
hosting runs (RunActors / the floor actor), at the memory sample with the
most runs executing, divided by them — and the same over their USS before
the load; append → reader p50/p99 (reader clock − writer clock in the
token); trigger → first token at the reader p50/p99; CPU per token of every
process of this Ray and the readers (µs; this script's own sampling
excluded), and of the hosting processes alone.

**once** (``--once M``, rayflow only): M runs that each ``await
inp.once()``; how many are live (EXECUTING) at once, memory each (USS of
every Ray worker process, over the idle cluster's), and send → received
p50/p99 over ``--once-sends`` sends, one every 20 ms.

Absolute figures on a shared 2-core box are noise: read the ratios.
"""

from __future__ import annotations

import os

# Ray reads this when it is imported (see benchmarks/streams.py): loopback only
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402
import ray  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
import _common as c  # noqa: E402

import rayflow  # noqa: E402
from rayflow import streams, task  # noqa: E402

FLOOR_NAME = "density-floor"
FLOOR_NS = "density-floor"

out = streams.define("density-out", str)
go = streams.input("density-go", dict)


def token(i: int) -> str:
    """A token: its index and the writer's wall clock (ns)."""
    return f"{i:06d} {time.time_ns():020d}"


@task(id="density-tokens")
async def tokens(p: dict) -> int:
    start = time.monotonic()
    for i in range(p["n"]):
        await out.append(token(i))  # acknowledged = durable = visible
        delay = start + (i + 1) * p["interval"] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return int(p["n"])


@task(id="density-once")
async def once(p: dict) -> float | None:
    r = await go.once(timeout_s=p["timeout_s"])
    return (time.time_ns() - r.output["ts"]) / 1e6 if r.ok else None


@ray.remote(num_cpus=0)
class Floor:
    """The floor: N coroutines on one async actor, streams in its memory,
    each reader process following all its runs through one push stream."""

    def __init__(self) -> None:
        self.rows: dict[str, list[str]] = {}
        self.closed: set[str] = set()
        #: per stream, the `follow` streams that carry it (called at news)
        self.watchers: dict[str, list[Any]] = {}
        self.tasks: set[asyncio.Task[int]] = set()

    def pid(self) -> int:
        return os.getpid()

    def _news(self, sid: str) -> None:
        for watcher in self.watchers.get(sid, ()):
            watcher(sid)

    async def _run(self, sid: str, n: int, interval: float) -> int:
        rows = self.rows[sid]
        start = time.monotonic()
        for i in range(n):
            rows.append(token(i))
            self._news(sid)
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        self.closed.add(sid)
        self._news(sid)
        return n

    async def start(self, sids: list[str], n: int, interval: float) -> None:
        """Start one coroutine per stream (a reader process's triggers, in one call)."""
        loop = asyncio.get_running_loop()
        for sid in sids:
            self.rows[sid] = []
            task = loop.create_task(self._run(sid, n, interval))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def follow(self, sids: list[str]) -> AsyncIterator[dict[str, tuple[list[str], bool]]]:
        """Every stream of `sids`, pushed as one stream of replies (a Ray
        streaming generator, as rayflow's `follow_many`): each reply holds,
        per stream with news, its rows not sent yet and whether it is
        closed; news arriving while a reply is built goes in the next.
        Ends when every stream is closed."""
        sent = dict.fromkeys(sids, 0)
        news: set[str] = set(sids)  # the first look: everything
        wake = asyncio.Event()

        def on_news(sid: str) -> None:
            news.add(sid)
            wake.set()

        for sid in sids:
            self.watchers.setdefault(sid, []).append(on_news)
        try:
            while sent:
                if not news:
                    wake.clear()
                    await wake.wait()
                looking, news = news, set()
                out: dict[str, tuple[list[str], bool]] = {}
                for sid in looking:
                    if sid not in sent:
                        continue
                    rows, closed = self.rows.get(sid, []), sid in self.closed
                    if len(rows) > sent[sid] or closed:
                        out[sid] = (rows[sent[sid] :], closed)
                        sent[sid] = len(rows)
                        if closed:
                            del sent[sid]
                if out:
                    yield out
        finally:
            for sid in sids:
                watchers = self.watchers.get(sid, [])
                if on_news in watchers:
                    watchers.remove(on_news)


# -- the readers (helper processes) ------------------------------------------------
class Follow:
    """What one reader saw of one run."""

    def __init__(self, trigger_ns: int) -> None:
        self.trigger_ns = trigger_ns
        #: when the trigger call returned (rayflow: the run is created, QUEUED)
        self.triggered_ns = 0
        self.first_recv_ns: int | None = None
        self.first_ts = self.last_ts = 0
        self.end_ns = 0
        self.count = self.out_of_order = 0
        self.lat_ms: list[float] = []
        self.run_id = ""

    def add(self, chunk: str) -> None:
        now = time.time_ns()
        seq, ts = int(chunk[:6]), int(chunk[7:27])
        if self.first_recv_ns is None:
            self.first_recv_ns, self.first_ts = now, ts
        if seq != self.count:
            self.out_of_order += 1
        self.count += 1
        self.last_ts = ts
        self.lat_ms.append(round((now - ts) / 1e6, 3))

    def result(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "trigger_ns": self.trigger_ns,
            "triggered_ns": self.triggered_ns,
            "first_recv_ns": self.first_recv_ns,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "end_ns": self.end_ns,
            "count": self.count,
            "out_of_order": self.out_of_order,
            "lat_ms": self.lat_ms,
        }


async def _read_rayflow(job: dict[str, Any]) -> Follow:
    follow = Follow(time.time_ns())
    handle = await tokens.trigger({"n": job["tokens"], "interval": job["interval"]})
    follow.triggered_ns = time.time_ns()
    follow.run_id = handle.id
    async for chunk in out.read(handle.id, start_index=0, timeout_s=job["timeout_s"]):
        follow.add(chunk)
    follow.end_ns = time.time_ns()
    return follow


async def _read_floor(job: dict[str, Any], floor: Any) -> list[Follow]:
    """The floor's side of a reader process: its runs started in one call,
    then followed through one push stream (what rayflow's readers of one
    process do: triggers coalesced, one `follow_many` per RunActor)."""
    sids = [f"{job['prefix']}-{i}" for i in range(job["runs"])]
    follows = {sid: Follow(time.time_ns()) for sid in sids}
    await floor.start.remote(sids, job["tokens"], job["interval"])
    triggered = time.time_ns()
    for sid, follow in follows.items():
        follow.run_id, follow.triggered_ns = sid, triggered
    async for ref in floor.follow.remote(sids):
        news: dict[str, tuple[list[str], bool]] = await ref
        for sid, (rows, closed) in news.items():
            follow = follows[sid]
            for chunk in rows:
                follow.add(chunk)
            if closed:
                follow.end_ns = time.time_ns()
    return list(follows.values())


async def _reader_job(job: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, job["go_at"] - time.time()))
    if job["part"] == "rayflow":
        follows = await asyncio.gather(*(_read_rayflow(job) for _ in range(job["runs"])))
    else:
        follows = await _read_floor(job, ray.get_actor(FLOOR_NAME, namespace=FLOOR_NS))
    return {"runs": [f.result() for f in follows]}


def reader_main(args: argparse.Namespace) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def setup() -> None:
        rayflow.init(
            address=args.address,
            store=args.store or None,
            data_dir=args.data_dir,
            namespace=args.namespace,
        )

    def handle(_ctx: Any, job: dict[str, Any]) -> dict[str, Any]:
        if not args.profile_readers:
            return loop.run_until_complete(_reader_job(job))
        import cProfile

        with cProfile.Profile() as prof:
            result = loop.run_until_complete(_reader_job(job))
        prof.dump_stats(f"{args.profile_readers}/{job['prefix']}.prof")
        return result

    c.helper_main(handle, setup)


# -- measuring (the driver) ---------------------------------------------------------
def _name(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except (psutil.Error, OSError):
        return ""
    return cmd[0] if cmd else ""


def _uss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except (psutil.Error, OSError):
        return 0


class Sampler(threading.Thread):
    """Every second: CPU time of every process under this one (Ray and the
    readers); at the times asked for: USS of the processes hosting runs."""

    def __init__(self, host_prefix: str, reader_pids: list[int], memory_at: list[float]) -> None:
        super().__init__(daemon=True)
        self.host_prefix, self.reader_pids = host_prefix, set(reader_pids)
        self.memory_at = sorted(memory_at)  # wall-clock seconds
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.memory: list[dict[str, Any]] = []
        self.hosts_max = 0
        self._halt = threading.Event()
        self._procs: dict[int, psutil.Process] = {}

    def _tick(self) -> None:
        me = os.getpid()
        hosts = 0
        for pid in c.process_tree([me]):
            if pid == me:
                continue
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                times = proc.cpu_times()
            except (psutil.Error, OSError):
                continue
            self.first.setdefault(pid, 0.0)  # born during the part: all of its CPU counts
            self.last[pid] = times.user + times.system
            if pid in self.reader_pids:
                self.role[pid] = "readers"
            elif self.role.get(pid) != "hosts":
                # a worker may be idle when first seen and host an actor later
                self.role[pid] = "hosts" if _name(proc).startswith(self.host_prefix) else "rest"
            hosts += self.role[pid] == "hosts"
        self.hosts_max = max(self.hosts_max, hosts)

    def start_counting(self) -> None:
        """Processes seen from now on count from zero; those alive now from
        their CPU time now."""
        self._tick()
        for pid, cpu in self.last.items():
            self.first[pid] = cpu

    def memory_sample(self) -> dict[str, Any]:
        pids = [
            p
            for p in c.process_tree([os.getpid()])
            if _name(psutil.Process(p)).startswith(self.host_prefix)
        ]
        return {"t": time.time(), "uss": sum(_uss(p) for p in pids), "processes": len(pids)}

    def run(self) -> None:
        while not self._halt.wait(1.0):
            self._tick()
            while self.memory_at and time.time() >= self.memory_at[0]:
                self.memory_at.pop(0)
                self.memory.append(self.memory_sample())

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        self._tick()
        used: dict[str, float] = {"hosts": 0.0, "readers": 0.0, "rest": 0.0}
        for pid, cpu in self.last.items():
            used[self.role.get(pid, "rest")] += cpu - self.first.get(pid, 0.0)
        return used


def executing_at(runs: list[dict[str, Any]], t: float) -> int:
    return sum(1 for r in runs if r["count"] and r["first_ts"] / 1e9 <= t <= r["last_ts"] / 1e9)


def run_part(
    part: str, args: argparse.Namespace, readers: list[c.Helper], hosts_before: int
) -> dict[str, Any]:
    n, d = args.runs, args.duration
    n_tokens = int(d * args.rate)
    load_start = os.getloadavg()[0]
    go_at = time.time() + 2.0
    # memory while the most runs should be executing: at 40, 60, 80 % of the duration
    memory_at = [go_at + f * d for f in (0.4, 0.6, 0.8)]
    sampler = Sampler(
        "ray::RunActor" if part == "rayflow" else "ray::Floor",
        [h.proc.pid for h in readers],
        memory_at,
    )
    sampler.start_counting()
    sampler.start()
    shares = [n // len(readers) + (i < n % len(readers)) for i in range(len(readers))]
    for i, (helper, share) in enumerate(zip(readers, shares, strict=True)):
        helper.send(
            {
                "part": part,
                "runs": share,
                "tokens": n_tokens,
                "interval": 1.0 / args.rate,
                "go_at": go_at,
                "timeout_s": max(600.0, 10 * d),
                "prefix": f"{part}-{i}",
            }
        )
    runs: list[dict[str, Any]] = []
    for helper in readers:
        runs.extend(helper.result(timeout_s=max(1800.0, 30 * d))["runs"])
    cpu = sampler.stop()
    load_end = os.getloadavg()[0]

    chunks = sum(r["count"] for r in runs)
    first_trigger = min(r["trigger_ns"] for r in runs) / 1e9
    all_done = max(r["end_ns"] for r in runs) / 1e9 - first_trigger
    # runs executing at once, each second from the first trigger
    timeline = [executing_at(runs, first_trigger + s) for s in range(int(all_done) + 2)]
    best = max(sampler.memory, key=lambda m: executing_at(runs, m["t"]), default=None)
    executing_then = executing_at(runs, best["t"]) if best else 0
    lat = [x for r in runs for x in r["lat_ms"]]
    ttfc = [
        (r["first_recv_ns"] - r["trigger_ns"]) / 1e6 for r in runs if r["first_recv_ns"] is not None
    ]
    result: dict[str, Any] = {
        "runs": n,
        "duration_s": d,
        "tokens_per_run": n_tokens,
        "load": [load_start, load_end],
        "all_done_s": all_done,
        "all_done_x": all_done / d,
        "peak_executing": c.peak_streaming(runs),
        "timeline": timeline,
        "chunks": chunks,
        "chunks_expected": n * n_tokens,
        "out_of_order": sum(r["out_of_order"] for r in runs),
        "lat_ms": c.summary(lat),
        "ttfc_ms": c.summary(ttfc),
        "cpu_s": cpu,
        "cpu_us_per_chunk": 1e6 * sum(cpu.values()) / max(1, chunks),
        "host_cpu_us_per_chunk": 1e6 * cpu["hosts"] / max(1, chunks),
        "hosts_max": sampler.hosts_max,
        "memory": sampler.memory,
        "run_ids": [r["run_id"] for r in runs],
        # the share of the box's cores this part's processes used while it ran
        "cpu_busy": sum(cpu.values()) / max(1e-9, all_done * (os.cpu_count() or 1)),
    }
    if part == "rayflow":
        result["breakdown"] = breakdown(runs)
    if best and executing_then:
        result["mib_per_executing"] = best["uss"] / 2**20 / executing_then
        result["mib_over_idle_per_executing"] = (
            (best["uss"] - hosts_before) / 2**20 / executing_then
        )
        result["executing_at_memory_sample"] = executing_then
        result["host_processes_at_memory_sample"] = best["processes"]
    return result


def check_completed(run_ids: list[str]) -> dict[str, int]:
    from rayflow._runtime import connection

    store = connection.current().store
    counts: dict[str, int] = {}
    for run_id in run_ids:
        record = store.get_run(run_id)
        status = str(record.status) if record else "MISSING"
        counts[status] = counts.get(status, 0) + 1
    return counts


#: a rayflow run's way to its first token, in order: (label, from, to); the
#: clocks are the trigger call's, the Store's (ms: the run row's created_at,
#: the claim's started_at, the first chunk's created_at) and the writer's
#: (the token carries its append call's wall clock)
HOPS = [
    ("trigger call (returned)", "trigger", "triggered"),
    ("trigger → run row created (Store)", "trigger", "created"),
    ("created → claimed on a RunActor", "created", "claimed"),
    ("claimed → first append call (task loaded, started)", "claimed", "appended"),
    ("first append call → committed", "appended", "committed"),
    ("committed → reader got it", "committed", "received"),
    ("TOTAL trigger → first token", "trigger", "received"),
]


def breakdown(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Where trigger → first token goes, per hop (ms p50/p99 over the runs),
    from the readers' clocks and the Store's timestamps of each run."""
    from rayflow._runtime import connection

    store = connection.current().store
    records = store.get_runs([r["run_id"] for r in runs])
    hops: dict[str, list[float]] = {label: [] for label, _, _ in HOPS}
    for r, rec in zip(runs, records, strict=True):
        if rec is None or rec.started_at is None or r["first_recv_ns"] is None:
            continue
        first = store.read_chunks(r["run_id"], out.id, 0, 1)
        if not first:
            continue
        at = {
            "trigger": r["trigger_ns"] / 1e6,
            "triggered": r["triggered_ns"] / 1e6,
            "created": float(rec.created_at),
            "claimed": float(rec.started_at),
            "appended": r["first_ts"] / 1e6,
            "committed": float(first[0].created_at),
            "received": r["first_recv_ns"] / 1e6,
        }
        for label, a, b in HOPS:
            hops[label].append(at[b] - at[a])
    return {label: c.summary(v) for label, v in hops.items()}


def ray_workers_uss() -> tuple[int, int]:
    """(USS bytes, processes) of every Ray worker process under this one."""
    pids = [
        p for p in c.process_tree([os.getpid()]) if _name(psutil.Process(p)).startswith("ray::")
    ]
    return sum(_uss(p) for p in pids), len(pids)


def once_part(args: argparse.Namespace) -> dict[str, Any]:
    m = args.once
    load_start = os.getloadavg()[0]
    time.sleep(2.0)
    before_uss, before_procs = ray_workers_uss()
    t0 = time.monotonic()

    async def trigger_all() -> list[str]:
        ids: list[str] = []
        for start in range(0, m, 500):
            batch = [{"timeout_s": args.once_settle + 600}] * (min(m, start + 500) - start)
            ids.extend(h.id for h in await once.batch_trigger(batch))
        return ids

    ids = asyncio.run(trigger_all())
    live: list[str] = []
    deadline = time.monotonic() + args.once_settle
    while time.monotonic() < deadline:
        live = [
            r.id
            for r in rayflow.runs.list(
                status="EXECUTING", task_id="density-once", limit=m + 10
            ).result(timeout_s=120)
        ]
        if len(live) >= m:
            break
        time.sleep(1.0)
    settle_s = time.monotonic() - t0
    time.sleep(2.0)  # every live run has reached its once()
    during_uss, during_procs = ray_workers_uss()
    sends = min(args.once_sends, len(live))
    lat: list[float] = []
    for i in c.paced(sends, 0.02):
        go.send(live[i], {"ts": time.time_ns()}).result(timeout_s=60)
    for run_id in live[:sends]:
        output = rayflow.runs.wait(run_id).result(timeout_s=120).output
        if output is not None:
            lat.append(output)
    return {
        "runs": m,
        "triggered": len(ids),
        "live": len(live),
        "settle_s": settle_s,
        "kib_per_live": (during_uss - before_uss) / 1024 / max(1, len(live)),
        "worker_processes": [before_procs, during_procs],
        "send_ms": c.summary(lat),
        "load": [load_start, os.getloadavg()[0]],
    }


# -- the table ----------------------------------------------------------------------
def _ms(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "–"
    return f"{s['p50']:.1f} / {s['p99']:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return ""
    return f"×{a / b:.2f}"


def once_lines(report: dict[str, Any]) -> list[str]:
    if "once" not in report:
        return []
    o = report["once"]
    return [
        "",
        f"once: {o['live']:,} of {o['runs']:,} runs live in `.once()` after "
        f"{o['settle_s']:.0f} s; {o['kib_per_live']:.0f} KiB of Ray worker USS each "
        f"({o['worker_processes'][0]} → {o['worker_processes'][1]} worker processes); "
        f"send → received {_ms(o['send_ms'])} ms over {o['send_ms']['n']} sends; "
        f"load {o['load'][0]:.1f} → {o['load'][1]:.1f}",
    ]


def table(report: dict[str, Any]) -> str:
    parts = report["parts"]
    names = [p for p in ("rayflow", "floor") if p in parts]
    if not names:
        return "\n".join(once_lines(report)).strip()
    cfg = report["config"]
    head = (
        f"{cfg['runs']} runs × {cfg['rate']:g} tokens/s × {cfg['duration']:g} s, "
        f"{cfg['reader_procs']} reader processes, store {cfg['store_kind']}; "
        f"{report['date']}. Cells: median / p99 where two; ratio = rayflow / floor."
    )
    lines = [
        head,
        "",
        "| metric | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |"),
    ]
    lines.append("|---|" + "---:|" * (len(names) + (len(names) == 2)))

    def row(label: str, cell: Any, value: Any = None) -> None:
        cells = [cell(parts[p]) for p in names]
        ratio = ""
        if len(names) == 2 and value is not None:
            ratio = _ratio(value(parts["rayflow"]), value(parts["floor"]))
        lines.append(
            f"| {label} | " + " | ".join(cells) + (f" | {ratio} |" if len(names) == 2 else " |")
        )

    row(
        "all done after (s; × D)",
        lambda p: f"{p['all_done_s']:.1f} (×{p['all_done_x']:.2f})",
        lambda p: p["all_done_s"],
    )
    row(
        "executing at once, peak (% of N)",
        lambda p: f"{p['peak_executing']} ({100 * p['peak_executing'] / p['runs']:.0f} %)",
        lambda p: p["peak_executing"],
    )
    row(
        "memory per executing run, USS of the hosts (MiB; over idle)",
        lambda p: (
            f"{p['mib_per_executing']:.2f}; {p['mib_over_idle_per_executing']:.2f}"
            if "mib_per_executing" in p
            else "–"
        ),
        lambda p: p.get("mib_per_executing"),
    )
    row(
        "processes hosting runs, at most",
        lambda p: str(p["hosts_max"]),
        None,
    )
    row("append → reader (ms)", lambda p: _ms(p["lat_ms"]), lambda p: p["lat_ms"]["p50"])
    row("trigger → first token (ms)", lambda p: _ms(p["ttfc_ms"]), lambda p: p["ttfc_ms"]["p50"])
    row(
        "CPU per token, all processes (µs)",
        lambda p: f"{p['cpu_us_per_chunk']:.0f}",
        lambda p: p["cpu_us_per_chunk"],
    )
    row(
        "CPU per token, hosts alone (µs)",
        lambda p: f"{p['host_cpu_us_per_chunk']:.0f}",
        lambda p: p["host_cpu_us_per_chunk"],
    )
    row(
        f"CPU used, % of the box's {os.cpu_count()} cores",
        lambda p: f"{100 * p['cpu_busy']:.0f} %" if "cpu_busy" in p else "–",
        None,
    )
    row(
        "tokens read / written (out of order)",
        lambda p: f"{p['chunks']:,} / {p['chunks_expected']:,} ({p['out_of_order']})",
        None,
    )
    row(
        "load average (1 min), start → end",
        lambda p: f"{p['load'][0]:.1f} → {p['load'][1]:.1f}",
        None,
    )
    for name in names:
        p = parts[name]
        step = max(1, len(p["timeline"]) // 12)
        points = ", ".join(f"{s}s {p['timeline'][s]}" for s in range(0, len(p["timeline"]), step))
        lines.append("")
        lines.append(f"{name}, runs executing by second after the first trigger: {points}")
        if "statuses" in p:
            lines.append(f"{name}, runs by status at the end: {p['statuses']}")
    if "breakdown" in parts.get("rayflow", {}):
        lines += [
            "",
            "rayflow, trigger → first token by hop (ms; reader, Store and writer clocks;"
            " the Store's are whole ms):",
            "",
            "| hop | p50 | p99 |",
            "|---|---:|---:|",
        ]
        for label, v in parts["rayflow"]["breakdown"].items():
            if v.get("n"):
                lines.append(f"| {label} | {v['p50']:.1f} | {v['p99']:.1f} |")
    lines += once_lines(report)
    return "\n".join(lines)


def sweep_table(reports: list[dict[str, Any]]) -> str:
    """One line per N of a `--sweep`: append → reader and trigger → first
    token of rayflow and the floor, how busy the box was, the load."""
    lines = [
        "Sweep (one sitting, one Ray; each N runs the floor, then rayflow). Cells: p50 / p99 ms;"
        f" CPU = this benchmark's processes, % of the box's {os.cpu_count()} cores while the part"
        " ran; load = 1-minute load average at the part's start → end.",
        "",
        "| N | append → reader, rayflow | append → reader, floor | trigger → first token,"
        " rayflow | trigger → first token, floor | CPU rayflow / floor | all done × D,"
        " rayflow / floor | load rayflow; floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        parts = r["parts"]
        rf, fl = parts.get("rayflow", {}), parts.get("floor", {})

        def cell(p: dict[str, Any], key: str) -> str:
            return _ms(p[key]) if key in p else "–"

        def busy(p: dict[str, Any]) -> str:
            return f"{100 * p['cpu_busy']:.0f} %" if "cpu_busy" in p else "–"

        def done(p: dict[str, Any]) -> str:
            return f"×{p['all_done_x']:.2f}" if "all_done_x" in p else "–"

        def load(p: dict[str, Any]) -> str:
            return f"{p['load'][0]:.1f} → {p['load'][1]:.1f}" if "load" in p else "–"

        lines.append(
            f"| {r['config']['runs']:,} | {cell(rf, 'lat_ms')} | {cell(fl, 'lat_ms')} |"
            f" {cell(rf, 'ttfc_ms')} | {cell(fl, 'ttfc_ms')} | {busy(rf)} / {busy(fl)} |"
            f" {done(rf)} / {done(fl)} | {load(rf)}; {load(fl)} |"
        )
    return "\n".join(lines)


def measure_parts(args: argparse.Namespace, readers: list[c.Helper]) -> dict[str, Any]:
    """Each part of `--parts` at N = `args.runs`, one after the other."""
    out: dict[str, Any] = {}
    for part in [x.strip() for x in args.parts.split(",") if x.strip()]:
        print(
            f"[density {time.strftime('%H:%M:%S')}] {part}, N={args.runs} …",
            file=sys.stderr,
            flush=True,
        )
        floor = None
        if part == "floor":
            floor = Floor.options(
                name=FLOOR_NAME, namespace=FLOOR_NS, max_concurrency=2 * args.runs + 50
            ).remote()
            ray.get(floor.pid.remote())
            hosts_before = _uss(ray.get(floor.pid.remote()))
        else:
            time.sleep(1.0)
            hosts_before = sum(
                _uss(pid)
                for pid in c.process_tree([os.getpid()])
                if _name(psutil.Process(pid)).startswith("ray::RunActor")
            )
        result = run_part(part, args, readers, hosts_before)
        if part == "rayflow":
            result["statuses"] = check_completed(result["run_ids"])
        del result["run_ids"]
        out[part] = result
        if floor is not None:
            ray.kill(floor)
        time.sleep(2.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=100, help="concurrent runs N")
    p.add_argument("--duration", type=float, default=20.0, help="seconds each run streams (D)")
    p.add_argument("--rate", type=float, default=10.0, help="tokens per second per run")
    p.add_argument("--reader-procs", type=int, default=2, help="reader helper processes")
    p.add_argument("--store", default="", help="postgresql://… (default: SQLite in a temp dir)")
    p.add_argument("--parts", default="floor,rayflow", help="floor,rayflow (in this order)")
    p.add_argument(
        "--sweep",
        default="",
        help="N1,N2,…: the parts at each N in one sitting (e.g. 100,300,1000), then one table",
    )
    p.add_argument("--once", type=int, default=0, help="also M runs live in .once() (e.g. 10000)")
    p.add_argument("--once-sends", type=int, default=200)
    p.add_argument("--once-settle", type=float, default=300.0, help="seconds to wait for live")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a rayflow setting"
    )
    p.add_argument("--json", help="write the raw report here")
    p.add_argument(
        "--profile-readers",
        default="",
        metavar="DIR",
        help="cProfile each reader process's part (its main thread) into DIR/<part>-<i>.prof",
    )
    # a reader helper (started by the driver)
    p.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--namespace", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "reader":
        reader_main(args)
        return

    started = time.monotonic()
    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="rf-density-")
    schema = None
    store = args.store
    if store.startswith("postgres"):
        import uuid

        import psycopg

        schema = "rf_density_" + uuid.uuid4().hex[:10]
        with psycopg.connect(args.store, autocommit=True) as db:
            db.execute(f"CREATE SCHEMA {schema}")
        store = f"{store}{'&' if '?' in store else '?'}options=-csearch_path%3D{schema}"
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = value
    settings = rayflow.init(store=store or None, data_dir=tmp, **overrides)
    tokens.register().result()
    once.register().result()
    address = ray.get_runtime_context().gcs_address
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": {
            "runs": args.runs,
            "duration": args.duration,
            "rate": args.rate,
            "reader_procs": args.reader_procs,
            "store_kind": store.split(":")[0] if store else "sqlite",
            "settings": overrides,
            "max_live_runs": settings.max_live_runs,
        },
        "parts": {},
    }
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        "reader",
        "--address",
        address,
        "--data-dir",
        tmp,
        "--namespace",
        settings.namespace,
        "--store",
        store,
        "--profile-readers",
        args.profile_readers,
    ]
    readers = [c.Helper(list(argv)) for _ in range(args.reader_procs)]
    sizes = [int(x) for x in args.sweep.split(",") if x.strip()] if args.sweep else [args.runs]
    sweep: list[dict[str, Any]] = []
    try:
        for n in sizes:
            sized = argparse.Namespace(**{**vars(args), "runs": n})
            parts = measure_parts(sized, readers)
            if args.sweep:
                sweep.append({"config": {**report["config"], "runs": n}, "parts": parts})
                print(
                    f"[density {time.strftime('%H:%M:%S')}] N={n}:\n"
                    + table({**report, "config": {**report["config"], "runs": n}, "parts": parts}),
                    file=sys.stderr,
                    flush=True,
                )
            report["parts"] = parts
        if args.once:
            print(f"[density {time.strftime('%H:%M:%S')}] once …", file=sys.stderr, flush=True)
            report["once"] = once_part(args)
    finally:
        for helper in readers:
            helper.close()
        rayflow.shutdown(stop_runs=True)
        ray.shutdown()
        if schema is not None:
            import psycopg

            with psycopg.connect(args.store, autocommit=True) as db:
                db.execute(f"DROP SCHEMA {schema} CASCADE")
    if sweep:
        report["sweep"] = sweep
    report["seconds"] = round(time.monotonic() - started)
    report["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    text = table(report) if not sweep else sweep_table(sweep)
    print(text)
    la = report["loadavg"]
    print(
        f"\nload average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in la['before'])} before, "
        f"{'/'.join(f'{x:.1f}' for x in la['after'])} after; whole run {report['seconds']} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
