#!/usr/bin/env python3
"""rayflow against its peers: the same workloads, one command, one table.

    python benchmarks/peers/run.py                 # everything (~15-20 min on 2 cores)
    python benchmarks/peers/run.py --quick         # small sizes, a few minutes
    python benchmarks/peers/run.py --only dbos,redis --workloads 1,3

Sets up what it needs (a venv with the peers' packages in benchmarks/peers/.work,
Debian's redis-server and postgresql, the Restate server from npm), then runs
the benchmark inside a fresh network namespace holding only the loopback
interface (``unshare -n``), so no peer can reach anything but 127.0.0.1. Starts
each server on a free loopback port, runs each system's module in its own
process, prints the table and writes it into benchmarks/README.md between
``<!-- peers:begin -->`` and ``<!-- peers:end -->``. Every server it started is
stopped at the end, also on error.

Workloads (issue 7): 1 output stream live, 2 late reader, 3 input while running,
4 suspend and resume, 5 output stream over SSE; (issue 21) 6 many runs streaming
at once: N runs × 10 tokens/s × D s, a reader each; (issue 22) 7 chat turns: a
user sends a message, a fake model streams a 20-token reply, the user thinks, again.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = HERE / ".work"
VENV = WORK / "venv"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"

# Pinned: the table is only comparable between runs with the same peers.
PEER_PACKAGES = [
    "dbos==3.4.0",
    "psycopg[binary]==3.3.9",
    "restate-sdk==1.3.0",
    "hypercorn==0.18.0",
    "fastapi==0.165.0",
    "sse-starlette==3.7.0",
    "redis==8.1.0",
    "uvicorn==0.54.0",
    # uvicorn[standard]'s parser and loop: rayflow's replica runs on both
    "httptools==0.9.0",
    "uvloop==0.23.0",
    "httpx==0.28.1",
]
RESTATE_NPM = "@restatedev/restate-server@1.7.12"

# name, module, which python runs it ("peers" venv or the "project" venv), servers it needs
SYSTEMS: list[dict[str, Any]] = [
    {"name": "rayflow", "module": "rayflow_peer.py", "python": "project", "needs": []},
    {
        "name": "dbos-postgres",
        "module": "dbos_peer.py",
        "python": "peers",
        "needs": ["postgres"],
        "extra": {"variant": "postgres"},
    },
    {
        "name": "dbos-sqlite",
        "module": "dbos_peer.py",
        "python": "peers",
        "needs": [],
        "extra": {"variant": "sqlite"},
    },
    {"name": "restate", "module": "restate_peer.py", "python": "peers", "needs": ["restate"]},
    {"name": "redis-diy", "module": "redis_diy_peer.py", "python": "peers", "needs": ["redis"]},
    {"name": "ray-serve", "module": "serve_stream_peer.py", "python": "project", "needs": []},
]

SIZES = {
    "full": {
        "n_chunks": 10_000,
        "reps": 3,
        "rep_budget_s": 45,
        "write_budget_s": 90,
        "late_reps": 5,
        "n_inputs": 100,
        "input_gap_s": 0.05,
        "n_waiters": 2000,
        "n_resume": 100,
        "resume_gap_s": 0.05,
        "send_budget_s": 40,
        "wait_settle_s": 90,
        "density_runs": 1000,
        "density_duration_s": 20,
        "chat_turns": 20,
        "turn_gap_s": 1.0,
        "timeout_s": 420,
    },
    "quick": {
        "n_chunks": 2_000,
        "reps": 1,
        "rep_budget_s": 20,
        "write_budget_s": 30,
        "late_reps": 3,
        "n_inputs": 40,
        "input_gap_s": 0.05,
        "n_waiters": 200,
        "n_resume": 40,
        "resume_gap_s": 0.05,
        "send_budget_s": 20,
        "wait_settle_s": 40,
        "density_runs": 100,
        "density_duration_s": 10,
        "chat_turns": 8,
        "turn_gap_s": 1.0,
        "timeout_s": 180,
    },
}


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- setup: everything from the package registries, once ---


def setup(systems: list[dict[str, Any]]) -> None:
    needs = {n for s in systems for n in s["needs"]}
    apt = []
    if "redis" in needs and not shutil.which("redis-server"):
        apt.append("redis-server")
    if "postgres" in needs and not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        apt.append("postgresql")
    if apt:
        log(f"apt-get install {' '.join(apt)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *apt],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    if any(s["python"] == "peers" for s in systems):
        marker = VENV / "peers-requirements.txt"
        wanted = "\n".join(PEER_PACKAGES)
        if not marker.exists() or marker.read_text() != wanted:
            log(f"creating {VENV} with {len(PEER_PACKAGES)} packages from PyPI")
            if not (VENV / "bin/python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(VENV / "bin/pip"), "install", "-q", *PEER_PACKAGES], check=True)
            marker.write_text(wanted)
    if "restate" in needs:
        from _servers import RESTATE_BIN

        if not RESTATE_BIN.exists():
            log(f"npm install {RESTATE_NPM}")
            (WORK / "restate").mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", RESTATE_NPM],
                cwd=WORK / "restate",
                check=True,
            )


def project_python() -> str:
    venv = REPO / ".venv/bin/python"
    return str(venv) if venv.exists() else sys.executable


# --- the benchmark phase (inside the loopback-only namespace) ---


def run_system(system: dict[str, Any], cfg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    python = str(VENV / "bin/python") if system["python"] == "peers" else project_python()
    with tempfile.TemporaryDirectory(prefix=f"peers-{system['name']}-") as tmp:
        cfg_path, out_path = Path(tmp) / "config.json", Path(tmp) / "result.json"
        cfg = {**cfg, **system.get("extra", {}), "system": system["name"], "tmp": tmp}
        cfg_path.write_text(json.dumps(cfg))
        argv = [
            python,
            str(HERE / system["module"]),
            "bench",
            "--config",
            str(cfg_path),
            "--out",
            str(out_path),
        ]
        started = time.monotonic()
        # its own process group, so a timeout ends the module and every helper it started
        proc = subprocess.Popen(argv, cwd=HERE, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
        finally:
            # helpers left behind by a crash must not outlive the system's turn
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        seconds = round(time.monotonic() - started, 1)
        result: dict[str, Any] = {}
        if out_path.exists():
            result = json.loads(out_path.read_text())
        if "not_yet" in result:
            return {"not_yet": result["not_yet"], "seconds": seconds}
        if rc is None:
            result["_error"] = f"timed out after {timeout_s:.0f} s"
        elif rc != 0 and not result:
            result["_error"] = f"exited with {rc}"
        result["seconds"] = seconds
        return result


def bench(args: argparse.Namespace, systems: list[dict[str, Any]]) -> dict[str, Any]:
    from _servers import Servers, free_port

    size = dict(SIZES["quick" if args.quick else "full"])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in size:
            raise SystemExit(f"--set {key}: not a size parameter ({', '.join(size)})")
        size[key] = float(value) if "." in value else int(value)
    timeout_s = size.pop("timeout_s")
    workloads = [int(w) for w in args.workloads.split(",")]
    servers = Servers()
    atexit.register(servers.stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {}
    try:
        for system in systems:
            cfg: dict[str, Any] = {
                **size,
                "workloads": workloads,
                "free_ports": [free_port() for _ in range(3)],
                "repo": str(REPO),
                "netns": bool(os.environ.get("PEERS_NETNS")),
            }
            try:
                for need in system["needs"]:
                    if need == "postgres":
                        if "postgres" not in servers.info:
                            servers.start_postgres()
                        cfg["pg_url"] = servers.create_database(
                            f"bench_{system['name'].replace('-', '_')}_{int(time.time())}"
                        )
                        cfg["pg_pid"] = servers.info["postgres"]["pid"]
                    elif need == "redis":
                        info = servers.info.get("redis") or servers.start_redis()
                        cfg["redis_port"], cfg["redis_pid"] = info["port"], info["pid"]
                    elif need == "restate":
                        if not os.environ.get("PEERS_NETNS"):
                            raise RuntimeError(
                                "skipped: the Restate server checks for new versions on the "
                                "internet; run.py runs it only in a loopback-only namespace "
                                "(unshare -n), which is not available here"
                            )
                        info = servers.info.get("restate") or servers.start_restate()
                        cfg["restate"] = info
            except Exception as e:
                log(f"{system['name']}: cannot start its servers: {e}")
                results[system["name"]] = {"_error": str(e)[:300]}
                continue
            log(f"{system['name']}: running workloads {workloads}")
            results[system["name"]] = run_system(system, cfg, timeout_s)
            log(f"{system['name']}: done in {results[system['name']].get('seconds')} s")
    finally:
        servers.stop_all()
    return {
        "size": "quick" if args.quick else "full",
        "workloads": workloads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "results": results,
        "size_params": size,
    }


# --- the table ---

# (workload, label, key path, unit, lower is better, show p99)
METRICS = [
    (1, "chunks/s (median of runs)", ("w1", "throughput"), "/s", False, False),
    (1, "write→read latency", ("w1", "lat_ms"), "ms", True, True),
    (2, "first chunk from offset 0", ("w2", "ttfc0_ms"), "ms", True, True),
    (2, "first chunk from offset 9,000", ("w2", "ttfc_late_ms"), "ms", True, True),
    (2, "read all from offset 0", ("w2", "all0_ms"), "ms", True, True),
    (3, "send → received (running)", ("w3", "lat_ms"), "ms", True, True),
    (4, "send → continued (suspended)", ("w4", "lat_ms"), "ms", True, True),
    (4, "runs waiting at once", ("w4", "waiting"), "", False, False),
    (4, "memory per waiting run", ("w4", "pss_kib_per_wait"), "KiB", True, False),
    (4, "processes held while waiting", ("w4", "processes_held"), "", True, None),
    (5, "SSE chunks/s (median of runs)", ("w5", "throughput"), "/s", False, False),
    (5, "SSE write→read latency", ("w5", "lat_ms"), "ms", True, True),
    (6, "N runs streaming: all done after", ("w6", "all_done_s"), "s", True, False),
    (6, "N runs streaming: most at once", ("w6", "peak"), "", False, False),
    (6, "N runs streaming: write→read latency", ("w6", "lat_ms"), "ms", True, True),
    (7, "chat turn: send → first token", ("w7", "first_ms"), "ms", True, True),
    (7, "chat turn: send → turn complete", ("w7", "done_ms"), "ms", True, True),
]


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "–"
    if float(x).is_integer() and unit in ("", "/s"):
        return f"{x:,.0f}"
    if unit == "/s" or abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _ratio(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _cell(result: dict[str, Any], path: tuple[str, str]) -> tuple[str, float | None]:
    """Text of one cell and the number ratios are taken of (the median)."""
    if "not_yet" in result:
        return "not yet", None
    if "_error" in result and path[0] not in result:
        return "failed", None
    w = result.get(path[0])
    if w is None:
        return "–", None
    if "na" in w:
        return "n/a", None
    if "error" in w:
        return "failed", None
    v = w.get(path[1])
    if v is None:
        return "–", None
    if isinstance(v, dict):
        if v.get("na"):
            return "n/a", None
        return "", v.get("p50")
    return "", float(v)


def table(report: dict[str, Any]) -> str:
    results = report["results"]
    names = [s for s in results]
    late = report["size_params"]["n_chunks"] - report["size_params"]["n_chunks"] // 10
    head = ["#", "metric"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for number, label, path, unit, _lower, p99 in METRICS:
        if number not in report["workloads"]:
            continue
        label = label.replace("9,000", f"{late:,}")
        ray = _cell(results["rayflow"], path)[1] if "rayflow" in results else None
        row = [str(number), f"{label}{' (' + unit + ')' if unit and unit != '/s' else ''}"]
        for name in names:
            text, value = _cell(results[name], path)
            if text:
                row.append(text)
                continue
            v = results[name][path[0]][path[1]]
            cell = _fmt(value, unit)
            if p99 and isinstance(v, dict):
                cell += f" / {_fmt(v.get('p99'), unit)}"
            if name != "rayflow" and ray is not None and value and p99 is not None:
                cell += f" (×{_ratio(ray / value)})"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for name in names:
        r = results[name]
        if "not_yet" in r:
            notes.append(f"- **{name}**: not yet — {r['not_yet']}")
        if "_error" in r:
            notes.append(f"- **{name}**: {r['_error']}")
        for w in ("w1", "w2", "w3", "w4", "w5", "w6", "w7"):
            if isinstance(r.get(w), dict) and "na" in r[w]:
                notes.append(f"- **{name}** workload {w[1]}: n/a — {r[w]['na']}")
            elif isinstance(r.get(w), dict) and "error" in r[w]:
                notes.append(f"- **{name}** workload {w[1]} failed: {r[w]['error']}")
            elif isinstance(r.get(w), dict) and r[w].get("note"):
                notes.append(f"- **{name}** workload {w[1]}: {r[w]['note']}")
            if w == "w2" and isinstance(r.get(w), dict) and r[w].get("late_offset", late) != late:
                notes.append(f"- **{name}** workload 2: second offset {r[w]['late_offset']:,}")
    sp = report["size_params"]
    header = (
        f"Run {report['date']} ({report['size']} size: {sp['n_chunks']:,} chunks × 64 B × "
        f"{sp['reps']} runs, {sp['late_reps']} late reads per offset, {sp['n_inputs']} inputs "
        f"every {sp['input_gap_s'] * 1000:.0f} ms, {sp['n_waiters']:,} waiting runs of which "
        f"{sp['n_resume']} resumed, {sp.get('density_runs', 0):,} runs × 10 tokens/s × "
        f"{sp.get('density_duration_s', 0)} s streaming at once). Cells: median / p99; "
        "in brackets the ratio rayflow/peer of the medians (latency: < 1 means rayflow is "
        "faster; chunks/s: > 1 means rayflow is faster). Noisy 2-core machine: read the "
        "ratios, not the digits."
    )
    if report.get("loadavg"):
        la = report["loadavg"]
        if "before" in la:
            header += (
                f" Load average (1 min) {la['before'][0]:.1f} before, {la['after'][0]:.1f} after."
            )
        if la.get("note"):
            header += f" {la['note']}."
    if report.get("seconds"):
        header += f" Whole run: {report['seconds']} s."
    return "\n".join([header, "", *lines, "", *notes])


METHOD = """\
How each system does each workload (same machine, same run, loopback only):

