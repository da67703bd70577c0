"""Start and stop the peers' servers: PostgreSQL, Redis, Restate — on 127.0.0.1 only.

Each server gets a fresh data directory and a free port (never 8000), and is
stopped by ``Servers.stop_all()`` — which run.py calls in ``finally`` and at exit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

WORK = Path(__file__).resolve().parent / ".work"
RESTATE_BIN = WORK / "restate/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 8000:
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def pg_bindir() -> Path:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "postgres").exists():
            return d
    raise FileNotFoundError("PostgreSQL binaries not found under /usr/lib/postgresql")


class Servers:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[Any]]] = []
        self.cleanups: list[Any] = []
        self.info: dict[str, Any] = {}

    # --- PostgreSQL ---

    def start_postgres(self) -> dict[str, Any]:
        """initdb into a fresh directory owned by ``postgres`` (it refuses to run as root)."""
        bindir = pg_bindir()
        port = free_port()
        data = Path(tempfile.mkdtemp(prefix="rayflow-peers-pg-"))
        as_pg: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(data, pw.pw_uid, pw.pw_gid)
            as_pg = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "cwd": str(data)}
        self.cleanups.append(lambda: shutil.rmtree(data, ignore_errors=True))
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data / "db"),
                "-U",
                "bench",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            **as_pg,
        )
        proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(data / "db"),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={data}",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=256MB",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **as_pg,
        )
        self.procs.append(("postgres", proc))
        wait_port(port, 60, proc)
        time.sleep(0.5)
        url = f"postgresql://bench@127.0.0.1:{port}/postgres"
        self.info["postgres"] = {"url": url, "port": port, "pid": proc.pid}
        return self.info["postgres"]

    def create_database(self, name: str) -> str:
        pg = self.info["postgres"]
        subprocess.run(
            [
                str(pg_bindir() / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(pg["port"]),
                "-U",
                "bench",
                name,
            ],
            check=True,
        )
        return f"postgresql://bench@127.0.0.1:{pg['port']}/{name}"

    # --- Redis ---

    def start_redis(self) -> dict[str, Any]:
        port = free_port()
        data = Path(tempfile.mkdtemp(prefix="rayflow-peers-redis-"))
        self.cleanups.append(lambda: shutil.rmtree(data, ignore_errors=True))
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
                "--logfile",
                str(data / "log"),
            ],
            stdout=subprocess.DEVNULL,
        )
        self.procs.append(("redis", proc))
        wait_port(port, 30, proc)
        self.info["redis"] = {"port": port, "pid": proc.pid}
        return self.info["redis"]

    # --- Restate ---

    def start_restate(self) -> dict[str, Any]:
        if not RESTATE_BIN.exists():
            raise FileNotFoundError(f"{RESTATE_BIN} missing: run.py's setup installs it with npm")
        ingress, admin, fabric, pgsql = free_port(), free_port(), free_port(), free_port()
        base = Path(tempfile.mkdtemp(prefix="rayflow-peers-restate-"))
        self.cleanups.append(lambda: shutil.rmtree(base, ignore_errors=True))
        env = {
            **os.environ,
            "DO_NOT_TRACK": "1",
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
            "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
            "RESTATE_ADMIN__QUERY_ENGINE__PGSQL_BIND_ADDRESS": f"127.0.0.1:{pgsql}",
            "RESTATE_BIND_ADDRESS": f"127.0.0.1:{fabric}",
            "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{fabric}",
            "RESTATE_DEFAULT_NUM_PARTITIONS": "4",
            "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "512MB",
            "RESTATE_LOG_FILTER": "warn",
        }
        proc = subprocess.Popen(
            [
                str(RESTATE_BIN),
                "--base-dir",
                str(base),
                "--node-name",
                "bench",
                "--no-logo",
                "--bind-ip",
                "127.0.0.1",
                "--listen-mode",
                "tcp",
            ],
            env=env,
            stdout=open(base / "server.log", "w"),  # noqa: SIM115 (the server outlives this call)
            stderr=subprocess.STDOUT,
        )
        self.procs.append(("restate", proc))
        wait_port(admin, 60, proc)
        wait_port(ingress, 60, proc)
        self.info["restate"] = {
            "ingress": f"http://127.0.0.1:{ingress}",
            "admin": f"http://127.0.0.1:{admin}",
            "pid": proc.pid,
            "log": str(base / "server.log"),
        }
        return self.info["restate"]

    # --- stop ---

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT if _name == "postgres" else signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()
        for fn in self.cleanups:
            fn()
        self.cleanups.clear()
