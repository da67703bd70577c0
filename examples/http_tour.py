"""The main job: `rayflow dev` with the research agent, driven over HTTP.

Starts `rayflow dev examples/research_agent.py` (local Ray on 127.0.0.1,
SQLite, the HTTP API and the dashboard), then does what a frontend does:
triggers the agent (`POST /api/v1/tasks/research-agent/trigger`), reads its
`status` stream as SSE with the run's public token, sends a follow-up and a
wrap-up into its input streams, prints the report, and the dashboard URL.
Attached to a terminal it keeps `rayflow dev` running until Ctrl-C;
otherwise it stops it and exits 0.

    python examples/http_tour.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A free port outside the kernel's ephemeral range: Ray, started by
    `rayflow dev` before its HTTP API, binds ephemeral ports of its own and
    could take one picked there first."""
    for _ in range(100):
        port = random.randint(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port found between 20000 and 32000")


def start_dev(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rayflow.cli",
            "dev",
            str(HERE / "research_agent.py"),
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL if not sys.stdout.isatty() else None,
    )
    dev_file = data_dir / "dev.json"
    deadline = time.monotonic() + 180
    while not dev_file.exists():
        if proc.poll() is not None:
            raise SystemExit(f"rayflow dev exited with {proc.returncode}")
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            raise SystemExit("rayflow dev did not start within 180 s")
        time.sleep(0.2)
    return proc, json.loads(dev_file.read_text())["url"]


def sse_records(response: httpx.Response) -> Iterator[Any]:
    """Chunks from Trigger.dev's v2 SSE format: `event: batch` records."""
    event = ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            if event == "batch":
                for record in json.loads(data)["records"]:
                    yield json.loads(record["body"])["data"]


def main() -> None:
    data_dir = Path(os.environ.get("RAYFLOW_DATA_DIR") or tempfile.mkdtemp(prefix="rayflow-"))
    proc, url = start_dev(data_dir, free_port())
    try:
        secret = (data_dir / "secret_key").read_text().strip()
        api = httpx.Client(base_url=url, timeout=60)
        r = api.post(
            "/api/v1/tasks/research-agent/trigger",
            json={"payload": {"topic": "durable execution"}},
            headers={"Authorization": f"Bearer {secret}"},
        )
        r.raise_for_status()
        run_id, token = r.json()["id"], r.headers["x-trigger-jwt"]
        print("triggered", run_id, "over HTTP; its public token reads and writes only this run")
        auth = {"Authorization": f"Bearer {token}"}
        first = threading.Event()
        statuses: list[Any] = []

        def follow_status() -> None:
            with api.stream(
                "GET",
                f"/realtime/v1/streams/{run_id}/status",
                headers={**auth, "Accept": "text/event-stream"},
            ) as response:
                for chunk in sse_records(response):
                    statuses.append(chunk)
                    print("status (SSE):", chunk)
                    first.set()

        reader = threading.Thread(target=follow_status, daemon=True)
        reader.start()
        if not first.wait(120):
            raise SystemExit("no status chunk within 120 s")
        for stream, data in (("follow-up", "how does Ray spill objects?"), ("wrap-up", {})):
            sent = api.post(
                f"/realtime/v1/streams/{run_id}/input/{stream}", json={"data": data}, headers=auth
            )
            sent.raise_for_status()
            print(f"sent to {stream}:", sent.json())
        reader.join(180)
        with api.stream(
            "GET",
            f"/realtime/v1/streams/{run_id}/report",
            headers={**auth, "Accept": "text/event-stream"},
        ) as response:
            print("report (SSE):", "".join(sse_records(response)))
        run = api.get(f"/api/v3/runs/{run_id}", headers=auth).json()
        print("run:", run["status"], run["output"])
        print(f"dashboard: {url}/dashboard/#key={secret}")
        if run["status"] != "COMPLETED":
            raise SystemExit(f"the run ended {run['status']}")
        if sys.stdin.isatty():
            print("rayflow dev keeps running; press Ctrl-C to stop")
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