- **rayflow** — embedded default (local Ray + SQLite, `synchronous=FULL`). The task writes
  with `out.writer()` (group commit) and yields to its loop every 100 chunks; readers in
  another process join with `rayflow.init(address=…)` and iterate `out.read(run_id)`;
  input `inp.send()` → `inp.once()`; suspend `go.wait()`; SSE through `serve/` (Ray Serve).
- **dbos-postgres / dbos-sqlite** — DBOS Transact: `DBOS.write_stream` per chunk inside a
  workflow; `DBOSClient.read_stream` in the reader (LISTEN/NOTIFY on PostgreSQL, 10 ms
  polling on SQLite — the default 1 s would be unfair); `DBOSClient.send` → `DBOS.recv`;
  suspend = `await DBOS.recv_async` (DBOS cannot release a waiting workflow's process: the
  waiters are coroutines of the app process). No SSE.
- **restate** — restate-server (npm) + restate-sdk on hypercorn. No output streams. Input =
  a workflow's shared handler resolves a durable promise the running handler awaits; suspend
  = the same with `inactivity_timeout` 1 s, so the server has suspended every waiter (checked
  with its admin SQL API) before anything is sent.
- **redis-diy** — Redis streams (AOF, `appendfsync everysec`): `XADD` per chunk with
  explicit ids (resume from any index), `XREAD BLOCK`; suspend = state in a hash, one resume
  worker reading a shared `inputs` stream; SSE = FastAPI + sse-starlette on uvicorn.
