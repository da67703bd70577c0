"""The chaos soak (issue 11): nothing is lost or repeated when parts die.

    .venv/bin/python benchmarks/chaos.py --store sqlite   [--quick] [--seed 11]
    .venv/bin/python benchmarks/chaos.py --store postgres [--quick]

Starts the embedded default (a local Ray on 127.0.0.1 through rayflow's own
start path, the HTTP API on a free loopback port) on a fresh SQLite file or a
PostgreSQL server of its own (scripts/postgres.sh into a temporary directory,
on a free port; installed from the Debian packages when missing — never the
suite's shared server, since this one is restarted). Then, per fault kind, one
phase: N runs streaming output and waiting for input (`.wait()` suspension and
revival, `.once()`), Python and SSE readers and Python/HTTP senders that
retry, while a seeded schedule injects that kind of fault one at a time —
SIGKILL of a live run's RunActor, of the Inbox, of the Controller, of the
Serve replica, or (postgres) an immediate stop of PostgreSQL and a start
0.5–3 s later — and a last phase mixing all kinds. The workload and the
checks are in benchmarks/_chaos_soak.py.

Prints one row per phase: faults injected, runs completed, chunks lost and
duplicated (in the Store, the Python readers, the SSE readers), acknowledged
messages lost/duplicated, time to recover (p50 / max; what "recovered" means
per kind is in `_chaos_soak.Soak`), reconnects and send retries, beside
`os.getloadavg()`. Bounded: a fixed number of faults per phase, each phase
with a time limit. Exits 1 when anything was lost, duplicated or hung.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# docs/scaling.md: Ray reads this when it is imported (rayflow imports Ray below)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import concurrent.futures  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from _chaos_soak import Soak  # noqa: E402
from _chaos_workload import KINDS, PhaseResult  # noqa: E402

import rayflow  # noqa: E402
from rayflow.errors import Unavailable  # noqa: E402
from serve.app import wait_ready  # noqa: E402

SIZES = {
    "full": {"runs": 20, "rounds": 6, "chunks": 20, "faults": 6, "mixed_faults": 12},
    "quick": {"runs": 6, "rounds": 4, "chunks": 10, "faults": 3, "mixed_faults": 5},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivatePostgres:
    """A PostgreSQL server of this benchmark's own (scripts/postgres.sh in a
    temporary directory), which it may stop and start at will."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "postgres"
        root.chmod(0o755)  # mkdtemp's 0700 would keep the `postgres` user out
        # durable like a real server (scripts/postgres.sh turns fsync and
        # synchronous_commit off for tests: an immediate stop would then drop
        # the last commits, acknowledged ones included)
        self.env = {**os.environ, "RAYFLOW_PG_PORT": str(free_port()), "RAYFLOW_PG_DURABLE": "1"}
        # pg_ctl gets a thread of its own: on asyncio's default executor it
        # queued behind the soak's own blocking calls, which wait out the
        # outage (up to 60 s), so "down 0.5–3 s" became a 60 s outage
        self._pg_ctl_thread = concurrent.futures.ThreadPoolExecutor(1, "pg_ctl")
        self.url = self._start()

    def _start(self) -> str:
        out = subprocess.run(
            ["bash", str(REPO / "scripts" / "postgres.sh"), str(self.dir)],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def _pg_ctl(self, *args: str) -> None:
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        cmd = [str(bindir / "pg_ctl"), *args, "-D", str(self.dir / "data")]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    async def restart(self, downtime_s: float) -> None:
        """Stop at once (like a crash: no shutdown checkpoint, clients cut
        off), stay down `downtime_s`, start again on the same port."""
        loop = asyncio.get_running_loop()
        stop = ("stop", "-m", "immediate", "-w")
        await loop.run_in_executor(self._pg_ctl_thread, self._pg_ctl, *stop)
        await asyncio.sleep(downtime_s)
        url = await loop.run_in_executor(self._pg_ctl_thread, self._start)
        assert url == self.url, f"PostgreSQL came back on another address: {url}"

    def stop(self) -> None:
        self._pg_ctl_thread.shutdown()
        subprocess.run(
            ["bash", str(REPO / "scripts" / "postgres.sh"), "--stop", str(self.dir)],
            env=self.env,
            capture_output=True,
        )


def table(rows: list[PhaseResult], load: tuple[float, float, float]) -> str:
    head = (
        f"{'phase':<11} {'faults':>6} {'runs done':>9} {'chunks':>7}"
        f" {'lost st/py/sse':>14} {'dup st/py/sse':>13} {'msgs acked':>10}"
        f" {'msg lost/dup':>12} {'recover p50/max s':>17} {'reconn py/sse':>13}"
        f" {'send retries':>12} {'secs':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lost = "/".join(str(r.lost[v]) for v in ("store", "python", "sse"))
        dup = "/".join(str(r.duplicated[v]) for v in ("store", "python", "sse"))
        faults = sum(r.faults.values())
        reconnects = f"{r.reconnects['python']}/{r.reconnects['sse']}"
        lines.append(
            f"{r.name:<11} {faults:>6} {f'{r.completed}/{r.runs}':>9} {r.chunks_expected:>7}"
            f" {lost:>14} {dup:>13} {r.messages_acked:>10}"
            f" {f'{r.messages_lost}/{r.messages_duplicated}':>12} {r.recover_text():>17}"
            f" {reconnects:>13}"
            f" {r.send_retries:>12} {r.seconds:>5.0f}"
        )
    lines.append(f"os.getloadavg() at the end: {tuple(round(x, 2) for x in load)}")
    return "\n".join(lines)


async def soak(args: argparse.Namespace, url: str, secret: str, pg: PrivatePostgres | None) -> int:
    size = SIZES["quick" if args.quick else "full"]
    kinds = [k for k in KINDS if (k != "postgres" or pg is not None) and k in args.kinds]
    verbose = args.verbose
    obj = Soak(
        url,
        secret,
        seed=args.seed,
        restart_store=pg.restart if pg else None,
        log=(lambda line: print("  ", line, flush=True)) if verbose else (lambda line: None),
    )
    common = {
        "runs": size["runs"],
        "rounds": size["rounds"],
        "chunks": size["chunks"],
        "gap_s": 0.02,
        "fault_gap_s": (0.3, 1.5),
        "timeout_s": args.phase_timeout,
    }
    rows: list[PhaseResult] = []
    phases = [(k, [k], size["faults"]) for k in kinds]
    if len(kinds) > 1:
        phases.append(("mixed", kinds, size["mixed_faults"]))
    print(f"load before: {os.getloadavg()}", flush=True)
    for name, phase_kinds, faults in phases:
        print(f"phase {name}: {common['runs']} runs, up to {faults} faults …", flush=True)
        row = await obj.phase(name, phase_kinds, faults=faults, **common)
        rows.append(row)
        for problem in row.problems[:10]:
            print("   problem:", problem, flush=True)
    print()
    print(f"chaos soak, store={args.store}, seed={args.seed}, {'quick' if args.quick else 'full'}")
    print(table(rows, os.getloadavg()))
    return 0 if all(r.clean for r in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--quick", action="store_true", help="fewer runs and faults")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--phase-timeout", type=float, default=300.0)
    parser.add_argument(
        "--kinds",
        type=lambda v: v.split(","),
        default=list(KINDS),
        help=f"comma-separated fault kinds, of {','.join(KINDS)} (default: all)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every fault and retry")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rayflow-chaos-"))
    pg = PrivatePostgres(root) if args.store == "postgres" else None
    try:
        store = pg.url if pg else f"sqlite:///{root / 'chaos.db'}"
        settings = rayflow.init(
            store=store,
            data_dir=root / "data",
            namespace="rayflow-chaos",
            serve=True,
            http_port=free_port(),
        )
        url = f"http://127.0.0.1:{settings.http_port}"
        try:
            wait_ready(url, timeout_s=120)
        except Unavailable as e:
            raise SystemExit(str(e)) from None
        return asyncio.run(soak(args, url, settings.secret_key, pg))
    finally:
        rayflow.shutdown(stop_runs=True)
        if pg:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
