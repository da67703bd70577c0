"""The latency breakdown of benchmarks/http_sse.py `--breakdown` (issue 10, item 1).

rayflow runs with `trace_hops_dir` set: every process that handles a chunk
writes one line per hop (rayflow/_runtime/hops.py). Joined here with the
client's receive time, per chunk:

    append call → write (writer queued it) → send (its Ray call left) →
    actor (RunActor took it) → commit_start (Store thread began) →
    committed (Store returned: fsync'd) → visible (readers may see it) →
    ack (the writer's future resolved); a writer outside the run commits
    itself: write → send (its commit left) → ack, and the RunActor marks
    visible when it is told
    visible → reply (the RunActor's `follow_many` stream sent it) → arrived
    (the replica's `actor_polls` got it) → read (the replica's reader got
    it) → sse_out (handed to the SSE encoder) → client (httpx parsed it);
    a chunk an outside writer pushed to the replica first (`push_inbox`):
    stored (its commit returned) → pushed (sent to the replica) → arrived

and the floors measured without rayflow: one SQLite `append_chunks` at
synchronous=FULL / NORMAL, a durable PostgreSQL one, a bare Ray actor call.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

WRITE_HOPS = ["write", "send", "actor", "commit_start", "committed", "visible"]
READ_HOPS = ["visible", "reply", "arrived", "read", "sse_out", "client"]
#: the read hops of a chunk the writer pushed to the replica (it arrived first that way)
PUSHED_HOPS = ["stored", "pushed", "arrived", "read", "sse_out", "client"]
#: rows first in this order (an outside writer's pushed chunk's path), the rest after
ORDER = [
    "(chunks that came pushed)",
    "append call → write",
    "write → send",
    "send → stored",
    "stored → pushed",
    "pushed → arrived",
    "arrived → read",
    "read → sse_out",
    "sse_out → client",
]


class Hops:
    """Every process's hop lines: hop -> id -> first ns, and which write each
    committed chunk was (`visible` names both ids)."""

    def __init__(self, directory: Path) -> None:
        self.at: dict[str, dict[str, int]] = defaultdict(dict)
        self.write_of: dict[str, str] = {}
        for f in directory.glob("*.tsv"):
            for line in f.read_text().splitlines():
                parts = line.split("\t")
                self.at[parts[0]].setdefault(parts[1], int(parts[2]))
                # `visible` (the run's own commits) and `stored` (an outside
                # writer's commit) name the write each chunk was
                if parts[0] in ("visible", "stored") and len(parts) > 3:
                    self.write_of[parts[1]] = parts[3]

    def per_hop(
        self, run_id: str, key: str, sent: dict[int, int], received: dict[int, int]
    ) -> dict[str, list[float]]:
        """ms per hop, per chunk of stream (run_id, key): `sent` is the append
        call's wall clock per index, `received` the client's."""
        out: dict[str, list[float]] = defaultdict(list)
        for seq, recv in sorted(received.items()):
            sid = f"{run_id}/{key}/{seq}"
            wid = self.write_of.get(sid, "")
            if wid.startswith("None:"):
                wid = ""  # an HTTP append has no writer id: its early hops are unknown
            times: list[tuple[str, int | None]] = [("append call", sent.get(seq))]
            times += [(h, self.at[h].get(wid)) for h in WRITE_HOPS[:-1]]
            pushed = sid in self.at["taken_pushed"]
            if pushed:
                out["(chunks that came pushed)"].append(0.0)
            times += [(h, self.at[h].get(sid)) for h in (PUSHED_HOPS if pushed else READ_HOPS)[:-1]]
            times.append(("client", recv))
            prev_name, prev = times[0]
            for name, t in times[1:]:
                if t is None:
                    continue
                if prev is not None:
                    out[f"{prev_name} → {name}"].append((t - prev) / 1e6)
                prev_name, prev = name, t
            visible, ack = self.at["visible"].get(sid), self.at["ack"].get(wid)
            if visible is not None and ack is not None and not pushed:
                out["visible → ack (writer)"].append((ack - visible) / 1e6)
            if seq in sent:
                out["TOTAL append call → client"].append((recv - sent[seq]) / 1e6)
                if ack is not None:
                    out["TOTAL append call → ack"].append((ack - sent[seq]) / 1e6)

        def rank(hop: str) -> int:
            if hop in ORDER:
                return ORDER.index(hop)
            return len(ORDER) + (2 if hop.startswith("TOTAL") else 1)

        return dict(sorted(out.items(), key=lambda item: rank(item[0])))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def table(title: str, rows: dict[str, list[float]]) -> str:
    lines = [f"### {title}", "", "| hop | p50 ms | p99 ms | n |", "|---|---:|---:|---:|"]
    for name, values in rows.items():
        if values:
            lines.append(
                f"| {name} | {statistics.median(values):.2f} | {pct(values, 0.99):.2f} |"
                f" {len(values)} |"
            )
    return "\n".join(lines)


# --- floors, without rayflow's machinery ---


def store_floor(store: Any, n: int = 200, gap_s: float = 0.0) -> list[float]:
    """ms per one-chunk `append_chunks` (one transaction, one commit), one
    every `gap_s` (0: back to back)."""
    from rayflow.store.base import ChunkWrite

    out = []
    for i in range(n):
        t0 = time.perf_counter()
        store.append_chunks("run_floor", "k", [ChunkWrite(f'"{i}"', "w", i)], 1 << 30)
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(gap_s)
    return out


def sqlite_floor(synchronous: str, n: int = 200, gap_s: float = 0.0) -> list[float]:
    """`store_floor` on a fresh SQLite store with `synchronous`."""
    from rayflow.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/floor.db", sqlite_synchronous=synchronous)
        store.migrate()
        try:
            return store_floor(store, n, gap_s)
        finally:
            store.close()


def floors(postgres_url: str | None) -> dict[str, list[float]]:
    from rayflow.store import open_store

    out: dict[str, list[float]] = {
        f"SQLite append_chunks, synchronous={sync}": sqlite_floor(sync)
        for sync in ("FULL", "NORMAL")
    }
    if postgres_url:
        store = open_store(postgres_url)
        store.migrate()
        out["PostgreSQL append_chunks (fsync on)"] = store_floor(store)
        store.close()
    return out


def ray_call_floor(n: int = 300, gap_s: float = 0.0) -> dict[str, list[float]]:
    """ms per bare async actor call round trip, one every `gap_s` (0: back
    to back; paced calls cost more here: both processes sleep in between)."""
    import ray

    @ray.remote
    class Echo:
        async def echo(self, x: Any) -> Any:
            return x

    actor = Echo.remote()  # type: ignore[attr-defined]
    ray.get(actor.echo.remote(0))

    async def go() -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            await actor.echo.remote(i)
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(gap_s)
        return out

    values = asyncio.run(go())
    ray.kill(actor)
    return {"bare async actor call, round trip": values}