- **ray-serve** — a Ray Serve streaming response: the reader is the HTTP caller (no stream
  another reader can join, no durability: workloads 2 and 4 n/a); input = a second request
  filling the running generator's `asyncio.Queue`.
- **workload 6** (many runs at once) — N runs of an `async def` that writes a 64-byte token
  every 100 ms for D s, open loop, each awaited write durable (rayflow `await out.append`,
  started with `batch_trigger`; DBOS `await DBOS.write_stream_async` in N async workflows
  started with `start_workflow_async`); once all are started, one reader process reads
  all N streams at once (rayflow `async for` over `out.read`; DBOS `read_stream_async`,
  polling as in workload 1). "All done" is from the first start call to the last
  reader's end; "at once" counts runs between their first and last token (writer clocks).
- **workload 7** (chat turns) — one conversation of T turns: the user process thinks for
  1 s, sends a message, and reads the reply — 20 tokens of a fake model, one every 10 ms —
  from the conversation's one output stream. rayflow: a chat agent on a session
  (`session.input.wait()` between turns, so the run is suspended while the user thinks;
  the model's tokens `session.output.pipe`d, one journaled step); the user
  `sessions.open(id).input.send`s and reads `.output.read`. DBOS: `recv_async` +
  `write_stream_async` per token in one async workflow; `DBOSClient.send` +
  `read_stream`. Restate: a virtual object's `turn` handler calling the model in
  `ctx.run`; the reply arrives whole as the call's answer (no first token). Send → first
  token and send → turn complete on the user's clock.

Latency = the reader's clock minus the writer's clock embedded in each 64-byte chunk (one
machine). A live write starts 0.5 s after the reader subscribed; writers go as fast as they
can, so write→read latency includes any queueing (each with its own flow control: DBOS and
Redis wait for each write; rayflow's writer awaits `drain()` every 100 chunks). Input: one
message every 50 ms from another process; resume: one every 50 ms, only to runs that are
suspended. Memory = PSS of the system's processes (its servers and app/worker processes;
for rayflow the whole local Ray) while the runs wait, minus before, divided by the runs
waiting."""


def write_readme(text: str, command: str) -> None:
    section = (
        f"{BEGIN}\n## Peers (issue 7)\n\nCommand: `{command}` (see `benchmarks/peers/run.py`)."
        f"\n\n{text}\n\n{METHOD}\n{END}"
    )
    if README.exists():
        body = README.read_text()
        if BEGIN in body and END in body:
            pre, rest = body.split(BEGIN, 1)
            post = rest.split(END, 1)[1]
            body = pre + section + post
        else:
            body = body.rstrip("\n") + "\n\n" + section + "\n"
    else:
        body = f"# Benchmarks\n\n{section}\n"
    README.write_text(body)


# --- entry ---


def select(only: str | None) -> list[dict[str, Any]]:
    if not only:
        return SYSTEMS
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [s for s in SYSTEMS if any(s["name"].startswith(w) or w in s["name"] for w in wanted)]
    if not chosen:
        raise SystemExit(
            f"--only {only}: no system matches; systems: " + ", ".join(s["name"] for s in SYSTEMS)
        )
    return chosen


def netns_available() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    try:
        return (
            subprocess.run(
                ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=20
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    p.add_argument(
        "--only", help="comma-separated systems (prefixes): rayflow,dbos,restate,redis,serve"
    )
    p.add_argument("--workloads", default="1,2,3,4,5,6,7", help="comma-separated workload numbers")
    p.add_argument("--skip-setup", action="store_true", help="do not install anything")
    p.add_argument(
        "--no-netns",
        action="store_true",
        help="do not isolate in a loopback-only network namespace (Restate is skipped)",
    )
    p.add_argument("--no-readme", action="store_true", help="print the table only")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument("--render", metavar="REPORT_JSON", help="print (and write) a saved report")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a size parameter, e.g. --set n_inputs=20 (numbers only)",
    )
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    systems = select(args.only)
    command = "python benchmarks/peers/run.py" + (" --quick" if args.quick else "")

    if not os.environ.get("PEERS_BENCH_PHASE") and not args.render:
        if not args.skip_setup:
            setup(systems)
        env = {**os.environ, "PEERS_BENCH_PHASE": "1"}
        argv = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
        if not args.no_netns and netns_available():
            log("benchmarking inside a loopback-only network namespace (unshare -n)")
            env["PEERS_NETNS"] = "1"
            argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
        else:
            log("no loopback-only namespace: servers still bind 127.0.0.1 only; Restate skipped")
        return subprocess.run(argv, env=env).returncode

    if args.render:  # re-render a saved report (e.g. after a change to the table's layout)
        report = json.loads(Path(args.render).read_text())
    else:
        started = time.monotonic()
        load_before = os.getloadavg()
        report = bench(args, systems)
        report["seconds"] = round(time.monotonic() - started)
        report["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    text = table(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if not args.render:
        WORK.mkdir(exist_ok=True)
        (WORK / "last-report.json").write_text(json.dumps(report, indent=1))
    if not args.no_readme and len(systems) == len(SYSTEMS) and args.workloads == "1,2,3,4,5,6,7":
        write_readme(text, command)
        log(f"table written to {README}")
    elif not args.no_readme:
        log("partial run (--only/--workloads): README not touched")
    log(f"total {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
