"""The driver's side of `benchmarks/input.py`: setting up, floors, statistics,
reading the Store, counting actors, firing many calls at once within a budget.

Nothing here runs inside a RunActor: the tasks and streams live in input.py
(a worker unpickles them by value from `__main__`; this module is not on its
path). Every wait here has a budget and returns how far it got instead of
raising, so a phase that does not finish still reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def ensure_environment(script: str) -> None:
    """Run in the repo's venv (installed or updated by scripts/venv.sh), with
    Ray kept on 127.0.0.1 (docs/scaling.md) whatever was imported before us."""
    venv = REPO / ".venv"
    subprocess.run(["bash", str(REPO / "scripts" / "venv.sh")], check=True)
    if Path(sys.prefix).resolve() != venv.resolve():
        python = str(venv / "bin" / "python")
        os.execv(python, [python, script, *sys.argv[1:]])
    # Ray reads this when it is first imported, and its processes inherit it
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:  # imported before us (a wrapper, sitecustomize): apply it anyway
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def non_loopback_listeners() -> list[str]:
    """TCP sockets that this Ray's processes (and this driver) listen on
    outside 127.0.0.1 / ::1 — must be none."""
    import psutil
    import ray

    node = ray._private.worker.global_worker.node
    roots = {os.getpid()}
    for infos in node.all_processes.values():
        roots.update(info.process.pid for info in infos)
    pids = set(roots)
    for pid in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    bad = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids and not _loopback(c.laddr.ip):
            bad.append(f"{c.laddr.ip}:{c.laddr.port} (pid {c.pid})")
    return bad


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1
    return ip.is_loopback


# -- statistics ------------------------------------------------------------------
def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def pct(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is the maximum)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def p50(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def line(label: str, xs: Sequence[float]) -> None:
    print(
        f"  {label:<46} p50 {p50(xs):8.1f} ms   p99 {pct(xs, 0.99):8.1f} ms"
        f"   n={len(xs)}   [{load()}]"
    )


def say(label: str, text: str) -> None:
    print(f"  {label:<46} {text}   [{load()}]")


# -- the Store (the embedded SQLite file, read-only) ---------------------------------
class StoreView:
    def __init__(self, url: str) -> None:
        if not url.startswith("sqlite:///"):
            raise SystemExit(f"this benchmark reads the embedded SQLite Store; got {url}")
        self.path = Path(url.removeprefix("sqlite:///"))

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)

    def bytes_used(self) -> int:
        """Pages in use (WAL included once checkpointed), in bytes."""
        with self._db() as db:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _rows(self, ids: Sequence[str], sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._db() as db:
            db.execute("CREATE TEMP TABLE ids (id TEXT PRIMARY KEY)")
            db.executemany("INSERT INTO ids VALUES (?)", [(i,) for i in ids])
            return list(db.execute(sql, args))

    def count(self, ids: Sequence[str], status: str) -> int:
        sql = "SELECT count(*) FROM runs JOIN ids USING (id) WHERE status = ?"
        return int(self._rows(ids, sql, status)[0][0])

    def with_status(self, ids: Sequence[str], status: str) -> list[str]:
        sql = "SELECT id FROM runs JOIN ids USING (id) WHERE status = ?"
        return [r[0] for r in self._rows(ids, sql, status)]

    def outputs(self, ids: Sequence[str]) -> dict[str, Any]:
        import json

        sql = "SELECT id, output FROM runs JOIN ids USING (id) WHERE status = 'COMPLETED'"
        return {r[0]: json.loads(r[1]) for r in self._rows(ids, sql)}

    def unfinished(self, ids: Sequence[str]) -> list[str]:
        sql = (
            "SELECT id FROM runs JOIN ids USING (id)"
            " WHERE status IN ('QUEUED', 'EXECUTING', 'WAITING')"
        )
        return [r[0] for r in self._rows(ids, sql)]


# -- Ray -----------------------------------------------------------------------------
def run_actor_processes() -> int:
    """ALIVE actors of class RunActor in Ray's actor table (the GCS, which
    Ray's state API reads; rayflow starts no dashboard to serve that API).
    Actors still starting are PENDING_CREATION and not counted."""
    from ray._private import state

    alive = state.actors(actor_state_name="ALIVE").values()
    return sum(1 for a in alive if a.get("ActorClassName") == "RunActor")


def wait_until(pred: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every_s)
    return pred()


class Fired:
    """What `fire` got: results and errors per item, when each call went out."""

    def __init__(self) -> None:
        self.results: dict[Any, Any] = {}
        self.errors: dict[Any, BaseException] = {}
        self.started: dict[Any, int] = {}  # time.time_ns() just before the call
        self.seconds = 0.0

    def report_errors(self, what: str) -> None:
        if self.errors:
            first = next(iter(self.errors.values()))
            print(f"  !! {len(self.errors):,} {what} failed; the first: {first!r}")


def fire(
    make: Callable[[Any], Awaitable[Any]],
    items: Sequence[Any],
    budget_s: float,
    in_flight: int = 1000,
) -> Fired:
    """Call `make(item)` for every item at once (at most `in_flight` pending),
    within `budget_s`; what has not answered by then is abandoned."""
    from rayflow._response import run_sync

    fired = Fired()

    async def one(item: Any, gate: asyncio.Semaphore) -> None:
        async with gate:
            fired.started[item] = time.time_ns()
            try:
                fired.results[item] = await make(item)
            except Exception as e:
                fired.errors[item] = e

    async def all_of() -> None:
        gate = asyncio.Semaphore(in_flight)
        await asyncio.gather(*[one(i, gate) for i in items])

    t0 = time.perf_counter()
    try:
        run_sync(all_of(), timeout_s=budget_s)
    except TimeoutError:
        answered = len(fired.results) + len(fired.errors)
        print(f"  (budget of {budget_s:.0f} s spent: {answered:,} of {len(items):,} answered)")
    fired.seconds = time.perf_counter() - t0
    return fired


def cpu_seconds() -> float:
    """User + system CPU of this process and every process below it (the
    local Ray this benchmark started: GCS, raylet, every worker)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total
