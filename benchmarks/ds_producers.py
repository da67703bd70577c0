"""The Durable Streams shape: 64 concurrent idempotent producers appending
100-byte JSON messages to one stream, against rayflow's endpoint
(`rayflow.init(serve=True)`, SQLite or PostgreSQL) and the protocol's
reference Node server (`@durable-streams/server`) in the same run: in
memory (what the goal is judged against) and in its durable mode
(`dataDir`: each append written to a segment file, concurrent appends
sharing one `fdatasync`; rayflow acknowledges after a SQLite commit with
`synchronous=FULL`). Reports acknowledgement latency (p50 / p99) and
appends per second.

    .venv/bin/python benchmarks/ds_producers.py --seconds 10 [--store URL] [--ingress serve]

The load is tests/node/ds_load.mjs. Floors in the same run, same load:
rayflow's `GET /healthz` (the replica's listener + FastAPI, nothing behind
it) and a bare uvicorn no-op (benchmarks/_noop_http.py: what any Python
HTTP server costs per request on this box, before any framework or Store).
Each producer sends its next append when the previous one is acknowledged
(Producer-Id / Epoch / Seq headers, as the clients' IdempotentProducer
does without pipelining). Load generator, both servers and the box's other
work share the same cores: compare the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def load(base: str, producers: int, seconds: float, floor: bool = False) -> dict[str, float]:
    """tests/node/ds_load.mjs against `base` (a Node load generator: a
    Python one was the bottleneck at ~300 appends/s on this box); `floor`:
    the same requests to `base` itself, no stream behind them."""
    out = subprocess.run(
        ["node", "ds_load.mjs", base, str(producers), str(seconds)] + (["floor"] if floor else []),
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def start_reference(data_dir: str | None = None) -> tuple[subprocess.Popen[str], str]:
    """The reference server: in memory, or durable in `data_dir`."""
    port = free_port()
    durable = {"DATA_DIR": data_dir} if data_dir else {}
    proc = subprocess.Popen(
        ["node", "ds_reference_server.mjs"],
        cwd=NODE_DIR,
        env={**os.environ, "PORT": str(port), **durable},
        stdout=subprocess.PIPE,
        text=True,
    )
    url = ""
    while not url.startswith("http"):  # the durable mode logs its recovery first
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not url and proc.poll() is not None:
            raise RuntimeError("the reference server exited at start")
    return proc, url


def start_noop() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "_noop_http.py"), str(port)])
    url = f"http://127.0.0.1:{port}/"
    wait_ready_noop(url)
    return proc, url


def wait_ready_noop(url: str) -> None:
    import time
    import urllib.request

    for _ in range(300):
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b"x"), timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--producers", type=int, default=64)
    parser.add_argument("--store", default="")
    parser.add_argument("--reps", type=int, default=1, help="alternating runs (median)")
    parser.add_argument("--no-floors", dest="floors", action="store_false", help="skip the floors")
    parser.add_argument(
        "--ingress",
        default="rayflow",
        choices=["rayflow", "serve"],
        help="who serves rayflow's HTTP port in the replica: rayflow's own listener (the"
        " default, RAYFLOW_HTTP_INGRESS) or Ray Serve's direct ingress",
    )
    args = parser.parse_args()

    import rayflow

    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="ds-bench-")
    rayflow.init(
        store=args.store or None,
        data_dir=data_dir,
        serve=True,
        http_port=port,
        durable_streams_anonymous=True,
        http_ingress=args.ingress,
    )
    print(f"rayflow's HTTP port served by: {args.ingress} (load {loadavg()})", flush=True)
    from serve.app import wait_ready

    wait_ready(f"http://127.0.0.1:{port}")
    reference, ref_url = start_reference()
    durable, durable_url = start_reference(tempfile.mkdtemp(prefix="ds-ref-"))
    noop, noop_url = start_noop()
    targets = [
        ("rayflow", f"http://127.0.0.1:{port}/durable-streams", False),
        ("reference", ref_url, False),
        ("reference, durable", durable_url, False),
    ]
    if args.floors:
        targets += [
            ("floor: rayflow GET /healthz", f"http://127.0.0.1:{port}/healthz", True),
            ("floor: uvicorn no-op", noop_url, True),
        ]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
    try:
        for _, base, floor in targets:
            load(base, args.producers, 1.0, floor)  # warm up
        for _ in range(args.reps):  # alternating: the box's load drifts
            for name, base, floor in targets:
                r = load(base, args.producers, args.seconds, floor)
                r["load"] = loadavg()  # type: ignore[assignment]
                runs[name].append(r)
    finally:
        for proc in (reference, durable, noop):
            proc.terminate()
            proc.wait()
    results = {}
    for name, rs in runs.items():
        results[name] = r = sorted(rs, key=lambda x: x["appends_per_s"])[len(rs) // 2]
        each = ", ".join(f"{x['appends_per_s']:.0f} (load {x['load']})" for x in rs)
        print(
            f"{name:28s} {r['appends_per_s']:8.0f} appends/s  ack p50 {r['p50_ms']:6.2f} ms"
            f"  p99 {r['p99_ms']:6.2f} ms  (median of {len(rs)}: {each})"
        )
    ours, ref = results["rayflow"], results["reference"]
    print(
        f"rayflow / reference: throughput x{ours['appends_per_s'] / ref['appends_per_s']:.2f},"
        f" p50 x{ours['p50_ms'] / ref['p50_ms']:.2f}, p99 x{ours['p99_ms'] / ref['p99_ms']:.2f}"
    )
    durable_ref = results["reference, durable"]
    print(
        "rayflow / reference, durable: throughput"
        f" x{ours['appends_per_s'] / durable_ref['appends_per_s']:.2f},"
        f" p50 x{ours['p50_ms'] / durable_ref['p50_ms']:.2f},"
        f" p99 x{ours['p99_ms'] / durable_ref['p99_ms']:.2f}"
    )
    for name in runs:
        if name.startswith("floor") or name == "reference, durable":
            f = results[name]
            ratio = f["appends_per_s"] / ref["appends_per_s"]
            print(f"{name} / reference: throughput x{ratio:.2f}")
    print(json.dumps(results))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
