"""Input streams: what a run costs from trigger to `.wait()` and back
(issue 3 item 7, issue 14 item 5), side by side in one run with the floor
of a bare Ray actor measured in the same run.

On the embedded default (local Ray on 127.0.0.1 + SQLite):

0. floors: a cold bare actor, created and called once (p50/p99), one call
   to a live bare actor, and Ray's actor create rate (K bare actors created
   at once: actors/s);
a. N runs triggered at once (`Task.batch_trigger` when it exists, else
   concurrent `.trigger()`s) until all wait in `.wait()`: runs/s, seconds,
   RunActor processes alive while they wait (right away and after the pool's
   idle time), Store bytes per waiting run;
b. a send to all N at once: runs/s until all completed, send -> resumed
   p50/p99 under that burst; the same for a burst of 1,000 sends to 1,000
   other waiting runs;
c. one revival at a time: send -> resumed p50/p99;
plus send -> `.once()` returned (live run) and the revival of a run with a
1,000-entry journal.

Latency is the task's `time.time_ns()` right after it resumed (the run's
output, or a chunk) minus the driver's `time.time_ns()` just before its
send went out (one machine, one clock). Every phase has a budget and stops
by itself, reporting how far it got. The load average is printed beside
every figure: figures under load are indicative only.

    python benchmarks/input.py [--full] [--runs 2000] [--burst 1000] [--waits 30]

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
import tempfile  # noqa: E402
import time  # noqa: E402

import ray  # noqa: E402

import rayflow  # noqa: E402
from rayflow import step, streams, task  # noqa: E402
from rayflow._runtime import connection  # noqa: E402

go = streams.input("bench-go", dict)
ping = streams.input("bench-ping", dict)
pongs = streams.define("bench-pong", int)
BATCH = 500  # payloads per batch_trigger call


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


class Bench:
    def __init__(self, args: argparse.Namespace, store: sup.StoreView) -> None:
        self.args, self.store = args, store
        self.rows: list[tuple[str, str, str]] = []  # (figure, value, against the floor)
        self.all_ids: list[str] = []

    def row(self, figure: str, value: str, ratio: str = "") -> None:
        self.rows.append((figure, value, f"{ratio}   [{sup.load()}]"))

    # -- 0. floors -------------------------------------------------------------------
    def floors(self) -> None:
        a = self.args
        deadline = time.monotonic() + a.floor_budget_s
        print("0. floors (bare Ray actors)")
        self.cold: list[float] = []
        while len(self.cold) < a.cold and time.monotonic() < deadline:
            t0 = time.perf_counter()
            actor = Bare.remote()
            ray.get(actor.ping.remote())
            self.cold.append((time.perf_counter() - t0) * 1000)
            ray.kill(actor)
            time.sleep(0.3)  # let the process go before the next one
        sup.line("create an actor + call it once", self.cold)
        actor = Bare.remote()
        ray.get(actor.ping.remote())
        self.calls = []
        cpu0 = sup.cpu_seconds()
        for _ in range(200):
            t0 = time.perf_counter()
            ray.get(actor.ping.remote())
            self.calls.append((time.perf_counter() - t0) * 1000)
        # what one actor call costs in CPU, caller and callee and Ray together:
        # every send is at least one such call
        self.call_cpu_ms = (sup.cpu_seconds() - cpu0) * 1000 / 200
        ray.kill(actor)
        sup.line("call a live actor (round trip)", self.calls)
        sup.say("CPU per actor call (every process)", f"{self.call_cpu_ms:.2f} ms")
        t0 = time.perf_counter()
        actors = [Bare.remote() for _ in range(a.create)]
        refs = [x.ping.remote() for x in actors]
        left = max(1.0, deadline - time.monotonic())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=left)
        secs = time.perf_counter() - t0
        self.create_rate = len(ready) / secs
        for x in actors:
            ray.kill(x)
        sup.say(
            f"create {a.create} actors at once",
            f"{len(ready)} ready in {secs:.1f} s = {self.create_rate:.1f} actors/s",
        )
        self.row("floor: cold actor create + call p50/p99", self._ms(self.cold))
        self.row("floor: actor create rate", f"{self.create_rate:.1f} actors/s")
        self.row("floor: CPU per actor call, all processes", f"{self.call_cpu_ms:.2f} ms")

    # -- building blocks -------------------------------------------------------------
    def trigger(self, payloads: list[dict], budget_s: float) -> list[str]:
        if hasattr(wait_task, "batch_trigger"):
            chunks = [payloads[i : i + BATCH] for i in range(0, len(payloads), BATCH)]
            fired = sup.fire(
                lambda i: wait_task.batch_trigger(chunks[i]), range(len(chunks)), budget_s
            )
            ids = [h.id for i in sorted(fired.results) for h in fired.results[i]]
        else:
            fired = sup.fire(
                lambda i: wait_task.trigger(payloads[i]), range(len(payloads)), budget_s
            )
            ids = [fired.results[i].id for i in sorted(fired.results)]
        fired.report_errors("triggers")
        self.all_ids.extend(ids)
        return ids

    def suspend(
        self, n: int, budget_s: float, payload: dict | None = None
    ) -> tuple[list[str], float]:
        """Trigger n runs at once; (ids, seconds until all waited or the budget ran out)."""
        t0 = time.perf_counter()
        ids = self.trigger([dict(payload or {}) for _ in range(n)], budget_s)
        left = budget_s - (time.perf_counter() - t0)
        sup.wait_until(lambda: self.store.count(ids, "WAITING") == len(ids), max(0.0, left), 0.2)
        return ids, time.perf_counter() - t0

    def burst(self, label: str, ids: list[str], budget_s: float) -> None:
        """Send to all `ids` at once; runs/s until all completed, send -> resumed,
        and the CPU all processes spent per revival — the floor under the burst:
        with C ms of CPU per revival on K cores, the last of N revivals cannot
        complete before N*C/K ms after the first send."""
        cpu0 = sup.cpu_seconds()
        t0 = time.perf_counter()
        fired = sup.fire(lambda run_id: go.send(run_id, {}), ids, budget_s)
        fired.report_errors("sends")
        acked = list(fired.results)
        left = budget_s - (time.perf_counter() - t0)
        sup.wait_until(
            lambda: self.store.count(acked, "COMPLETED") == len(acked), max(0.0, left), 0.2
        )
        secs = time.perf_counter() - t0
        outputs = self.store.outputs(acked)
        lat = [(outputs[i] - fired.started[i]) / 1e6 for i in outputs]
        rate = len(outputs) / secs
        sup.say(
            "sends acknowledged",
            f"{len(acked):,} of {len(ids):,} in {fired.seconds:.1f} s",
        )
        sup.say(
            "revived and completed",
            f"{len(outputs):,} in {secs:.1f} s = {rate:.1f} runs/s"
            f" ({rate / self.create_rate:.1f}x the actor create rate)",
        )
        cpu_ms = (sup.cpu_seconds() - cpu0) * 1000 / max(1, len(outputs))
        cores = os.cpu_count() or 1
        floor_ms = len(outputs) * cpu_ms / cores
        sup.say(
            "CPU per revival (every process of this Ray)",
            f"{cpu_ms:.1f} ms -> the last of {len(outputs):,} cannot resume before"
            f" {floor_ms:,.0f} ms on {cores} cores",
        )
        sup.line("send -> resumed", lat)
        ratio = self._ratio(lat)
        print(f"  {'':<46} {ratio}")
        self.row(
            f"{label}: runs/s until all completed",
            f"{len(outputs):,} in {secs:.1f} s = {rate:.1f}/s",
            f"{rate / self.create_rate:.1f}x create rate",
        )
        self.row(f"{label}: send -> resumed p50/p99", self._ms(lat), ratio)
        self.row(
            f"{label}: CPU per revival, all processes",
            f"{cpu_ms:.1f} ms",
            f"floor for the last: {floor_ms:,.0f} ms = {floor_ms / sup.p50(self.cold):.2f}x cold",
        )
        # any design: each send is at least one actor call
        call_floor_ms = len(outputs) * self.call_cpu_ms / cores
        self.row(
            f"{label}: floor of one actor call per send",
            f"{call_floor_ms:,.0f} ms for the last",
            f"= {call_floor_ms / sup.p50(self.cold):.2f}x cold",
        )

    def _ms(self, xs: list[float]) -> str:
        return f"{sup.p50(xs):.1f} / {sup.pct(xs, 0.99):.1f} ms (n={len(xs)})"

    def _ratio(self, xs: list[float]) -> str:
        return (
            f"x cold actor: p50 {sup.p50(xs) / sup.p50(self.cold):.2f}"
            f"  p99 {sup.pct(xs, 0.99) / sup.pct(self.cold, 0.99):.2f}"
        )

    def warm_actors(self) -> int:
        live = len(ray.get(connection.current().controller.live_runs.remote()))
        return sup.run_actor_processes() - live

    # -- c. one revival at a time ----------------------------------------------------
    def one_at_a_time(self) -> None:
        a = self.args
        print(f"c. send -> resumed after .wait(), one at a time ({a.waits} runs)")
        ids, _ = self.suspend(a.waits, a.phase_budget_s)
        waiting = self.store.with_status(ids, "WAITING")
        deadline = time.monotonic() + a.phase_budget_s
        lat, hot = [], []
        for run_id in waiting:
            if time.monotonic() > deadline:
                print(f"  (budget spent after {len(lat)} of {len(waiting)})")
                break
            sup.wait_until(lambda: self.warm_actors() >= 1, a.gap_s, 0.1)
            warm = self.warm_actors()
            t0 = time.time_ns()
            go.send(run_id, {}).result(timeout_s=60)
            resumed = rayflow.runs.wait(run_id).result(timeout_s=120).output
            lat.append((resumed - t0) / 1e6)
            hot.append(warm > 0)
        sup.line("all", lat)
        sup.line("a warm RunActor at the send", [x for x, h in zip(lat, hot, strict=True) if h])
        print(f"  {'':<46} {self._ratio(lat)} (goal p50 <= 0.25)")
        self.row("c. one at a time: send -> resumed p50/p99", self._ms(lat), self._ratio(lat))

    # -- send -> once (live run) -----------------------------------------------------
    def once_latency(self) -> None:
        n = self.args.onces
        print(f"send -> .once() returned (run live, {n} sends)")
        handle = once_task.trigger({"n": n + 1}).result(timeout_s=60)
        self.all_ids.append(handle.id)
        reader = iter(pongs.read(handle.id, start_index=0, timeout_s=120))
        out = []
        deadline = time.monotonic() + self.args.phase_budget_s
        for _ in range(n + 1):
            if time.monotonic() > deadline:
                break
            t0 = time.time_ns()
            ping.send(handle.id, {}).result(timeout_s=60)
            out.append((next(reader) - t0) / 1e6)
            time.sleep(0.02)
        out = out[1:]  # the first also waited for the run to start
        sup.line("all", out)
        ratio = f"x live actor call: p50 {sup.p50(out) / sup.p50(self.calls):.1f}"
        print(f"  {'':<46} {ratio}")
        self.row("send -> .once() p50/p99", self._ms(out), ratio)

    # -- a revival that replays a long journal ---------------------------------------
    def long_journal(self) -> None:
        a = self.args
        print(f"revive a run with a {a.journal:,}-entry journal ({a.journal_runs} runs)")
        deep, build_s = self.suspend(a.journal_runs, a.phase_budget_s, {"steps": a.journal})
        shallow, _ = self.suspend(a.journal_runs, a.phase_budget_s)
        d, s = [], []
        for pair in zip(deep, shallow, strict=True):
            for run_id, out in zip(pair, (d, s), strict=True):
                sup.wait_until(lambda: self.warm_actors() >= 1, a.gap_s, 0.1)
                t0 = time.time_ns()
                go.send(run_id, {}).result(timeout_s=60)
                out.append((rayflow.runs.wait(run_id).result(timeout_s=120).output - t0) / 1e6)
        sup.line(f"send -> resumed, {a.journal:,} entries", d)
        sup.line("send -> resumed, empty journal", s)
        extra = sup.p50(d) - sup.p50(s)
        sup.say(
            "replay cost",
            f"{extra:+.1f} ms ({extra * 1000 / a.journal:+.1f} us/entry);"
            f" journals written in {build_s:.1f} s",
        )
        self.row(
            f"revival, {a.journal:,}-entry journal: p50",
            f"{sup.p50(d):.1f} ms",
            f"{extra:+.1f} ms vs empty",
        )

    # -- a. and b. -------------------------------------------------------------------
    def many(self, label: str, n: int, settle: bool) -> None:
        a = self.args
        print(f"{label}. {n:,} runs triggered at once until all wait in .wait()")
        before = self.store.bytes_used()
        ids, secs = self.suspend(n, a.phase_budget_s)
        waiting = self.store.with_status(ids, "WAITING")
        rate = len(waiting) / secs
        sup.say(
            "runs waiting",
            f"{len(waiting):,} of {len(ids):,} triggered (of {n:,}) in {secs:.1f} s"
            f" = {rate:.1f} runs/s ({rate / self.create_rate:.1f}x the actor create rate)",
        )
        self.row(
            f"{label}. {n:,} runs: trigger -> all waiting",
            f"{len(waiting):,} in {secs:.1f} s = {rate:.1f}/s",
            f"{rate / self.create_rate:.1f}x create rate",
        )
        procs = sup.run_actor_processes()
        sup.say("RunActor processes alive while they wait", f"{procs} right away {self._pool()}")
        if settle:
            time.sleep(a.settle_s)  # the pool's idle time: it should shrink to its minimum
            procs_later = sup.run_actor_processes()
            sup.say(f"... {a.settle_s:.0f} s later", f"{procs_later} {self._pool()}")
            self.row(
                f"{label}. {n:,} runs: RunActor processes while waiting",
                f"{procs} at once, {procs_later} after {a.settle_s:.0f} s",
            )
            per_run = (self.store.bytes_used() - before) / max(1, len(waiting))
            sup.say("Store bytes per waiting run", f"{per_run:,.0f} B (goal <= 2,048)")
            self.row(f"{label}. {n:,} runs: Store bytes per waiting run", f"{per_run:,.0f} B")
        print(f"b. a send to all {len(waiting):,} at once")
        self.burst(f"b. send to {len(waiting):,} at once", waiting, a.phase_budget_s)

    def _pool(self) -> str:
        controller = connection.current().controller
        try:
            return f"(pool {ray.get(controller.pool_stats.remote(), timeout=10)})"
        except AttributeError:  # no pool_stats before issue 14
            return ""

    def cancel_leftovers(self) -> None:
        left = self.store.unfinished(self.all_ids)
        if left:
            print(f"canceling {len(left):,} runs that did not finish")
            sup.fire(lambda run_id: rayflow.runs.cancel(run_id), left, 120).report_errors("cancels")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="N = 10,000 runs in a. and b.")
    parser.add_argument("--runs", type=int, default=2000, help="N runs in a. and b.")
    parser.add_argument("--burst", type=int, default=1000, help="runs in the burst of b.")
    parser.add_argument("--waits", type=int, default=30, help="runs revived one at a time")
    parser.add_argument("--cold", type=int, default=10, help="bare actors created one by one")
    parser.add_argument("--create", type=int, default=20, help="bare actors created at once")
    parser.add_argument("--onces", type=int, default=100)
    parser.add_argument("--journal", type=int, default=1000, help="entries before the wait")
    parser.add_argument("--journal-runs", type=int, default=2)
    parser.add_argument("--gap-s", type=float, default=5.0, help="max wait for a warm actor in c.")
    parser.add_argument(
        "--settle-s", type=float, default=None, help="default: pool idle time + 5 s"
    )
    parser.add_argument("--floor-budget-s", type=float, default=90.0)
    parser.add_argument("--phase-budget-s", type=float, default=300.0, help="per phase")
    args = parser.parse_args()
    if args.full:
        args.runs = 10_000
    t_start = time.perf_counter()
    data_dir = tempfile.mkdtemp(prefix="rf-bench-input-")
    try:
        settings = rayflow.init(data_dir=data_dir)
    except Exception as e:  # Ray's start-up can time out on a loaded box: once more
        print(f"rayflow.init failed ({e}); retrying once")
        ray.shutdown()
        settings = rayflow.init(data_dir=data_dir)
    exposed = sup.non_loopback_listeners()
    if exposed:
        rayflow.shutdown(stop_runs=True)
        raise SystemExit(f"Ray listens outside 127.0.0.1: {exposed}")
    idle_s = getattr(settings, "pool_idle_s", 0.0)
    args.settle_s = args.settle_s if args.settle_s is not None else idle_s + 5.0
    pool = {
        k: v
        for k, v in settings.model_dump().items()
        if k.startswith("pool") or k in ("max_live_runs", "max_runs_per_actor")
    }
    batch = "yes" if hasattr(wait_task, "batch_trigger") else "no (a gather of trigger)"
    print(
        f"embedded default: local Ray on 127.0.0.1 (listening on loopback only), {settings.store}"
        f" (synchronous={settings.sqlite_synchronous}), {pool}, {os.cpu_count()} cores,"
        f" batch_trigger: {batch},"
        f" {sup.load()}"
    )
    bench = Bench(args, sup.StoreView(settings.store_url()))
    try:
        bench.floors()
        bench.one_at_a_time()
        if args.onces:
            bench.once_latency()
        if args.journal_runs:
            bench.long_journal()
        if args.burst:
            bench.many("b", args.burst, settle=False)
            bench.cancel_leftovers()
        bench.many("a", args.runs, settle=True)
    finally:
        bench.cancel_leftovers()
        print(f"\nside by side (whole benchmark {time.perf_counter() - t_start:.0f} s)")
        for figure, value, ratio in bench.rows:
            print(f"  {figure:<48} {value:<34} {ratio}")
        rayflow.shutdown(stop_runs=True)


if __name__ == "__main__":
    main()
