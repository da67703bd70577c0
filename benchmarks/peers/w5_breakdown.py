#!/usr/bin/env python3
"""Where workload 5's time goes in rayflow: per-hop latency of an SSE read under a writer flood.

    .venv/bin/python benchmarks/peers/w5_breakdown.py [--n 10000] [--reps 2]

Runs peers workload 5 as `rayflow_peer.py` does (the `peers-writer` task writes
n × 64 B chunks as fast as `out.writer()` takes them, `drain()` every 100; a
reader process reads the run's stream over SSE from the Serve replica), with
hop tracing on (rayflow/_runtime/hops.py). The reader records per chunk when
its SSE line arrived (before parsing) and when the chunk was handed out (after
`extract_chunks`); joined with the hop marks per chunk:

    write (chunk's clock) → commit_start → committed → visible → reply (the
    RunActor's `follow_many` yielded it) → arrived (the replica's `actor_polls`
    got it) → read (its hub's reader) → sse_out (encoder) → line (the client
    got the line) → parsed (the client extracted the chunk)

Also prints the client's CPU share and parse cost, and how many chunks each
SSE event and each commit carried. Tracing costs a file write per chunk per
hop: read the shares, not the totals, and compare with the untraced run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common as c  # noqa: E402


def reader_main(url: str, token: str, out: str) -> None:
    """Read the SSE stream; per chunk (seq, write ns, line ns, parsed ns)."""
    import httpx

    rows: list[tuple[int, int, int, int]] = []
    events: list[int] = []
    parse_ns = 0
    cpu0 = time.process_time()
    t0 = time.monotonic()
    with (
        httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0)) as client,
        client.stream(
            "GET",
            url,
            headers={"Accept": "text/event-stream", "Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        resp.raise_for_status()
        print("ready", flush=True)
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            got = time.time_ns()
            chunks = c.extract_chunks(line[5:].lstrip(" "))
            done = time.time_ns()
            parse_ns += done - got
            if chunks:
                events.append(len(chunks))
            for ch in chunks:
                rows.append((c.chunk_seq(ch), c.chunk_ts(ch), got, done))
    wall = time.monotonic() - t0
    Path(out).write_text(
        json.dumps(
            {
                "rows": rows,
                "events": events,
                "parse_ns": parse_ns,
                "cpu_s": time.process_time() - cpu0,
                "wall_s": wall,
            }
        )
    )


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every process now, with its name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if "ray::" in cmd or "w5_breakdown" in cmd:
            name = cmd.split()[0] if "ray::" in cmd else "w5 " + cmd.split()[2][:8]
        out[int(entry)] = (name[:40], (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_top(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> str:
    used = [(after[p][1] - before.get(p, (None, 0.0))[1], after[p][0]) for p in after]
    used.sort(reverse=True)
    return ", ".join(f"{name} {cpu:.2f}s" for cpu, name in used[:7] if cpu > 0.01)


def load_hops(directory: Path) -> dict[str, dict[str, int]]:
    at: dict[str, dict[str, int]] = defaultdict(dict)
    for f in directory.glob("*.tsv"):
        for line in f.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                at[parts[0]].setdefault(parts[1], int(parts[2]))
    return at


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def host(n: int, reps: int, trace: bool) -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
    )
    tmp = Path(tempfile.mkdtemp(prefix="w5-breakdown-"))
    hops_dir = tmp / "hops"
    if trace:
        os.environ["RAYFLOW_TRACE_HOPS_DIR"] = str(hops_dir)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import ray
    import rayflow_peer as peer

    import rayflow
    from rayflow._runtime import bootstrap
    from serve.app import start as start_http
    from serve.app import wait_ready

    bootstrap.start_ray(rayflow.Settings(), serve_port=port)
    settings = rayflow.init(data_dir=str(tmp / "rayflow"))
    settings = settings.model_copy(update={"http_host": "127.0.0.1", "http_port": port})
    base = start_http(settings)
    wait_ready(base)
    results = []
    try:
        for rep in range(reps):
            handle = peer.writer.trigger({"n": n, "start_at": time.time() + 1.0}).result(
                timeout_s=60
            )
            out = tmp / f"reader{rep}.json"
            proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "reader",
                    f"{base}/realtime/v1/streams/{handle.id}/out",
                    settings.secret_key or "",
                    str(out),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            proc.stdout.readline()
            cpu0 = cpu_snapshot()
            proc.wait(timeout=120)
            print(f"CPU during rep {rep} (from stream open): {cpu_top(cpu0, cpu_snapshot())}")
            peer._output(handle.id)
            results.append((handle.id, json.loads(out.read_text())))
    finally:
        rayflow.shutdown(stop_runs=True)
        ray.shutdown()
    time.sleep(0.5)
    at = load_hops(hops_dir) if trace else {}
    report(results, at)


def report(results: list[tuple[str, dict[str, Any]]], at: dict[str, dict[str, int]]) -> None:
    hops = [
        *["write", "commit_start", "committed", "visible", "reply", "arrived", "read"],
        *["sse_out", "line", "parsed"],
    ]
    per: dict[str, list[float]] = defaultdict(list)
    early: dict[str, list[float]] = defaultdict(list)  # the first 2,000 chunks of a run
    total: list[float] = []
    events: list[int] = []
    for run_id, r in results:
        events += r["events"]
        writer_ids = {
            k.rsplit(":", 1)[0] for k in at.get("commit_start", {}) if k.startswith(run_id)
        }
        for seq, ts, line, parsed in r["rows"]:
            sid = f"{run_id}/out/{seq}"
            wid = next((f"{w}:{seq}" for w in writer_ids if f"{w}:{seq}" in at["commit_start"]), "")
            t = {
                "write": ts,
                "commit_start": at.get("commit_start", {}).get(wid),
                "committed": at.get("committed", {}).get(wid),
                "visible": at.get("visible", {}).get(sid),
                "reply": at.get("reply", {}).get(sid),
                "arrived": at.get("arrived", {}).get(sid),
                "read": at.get("read", {}).get(sid),
                "sse_out": at.get("sse_out", {}).get(sid),
                "line": line,
                "parsed": parsed,
            }
            prev_name, prev = "write", ts
            for h in hops[1:]:
                if t[h] is None:
                    continue
                per[f"{prev_name} → {h}"].append((t[h] - prev) / 1e6)
                if seq < 2000:
                    early[f"{prev_name} → {h}"].append((t[h] - prev) / 1e6)
                prev_name, prev = h, t[h]
            total.append((parsed - ts) / 1e6)
            if seq < 2000:
                early["TOTAL"].append((parsed - ts) / 1e6)
        cpu = r["cpu_s"] / r["wall_s"]
        print(
            f"run {run_id}: {len(r['rows'])} chunks in {r['wall_s']:.2f} s;"
            f" client CPU {cpu:.0%} of a core, parse {r['parse_ns'] / len(r['rows']) / 1e3:.2f}"
            f" µs/chunk ({r['parse_ns'] / 1e9 / r['wall_s']:.0%} of wall)"
        )
    if at:  # how a run's reading starts: the first chunk to pass each hop
        run_id, r = results[-1]
        t0 = min(ts for _, ts, _, _ in r["rows"])
        firsts = {
            hop: min((t for k, t in at.get(hop, {}).items() if k.startswith(run_id)), default=None)
            for hop in ["commit_start", "committed", "visible", "read", "reply", "arrived"]
        }
        firsts["line"] = min(line for _, _, line, _ in r["rows"])
        print(
            "start of the last run, ms after its first write:",
            ", ".join(f"{h} {(t - t0) / 1e6:.1f}" for h, t in firsts.items() if t is not None),
        )
    print(f"\nload average {os.getloadavg()}")
    print("| hop | p50 ms | p99 ms | n | p50 of the first 2,000 |\n|---|---:|---:|---:|---:|")
    for name, values in per.items():
        first = early.get(name)
        print(
            f"| {name} | {statistics.median(values):.2f} | {pct(values, 0.99):.2f} |"
            f" {len(values)} | {statistics.median(first) if first else float('nan'):.2f} |"
        )
    print(
        f"| TOTAL write → parsed | {statistics.median(total):.2f} | {pct(total, 0.99):.2f} |"
        f" {len(total)} | {statistics.median(early['TOTAL']):.2f} |"
    )
    buckets: dict[int, list[float]] = defaultdict(list)
    for _, r in results:
        for seq, ts, _line, parsed in r["rows"]:
            buckets[seq // 1000].append((parsed - ts) / 1e6)
    print(
        "p50 by 1,000 chunks:",
        " ".join(f"{statistics.median(v):.1f}" for _, v in sorted(buckets.items())),
    )
    print(
        f"\nchunks per SSE event: p50 {statistics.median(events)}, mean"
        f" {statistics.mean(events):.1f}, max {max(events)}, events {len(events)}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "reader":
        reader_main(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--no-trace", action="store_true")
    args = p.parse_args()
    print(f"load average before {os.getloadavg()}")
    host(args.n, args.reps, not args.no_trace)


if __name__ == "__main__":
    main()
