"""rayflow's HTTP/SSE API against a do-it-yourself baseline (issue 4, item 6).

    .venv/bin/python benchmarks/http_sse.py [--quick] [--ingress proxy] [--parts …]
    .venv/bin/python benchmarks/http_sse.py --quick --breakdown   # where the time goes

Prints, side by side, rayflow / baseline and their ratio:

1. append → SSE client latency (p50/p99) at 1 stream and at 10 streams ×
   50 chunks/s (10 runs, one stream each), plus where rayflow's time goes:
   the append's acknowledgement, a Python reader (`streams.read`, no HTTP),
   10 streams of one run (one RunActor, one SQLite writer) and, at 1
   stream, appends through the HTTP endpoint instead of the Python API;
2. SSE throughput of one stream to one client (chunks/s);
3. 500 concurrent SSE readers of one live stream (rayflow 2,000 chunks, the
   baseline 200: it sends one event per chunk and reader, and would take
   minutes): every reader must get every chunk, in order; total delivered
   chunks/s.

rayflow: the embedded default (local Ray + SQLite, `synchronous=FULL`) with
`serve/` on Ray Serve. Each stream belongs to a running task that waits on
an input stream; the benchmark appends with `streams.append(key, chunk,
target=run_id)` (the Python API; in the throughput and fan-out parts
`streams.writer(key, target=run_id)`, group-committed) and reads
`/realtime/v1/streams/{run}/{key}` with the run's public token.

Baseline: `redis_diy_peer.sse_app` from benchmarks/peers (FastAPI +
sse-starlette on uvicorn with httptools and uvloop, as rayflow's replica,
relaying `XREAD BLOCK`, one event per chunk; its HTTP appends `XADD`) on a
Redis server from the Debian packages (AOF, `appendfsync everysec`) started
by `_servers.Servers`, the app's Redis pool raised from redis-py's default
100 connections (each reader holds one); the benchmark appends with `XADD`
(its throughput and fan-out parts pipeline 1,000 `XADD`s per round trip).

4. 100 streams (10 runs × 10 streams × 20 chunks/s, one SSE reader each):
   p50/p99 and CPU per delivered chunk (every process of each system, the
   benchmark's own included); rayflow also with the writers inside the runs;
5. sustained appends, 10 streams × 200/s over HTTP (rayflow's `POST
   …/append`, the relay's `POST /streams/{key}/append`, which `XADD`s and
   answers): ack latency, the acknowledged rate, CPU per append; beside it
   the relay's `XADD` without HTTP (a floor) and rayflow's `GET /healthz`
   at the same rate (an HTTP request with nothing behind it).

`--breakdown` prints rayflow's per-hop latency instead (benchmarks/_breakdown.py);
rayflow is started the way `rayflow dev` starts it: its one Serve replica
serves the HTTP port itself (rayflow's own listener; `--ingress serve`: Ray
Serve's direct ingress); the `proxy` part measures the same deployment
through Serve's proxy beside it (A/B in one run); `--ingress proxy` puts the
proxy on the HTTP port instead.

Both are read by the same client: httpx streaming in this process, the
chunk's 64 bytes carrying its index and the wall clock at the append call
(benchmarks/peers/_common.py). Everything listens on 127.0.0.1, free ports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# docs/scaling.md: Ray reads this when it is imported (rayflow imports Ray below):
# with it and rayflow's `_node_ip_address="127.0.0.1"` only loopback listens
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "peers"
# this file is named like the stdlib's `http`: keep its directory off the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path[:0] = [str(PEERS), str(REPO)]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import _common as c  # noqa: E402
import httpx  # noqa: E402
from _servers import Servers, free_port, wait_port  # noqa: E402

import rayflow  # noqa: E402
from rayflow import streams, task  # noqa: E402

gate = streams.input("bench-http-gate", dict)

SIZES = {
    "full": {"lat_s": 10.0, "tput_chunks": 20_000, "readers": 500, "fan_chunks": 2_000},
    "quick": {"lat_s": 3.0, "tput_chunks": 5_000, "readers": 100, "fan_chunks": 500},
}
#: the baseline sends one SSE event per chunk per reader: 500 × 2,000 would take it
#: minutes on 2 cores, so its fan-out streams a tenth of the chunks (same readers)
BASELINE_FAN_SHARE = 10
RATE = 50  # chunks/s per stream in the latency parts
BATCH = 1000  # chunks per write batch in the throughput and fan-out parts


@task(id="bench-http-idle")
async def idle(payload: dict) -> None:
    """A running task whose streams the benchmark appends to from outside;
    sent `{"pace": …}` it appends to its own streams itself (the 100-stream
    part's writers inside the runs), sent anything else it ends."""
    while True:
        r = await gate.once(timeout_s=900)
        if not r.ok or not r.output.get("pace"):
            return
        await pace(**r.output["pace"])


async def pace(keys: list[str], rate: float, n: int, start_at: float) -> None:
    """Append chunk i to every key at `start_at + i / rate` (wall clock), from
    inside the run; chunks are benchmarks/peers/_common.py's 64-byte ones."""
    for i in range(n):
        await asyncio.sleep(max(0.0, start_at + i / rate - time.time()))
        head = f"{i:08d} {time.time_ns():020d} "
        chunk = head + "x" * (64 - len(head))
        await asyncio.gather(*(streams.append(k, chunk) for k in keys))


# --- the SSE client (shared by both systems) ---


@dataclass
class Reader:
    """One SSE connection's chunks: latency per chunk, count, order."""

    live: c.LiveRead = field(default_factory=c.LiveRead)
    #: chunk index -> wall clock ns of its append call / when the client parsed it
    sent: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)


async def read_sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], total: int, reader: Reader
) -> None:
    """Read `url` until `total` chunks arrived (the chunks carry their send time)."""
    async with client.stream("GET", url, headers={"Accept": "text/event-stream", **headers}) as r:
        r.raise_for_status()
        reader.connected.set()
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            for chunk in c.extract_chunks(line[5:].lstrip(" ")):
                reader.live.add(chunk)
                reader.received[c.chunk_seq(chunk)] = time.time_ns()
                reader.sent[c.chunk_seq(chunk)] = c.chunk_ts(chunk)
            if len(reader.live.lat_ms) >= total:
                return


async def start_readers(
    client: httpx.AsyncClient, targets: list[tuple[str, dict[str, str]]], total: int
) -> tuple[list[Reader], list[asyncio.Task[None]]]:
    """Open one SSE reader per target and wait until all are subscribed."""
    readers = [Reader() for _ in targets]
    tasks = [
        asyncio.create_task(read_sse(client, url, headers, total, rd))
        for (url, headers), rd in zip(targets, readers, strict=True)
    ]
    connected = asyncio.ensure_future(asyncio.gather(*(rd.connected.wait() for rd in readers)))
    done, _ = await asyncio.wait(
        [connected, *tasks], timeout=60, return_when=asyncio.FIRST_COMPLETED
    )
    for t in tasks:
        if t in done:
            t.result()  # a reader failed before the others subscribed: raise its error
    if connected not in done:
        raise TimeoutError(
            f"{sum(not rd.connected.is_set() for rd in readers)} readers unconnected"
        )
    await asyncio.sleep(0.5)  # the server side subscribes after the headers went out
    return readers, tasks


def sse_client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections + 10, max_keepalive_connections=0)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0, connect=30.0))


# --- the two systems behind one interface ---


@dataclass
class System:
    name: str
    #: SSE URL and headers of stream `i` of the part named `part`
    target: Callable[[str, int], tuple[str, dict[str, str]]]
    #: append one chunk to stream `i` of `part`; resolves when acknowledged
    append: Callable[[str, int, str], Awaitable[Any]]
    #: write chunks 0..n-1 to stream `i` of `part` as fast as the API allows
    write_fast: Callable[[str, int, int], Awaitable[Any]]
    #: concurrent appends to one stream keep their call order
    ordered: bool = True


class RedisClient:
    """Just enough RESP for XADD: redis-py is in the peers' venv, not ours."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._lock = asyncio.Lock()
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._io is None:
            self._io = await asyncio.open_connection("127.0.0.1", self.port)
        return self._io

    @staticmethod
    def _command(*args: str) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    async def xadd_many(self, key: str, entries: list[tuple[int, str]]) -> None:
        """`XADD key 0-<seq+1> c <chunk>` for each entry, pipelined."""
        payload = b"".join(self._command("XADD", key, f"0-{s + 1}", "c", d) for s, d in entries)
        async with self._lock:
            rd, wr = await self._conn()
            wr.write(payload)
            await wr.drain()
            for _ in entries:
                head = await rd.readline()
                if head.startswith(b"-"):
                    raise RuntimeError(head.decode().strip())
                await rd.readline()  # the bulk string: the entry id

    async def close(self) -> None:
        if self._io is not None:
            self._io[1].close()


def baseline_system(base: str, redis: RedisClient) -> System:
    run = uuid.uuid4().hex[:8]

    def key(part: str, i: int) -> str:
        return f"http:{run}:{part}:{i}"

    async def write_fast(part: str, i: int, n: int) -> None:
        for start in range(0, n, BATCH):
            chunks = [(s, c.make_chunk(s)) for s in range(start, min(n, start + BATCH))]
            await redis.xadd_many(key(part, i), chunks)

    system = System(
        "baseline",
        lambda part, i: (f"{base}/streams/{key(part, i)}", {}),
        lambda part, i, chunk: redis.xadd_many(key(part, i), [(c.chunk_seq(chunk), chunk)]),
        write_fast,
    )
    system.key = key  # type: ignore[attr-defined]
    return system


class GroupCommit:
    """A durable commit before each relay append, as rayflow's outside writer
    makes (rayflow/_runtime/run_appender.py) without rayflow: everything
    queued while a commit is in flight goes in the next one, one SQLite
    transaction (WAL, `synchronous` as rayflow's) on a thread of its own."""

    def __init__(self, path: str, synchronous: str) -> None:
        import sqlite3
        from concurrent.futures import ThreadPoolExecutor

        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("CREATE TABLE IF NOT EXISTS chunks (k TEXT, seq INTEGER, data TEXT)")
        self._queue: list[tuple[str, int, str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1)
        #: how long each append waited for its durable commit (ms): the
        #: commit's share of the floor, measured inside it
        self.waits_ms: list[float] = []

    def _write(self, rows: list[tuple[str, int, str]]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("INSERT INTO chunks VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")

    async def commit(self, key: str, seq: int, data: str) -> None:
        started = time.perf_counter()
        future = asyncio.get_running_loop().create_future()
        self._queue.append((key, seq, data, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future
        self.waits_ms.append((time.perf_counter() - started) * 1000)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            await loop.run_in_executor(self._thread, self._write, [b[:3] for b in batch])
            for *_, future in batch:
                future.set_result(None)

    def close(self) -> None:
        self._thread.shutdown()
        self._db.close()


def durable_baseline_system(base: str, redis: RedisClient, commit: GroupCommit) -> System:
    """The baseline with `commit` before each XADD: what the relay costs with
    rayflow's durability (acknowledged = durable), the floor under rayflow's
    outside append → SSE since it pushes committed rows straight to the
    replica (one crossing after the commit, as the relay's XREAD)."""
    plain = baseline_system(base, redis)

    async def append(part: str, i: int, chunk: str) -> None:
        key = f"{part}:{i}"
        await commit.commit(key, c.chunk_seq(chunk), chunk)
        await plain.append(part, i, chunk)

    return System("baseline + durable commit", plain.target, append, plain.write_fast)


def rayflow_system(
    base: str, runs: list[tuple[str, str]], *, one_run: bool = False, keys_per_run: int = 1
) -> System:
    """`runs`: (run id, public token) of the running tasks. Stream i of a part is
    that part's key on run i, with `one_run` key `<part>-<i>` of run 0, with
    `keys_per_run` k key `<part>-<i % k>` of run i // k."""

    def where(part: str, i: int) -> tuple[str, str, str]:
        if one_run:
            return runs[0][0], runs[0][1], f"{part}-{i}"
        if keys_per_run > 1:
            run = runs[i // keys_per_run]
            return run[0], run[1], f"{part}-{i % keys_per_run}"
        return runs[i][0], runs[i][1], part

    def target(part: str, i: int) -> tuple[str, dict[str, str]]:
        run_id, token, key = where(part, i)
        return f"{base}/realtime/v1/streams/{run_id}/{key}", {"Authorization": f"Bearer {token}"}

    async def append(part: str, i: int, chunk: str) -> int:
        run_id, _, key = where(part, i)
        return await streams.append(key, chunk, target=run_id)

    async def write_fast(part: str, i: int, n: int) -> None:
        run_id, _, key = where(part, i)
        async with streams.writer(key, target=run_id) as w:
            for start in range(0, n, BATCH):
                for s in range(start, min(n, start + BATCH)):
                    w.write(c.make_chunk(s))
                await asyncio.sleep(0)  # let the writer ship this batch

    system = System("rayflow (one run)" if one_run else "rayflow", target, append, write_fast)
    system.where = where  # type: ignore[attr-defined]
    return system


#: concurrent HTTP connections of the HTTP-append client (keep-alive, reused)
HTTP_CONNECTIONS = 200


def http_appender(
    system: System, name: str, base: str, secret: str, url: Callable[[str, int], str]
) -> tuple[System, Any]:
    """`system` appending one chunk per `POST url(part, i)` (the raw body,
    `Authorization: Bearer <secret>`), answered 200 once acknowledged.

    The client is aiohttp (already installed with Ray; its parser is C), not
    httpx: at 2,000 requests/s httpx's own pool costs this process more CPU
    than the server spends (py-spy: `_assign_requests_to_connections`), and
    its pool timed out before rayflow answered."""
    import aiohttp

    session = aiohttp.ClientSession(
        base_url=base,
        headers={"Authorization": f"Bearer {secret}"},
        connector=aiohttp.TCPConnector(limit=HTTP_CONNECTIONS),
        timeout=aiohttp.ClientTimeout(total=60),
    )

    async def append(part: str, i: int, chunk: str) -> None:
        async with session.post(url(part, i), data=chunk) as r:
            if r.status != 200:
                raise RuntimeError(f"append: HTTP {r.status}: {await r.text()}")
            await r.read()

    # concurrent POSTs may land in any order: only the count is checked
    return System(name, system.target, append, system.write_fast, False), session


def rayflow_http_append(system: System, base: str, runs: list[tuple[str, str]], secret: str):
    """The same rayflow, appending through `POST …/{run}/self/{key}/append`."""

    def url(part: str, i: int) -> str:
        return f"/realtime/v1/streams/{runs[i][0]}/self/{part}/append"

    return http_appender(system, "rayflow (HTTP append)", base, secret, url)


def baseline_http_append(system: System, base: str) -> tuple[System, Any]:
    """The relay, appending through its own `POST /streams/{key}/append`
    (its FastAPI app `XADD`s and answers: redis_diy_peer.sse_app)."""
    key = system.key  # type: ignore[attr-defined]
    return http_appender(
        system,
        "baseline (HTTP append)",
        base,
        BASELINE_SECRET,
        lambda p, i: f"/streams/{key(p, i)}/append",
    )


def healthz_system(http: System, session: Any) -> System:
    """`GET /healthz` in place of an append: one HTTP request the replica
    answers with nothing behind it (Serve + FastAPI + the client)."""

    async def append(part: str, i: int, chunk: str) -> None:
        async with session.get("/healthz") as r:
            if r.status != 200:
                raise RuntimeError(f"healthz: HTTP {r.status}")
            await r.read()

    return System("GET /healthz", http.target, append, http.write_fast, False)


# --- the three parts ---


async def paced_appends(
    system: System,
    part: str,
    streams_n: int,
    seconds: float,
    rate: int = RATE,
    failed: list[BaseException] | None = None,
) -> list[float]:
    """Open loop: `rate` chunks/s on each stream; returns each append's ack time (ms).
    A failed append raises, or, given `failed`, is collected there."""
    acks: list[float] = []
    n = int(rate * seconds)

    async def one(i: int, seq: int) -> None:
        chunk = c.make_chunk(seq)
        await system.append(part, i, chunk)
        acks.append(c.age_ms(c.chunk_ts(chunk)))

    pending = []
    start = time.perf_counter()
    for seq in range(n):
        for i in range(streams_n):
            pending.append(asyncio.create_task(one(i, seq)))
        await asyncio.sleep(max(0.0, start + (seq + 1) / rate - time.perf_counter()))
    for outcome in await asyncio.gather(*pending, return_exceptions=True):
        if isinstance(outcome, BaseException):
            if failed is None:
                raise outcome
            failed.append(outcome)
    return acks


async def python_reader(run_id: str, part: str, total: int) -> list[float]:
    """rayflow's own reader in this process (no HTTP): latency per chunk (ms)."""
    live = c.LiveRead()
    async for chunk in streams.read(run_id, part, timeout_s=60):
        live.add(chunk)
        if len(live.lat_ms) >= total:
            break
    return live.lat_ms


async def latency(
    system: System,
    streams_n: int,
    seconds: float,
    py_run: str | None = None,
    keep: list[tuple[str, list[Reader]]] | None = None,
    rate: int = RATE,
    cpu_of: list[int] | None = None,
) -> dict[str, Any]:
    """Part 1: append → SSE client latency, `streams_n` streams × `rate` chunks/s.
    `keep` receives the part's name and its readers (for the breakdown);
    `cpu_of`: pids whose process trees' CPU time is charged to the part."""
    part = f"lat{streams_n}-{uuid.uuid4().hex[:6]}"
    total = int(rate * seconds)
    async with sse_client(streams_n) as client:
        py = asyncio.create_task(python_reader(py_run, part, total)) if py_run else None
        targets = [system.target(part, i) for i in range(streams_n)]
        readers, tasks = await start_readers(client, targets, total)
        cpu0 = cpu_seconds(cpu_of) if cpu_of else 0.0
        by_process = cpu_by_process(cpu_of) if cpu_of else {}
        acks = await paced_appends(system, part, streams_n, seconds, rate)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        cpu = cpu_seconds(cpu_of) - cpu0 if cpu_of else None
        spent = cpu_delta(by_process, cpu_by_process(cpu_of)) if cpu_of else {}
        py_lat = await asyncio.wait_for(py, 60) if py else None
    if keep is not None:
        keep.append((part, readers))
    lat = [x for rd in readers for x in rd.live.lat_ms]
    check(readers, total, system.ordered)
    out = {"sse_ms": c.summary(lat), "ack_ms": c.summary(acks)}
    # a new stream's first chunks take another path (rayflow: the reader
    # waits for the stream to exist, the writer learns who follows it from
    # its first calls to the RunActor): shown apart, beside the rest
    out["first_ms"] = [round(x, 2) for x in readers[0].live.lat_ms[:FIRST]]
    out["sse_after_first_ms"] = c.summary([x for rd in readers for x in rd.live.lat_ms[FIRST:]])
    if cpu is not None:
        out["cpu_us_per_chunk"] = cpu / len(lat) * 1e6
        out["cpu_us_by_process"] = {name: sec / len(lat) * 1e6 for name, sec in spent.items()}
    if py_lat is not None:
        out["py_ms"] = c.summary(py_lat)
    return out


#: a stream's first chunks, reported apart (`latency`)
FIRST = 3


def cpu_by_process(roots: list[int]) -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds so far) of the processes under `roots`."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in c.process_tree(roots):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
            fields = tail.split()
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().replace("\0", " ").strip()
            name = cmd[5:] if cmd.startswith("ray::") else head.split("(", 1)[1]
            name = (name.split() or ["?"])[0].split(".")[0][:40]
            out[pid] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two snapshots, summed per process name."""
    out: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        spent = cpu - before.get(pid, (name, 0.0))[1]
        if spent > 0:
            out[name] = out.get(name, 0.0) + spent
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU time so far of the processes under `roots` (Linux /proc)."""
    total = 0
    for pid in c.process_tree(roots):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


async def sustained(
    system: System,
    streams_n: int,
    rate: int,
    seconds: float,
    cpu_of: list[int],
    calls: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Appends only, `streams_n` streams × `rate`/s, open loop: ack latency,
    the rate of acknowledged appends, how many failed (e.g. timed out), and
    the CPU per acknowledged append (every process, the client's included);
    `calls`: a counter whose growth is reported per append (rayflow: calls
    telling the RunActors)."""
    part = f"sus-{uuid.uuid4().hex[:6]}"
    failed: list[BaseException] = []
    calls0 = await asyncio.to_thread(calls) if calls else 0
    t0, cpu0, by_process = time.perf_counter(), cpu_seconds(cpu_of), cpu_by_process(cpu_of)
    acks = await paced_appends(system, part, streams_n, seconds, rate, failed)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(cpu_of) - cpu0
    spent = cpu_delta(by_process, cpu_by_process(cpu_of))
    n = max(1, len(acks))
    out = {
        "ack_ms": c.summary(acks),
        "rate": len(acks) / elapsed,
        "failed": len(failed),
        "cpu_us_per_append": cpu / n * 1e6,
        "cpu_us_by_process": {name: sec / n * 1e6 for name, sec in spent.items()},
    }
    if calls:
        out["calls_per_s"] = (await asyncio.to_thread(calls) - calls0) / elapsed
    if failed:
        out["error"] = f"{len(failed)} appends failed ({type(failed[0]).__name__})"
    return out


MANY = {"runs": 10, "keys": 10, "rate": 20}


async def many_inside(
    many: System, runs: list[tuple[str, str]], seconds: float, cpu_of: list[int]
) -> dict[str, Any]:
    """The 100-stream part with rayflow's writers inside the runs (each run
    appends to its own 10 streams): what a task streaming tokens does."""
    part = f"in-{uuid.uuid4().hex[:6]}"
    n = MANY["runs"] * MANY["keys"]
    total = int(MANY["rate"] * seconds)
    async with sse_client(n) as client:
        targets = [many.target(part, i) for i in range(n)]
        readers, tasks = await start_readers(client, targets, total)
        cpu0 = cpu_seconds(cpu_of)
        start_at = time.time() + 1.0  # every run has its command by then
        keys = [f"{part}-{k}" for k in range(MANY["keys"])]
        command = {"pace": {"keys": keys, "rate": MANY["rate"], "n": total, "start_at": start_at}}
        by_process = cpu_by_process(cpu_of)
        await asyncio.gather(*(gate.send(run_id, command) for run_id, _ in runs))
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        cpu = cpu_seconds(cpu_of) - cpu0
        spent = cpu_delta(by_process, cpu_by_process(cpu_of))
    check(readers, total)
    lat = [x for rd in readers for x in rd.live.lat_ms]
    return {
        "sse_ms": c.summary(lat),
        "cpu_us_per_chunk": cpu / len(lat) * 1e6,
        "cpu_us_by_process": {name: sec / len(lat) * 1e6 for name, sec in spent.items()},
    }


async def throughput(system: System, n: int, cpu_of: list[int] | None = None) -> dict[str, Any]:
    """Part 2: one stream, one SSE client, the writer as fast as it goes."""
    part = f"tput-{uuid.uuid4().hex[:6]}"
    async with sse_client(1) as client:
        readers, tasks = await start_readers(client, [system.target(part, 0)], n)
        before = cpu_by_process(cpu_of) if cpu_of else {}
        await system.write_fast(part, 0, n)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        spent = cpu_delta(before, cpu_by_process(cpu_of)) if cpu_of else {}
    check(readers, n)
    live = readers[0].live
    out = {"chunks_s": live.result()["throughput"], "sse_ms": c.summary(live.lat_ms)}
    if spent:
        out["cpu_us_by_process"] = {name: sec / n * 1e6 for name, sec in spent.items()}
    return out


async def fanout(system: System, n_readers: int, n: int) -> dict[str, Any]:
    """Part 3: `n_readers` SSE readers of one live stream of `n` chunks."""
    part = f"fan-{uuid.uuid4().hex[:6]}"
    async with sse_client(n_readers) as client:
        readers, tasks = await start_readers(client, [system.target(part, 0)] * n_readers, n)
        t0 = time.time_ns()
        await system.write_fast(part, 0, n)
        await asyncio.wait_for(asyncio.gather(*tasks), 180)
    check(readers, n)
    span_s = (max(rd.live.last_recv for rd in readers) - t0) / 1e9
    delivered = sum(len(rd.live.lat_ms) for rd in readers)
    return {
        "chunks_s": delivered / span_s,
        "delivered": delivered,
        "seconds": span_s,
        "sse_ms": c.summary([x for rd in readers for x in rd.live.lat_ms]),
    }


def check(readers: list[Reader], total: int, ordered: bool = True) -> None:
    """Every reader got every chunk (in order, when sent in order)."""
    for k, rd in enumerate(readers):
        got, disorder = len(rd.live.lat_ms), rd.live.out_of_order if ordered else 0
        if got != total or disorder:
            raise AssertionError(f"reader {k}: {got} of {total} chunks, {disorder} out of order")


# --- servers ---


#: uvicorn serving `redis_diy_peer.sse_app`. Every SSE reader holds one Redis
#: connection (XREAD BLOCK) and redis-py's pool stops at 100 by default, so the
#: app's client gets a pool of 1,000: 500 readers need 500 connections.
#: It runs as `uvicorn[standard]` serves an app (httptools, uvloop): what
#: rayflow's replica runs on too.
BASELINE_SERVER = """
import functools, redis.asyncio, uvicorn
redis.asyncio.Redis = functools.partial(redis.asyncio.Redis, max_connections=1000)
uvicorn.run("redis_diy_peer:sse_app", factory=True, host="127.0.0.1", port={port},
            log_level="warning", http="httptools", loop="uvloop", access_log=False)
"""
#: the relay's bearer key for its HTTP appends
BASELINE_SECRET = uuid.uuid4().hex


def start_baseline(servers: Servers) -> tuple[str, RedisClient]:
    """Redis (Debian's redis-server) and the DIY SSE app of benchmarks/peers.

    Installs what is missing first (redis-server from apt, the peers' venv from
    PyPI), the way benchmarks/peers/run.py does, so a fresh machine runs it."""
    python = ensure_peers_venv()
    redis_port = servers.start_redis()["port"]
    port = free_port()
    proc = subprocess.Popen(
        [python, "-c", BASELINE_SERVER.format(port=port)],
        cwd=PEERS,
        env={**os.environ, "PEER_REDIS_PORT": str(redis_port), "PEER_SECRET": BASELINE_SECRET},
    )
    servers.procs.append(("uvicorn", proc))
    wait_port(port, 60, proc)
    return f"http://127.0.0.1:{port}", RedisClient(redis_port)


def ensure_peers_venv() -> str:
    """The peers' venv (redis-py, sse-starlette, uvicorn) and Debian's redis-server,
    installed by peers/run.py's setup when missing."""
    import run as peers_run

    system = next(s for s in peers_run.SYSTEMS if s["name"] == "redis-diy")
    peers_run.setup([system])
    return str(peers_run.VENV / "bin/python")


def start_rayflow(
    data_dir: str, n_runs: int, synchronous: str, ingress: str = "direct", **extra: Any
) -> tuple[str, str, list[tuple[str, str]], str]:
    """Local Ray + SQLite, the HTTP API on a free port, `n_runs` running tasks.

    Started the way `rayflow dev` starts it: with `ingress="direct"` (the
    product's default) the one Serve replica listens on the HTTP port itself
    (rayflow's own listener, rayflow/_runtime/ingress.py; `ingress="serve"`:
    Ray Serve's direct ingress) and Serve's proxy on another port;
    `ingress="proxy"` keeps the proxy on the HTTP port.
    Returns (base URL, secret key, runs, the proxy's base URL)."""
    from ray import serve

    from rayflow._runtime import bootstrap
    from serve.app import proxy_port, wait_ready
    from serve.app import start as start_http

    # Ray starts its workers (RunActors, Serve's proxy and replica) at nice 15;
    # Redis and uvicorn run at 0: on a shared machine that alone decides latency
    os.environ.setdefault("RAY_worker_niceness", "0")
    if ingress == "proxy":
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
    elif ingress == "serve":
        os.environ["RAYFLOW_HTTP_INGRESS"] = "serve"
    port = free_port()
    # the pool as deployed (`pool_size` 2: the runs share its warm RunActors,
    # up to `runs_per_actor` each); `--pool-size 11` gives each run an actor
    # of its own, as this benchmark did before RunActors hosted many runs
    if extra.get("pool_size") is None:
        extra.pop("pool_size", None)
    bootstrap.start_ray(rayflow.Settings(), serve_port=port)
    settings = rayflow.init(
        data_dir=data_dir,
        sqlite_synchronous=synchronous,
        http_host="127.0.0.1",
        http_port=port,
        **extra,
    )
    proxy = proxy_port(settings)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": proxy})
    base = start_http(settings)
    wait_ready(base, timeout_s=120)
    proxy_base = f"http://127.0.0.1:{proxy}"
    wait_ready(proxy_base, timeout_s=120)
    handles = [idle.trigger({}).result(timeout_s=120) for _ in range(n_runs)]
    for h in handles:
        wait_executing(h.id)
    log(f"rayflow: {n_runs} runs on {len(run_actors([h.id for h in handles]))} RunActors")
    assert settings.secret_key
    runs = [(h.id, h.public_access_token) for h in handles]
    return base, settings.secret_key, runs, proxy_base


def published_calls(run_ids: list[str]) -> int:
    """Calls to `RunActor.published` the RunActors executing `run_ids` answered."""
    import ray

    from rayflow._runtime.connection import current

    controller = current().controller
    located = ray.get([controller.locate.remote(r) for r in run_ids])
    actors = {actor._actor_id: actor for _, actor in located if actor is not None}
    return sum(ray.get([a.published_calls.remote() for a in actors.values()]))


def run_actors(run_ids: list[str]) -> set[Any]:
    """The distinct RunActors executing `run_ids`."""
    import ray

    from rayflow._runtime.connection import current

    controller = current().controller
    located = ray.get([controller.locate.remote(r) for r in run_ids])
    return {actor._actor_id for _, actor in located if actor is not None}


def wait_executing(run_id: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = rayflow.runs.retrieve(run_id).result(timeout_s=30).status
        if status == "EXECUTING":
            return
        if status not in ("QUEUED", "PENDING"):
            raise RuntimeError(f"run {run_id} is {status}, not running")
        time.sleep(0.1)
    raise TimeoutError(f"run {run_id} not running after {timeout_s} s")


def stop_rayflow(runs: list[tuple[str, str]]) -> None:
    import ray
    from ray import serve

    for run_id, _ in runs:
        with contextlib.suppress(Exception):
            gate.send(run_id, {}).result(timeout_s=10)
    with contextlib.suppress(Exception):
        serve.shutdown()
    with contextlib.suppress(Exception):
        rayflow.shutdown(stop_runs=True)
    ray.shutdown()


# --- the table ---


def ms(s: dict[str, Any] | None) -> str:
    if not s or s.get("p50") is None:
        return "–"
    return f"{s['p50']:.2f} / {s['p99']:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"×{a / b:.2f}"


def lat_row(label: str, ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    return (
        f"| {label} | {ms(ours)} | {ms(theirs)} | "
        f"{ratio(ours['p50'], theirs['p50'])} / {ratio(ours['p99'], theirs['p99'])} |"
    )


def table(res: dict[str, Any], size: dict[str, Any]) -> str:
    r, b = res["rayflow"], res["baseline"]
    rows = [
        "| metric | rayflow | baseline | rayflow / baseline |",
        "|---|---:|---:|---:|",
    ]

    def both(part: str, label: str, key: str = "sse_ms", ours: str | None = None) -> None:
        mine = r.get(ours or part)
        if mine is not None and part in b:
            rows.append(lat_row(label, mine[key], b[part][key]))

    both("lat1", "append → SSE, 1 stream × 50/s (ms, p50 / p99)")
    both("lat10", "append → SSE, 10 streams × 50/s (ms)")
    for part, label in (("lat1", "1 stream"), ("lat10", "10 streams")):
        if part in r and part in b and "first_ms" in r[part]:
            label = f"… {label}: the first {FIRST} chunks of stream 0 / every other chunk (ms)"
            mine, theirs = r[part], b[part]
            rows.append(
                f"| {label} | {', '.join(map(str, mine['first_ms']))} /"
                f" {ms(mine['sse_after_first_ms'])} | {', '.join(map(str, theirs['first_ms']))} /"
                f" {ms(theirs['sse_after_first_ms'])} | |"
            )
    both("lat1", "append ack, 1 stream (ms)", "ack_ms")
    both("lat10", "append ack, 10 streams (ms)", "ack_ms")
    fl = b.get("lat1_floor")
    if fl:
        runs = ", ".join(f"{x['p50']:.2f}/{x['p99']:.2f}" for x in fl["durable_runs"])
        relays = ", ".join(f"{x['p50']:.2f}/{x['p99']:.2f}" for x in fl["relay_runs"])
        rows.append(
            f"| floor: the relay with a durable group commit before XADD, 1 stream, median of"
            f" {len(fl['durable_runs'])} runs alternating with the relay (ms; ratio to the relay)"
            f" | {ms(fl['durable']['sse_ms'])} ({runs}) | {ms(fl['relay'])} ({relays})"
            f" | {ratio(fl['durable']['sse_ms']['p50'], fl['relay']['p50'])}"
            f" / {ratio(fl['durable']['sse_ms']['p99'], fl['relay']['p99'])} |"
        )
        commits = ", ".join(f"{x['p50']:.2f}/{x['p99']:.2f}" for x in fl["commit_runs"])
        rows.append(
            f"| … of which each append waited for its durable commit (ms) | {ms(fl['commit'])}"
            f" ({commits}) | | |"
        )
    for part, label in (("lat1", "1 stream"), ("lat10", "10 streams")):
        durable = b.get(f"{part}_durable")
        if durable and part in b and not (part == "lat1" and fl):
            rows.append(
                lat_row(
                    f"floor: the baseline with a durable group commit before XADD, {label}"
                    " (ms; ratio to the baseline)",
                    durable["sse_ms"],
                    b[part]["sse_ms"],
                )
            )
    for part, label in (("lat1", "1 stream"), ("lat10", "10 streams")):
        if part in r:
            rows.append(py_row(f"append → Python reader, no HTTP, {label} (ms)", r[part]))
    both("lat10", "append → SSE, 10 streams of one run (one RunActor) (ms)", ours="lat10_one")
    both("lat10", "append ack, 10 streams of one run (ms)", "ack_ms", ours="lat10_one")
    both("lat1", "HTTP append → SSE, 1 stream (ms)", ours="lat1_http")
    both("lat1", "HTTP append ack, 1 stream (ms)", "ack_ms", ours="lat1_http")
    both("lat1", "… through Serve's proxy: append → SSE, 1 stream (ms)", ours="lat1_proxy")
    both("lat1", "… through Serve's proxy: HTTP append → SSE (ms)", ours="lat1_http_proxy")
    both("lat1", "… through Serve's proxy: HTTP append ack (ms)", "ack_ms", ours="lat1_http_proxy")
    n = MANY["runs"] * MANY["keys"]
    many = f"{n} streams ({MANY['runs']} runs × {MANY['keys']}) × {MANY['rate']}/s"
    both("many", f"append → SSE, {many}, one reader each (ms)")
    if "many" in r and "many" in b:
        cr, cb = r["many"]["cpu_us_per_chunk"], b["many"]["cpu_us_per_chunk"]
        rows.append(
            f"| CPU per delivered chunk, {many} (µs) | {cr:,.0f} | {cb:,.0f} | {ratio(cr, cb)} |"
        )
        rows.append(by_process_row(r["many"]))
    both("many", "… rayflow's writers inside the runs (ms)", ours="many_inside")
    if "many_inside" in r and "many" in b:
        cr, cb = r["many_inside"]["cpu_us_per_chunk"], b["many"]["cpu_us_per_chunk"]
        label = "CPU per delivered chunk, writers inside the runs (µs)"
        rows.append(f"| {label} | {cr:,.0f} | {cb:,.0f} | {ratio(cr, cb)} |")
        rows.append(by_process_row(r["many_inside"]))
    if "sustained" in r and "sustained" in b:
        label = f"HTTP append ack at 10 × {SUSTAINED_RATE}/s (both over HTTP) (ms)"
        rows.append(lat_row(label, r["sustained"]["ack_ms"], b["sustained"]["ack_ms"]))
        rr, rb = r["sustained"]["rate"], b["sustained"]["rate"]
        fr, fb = r["sustained"]["failed"], b["sustained"]["failed"]
        label = "… acknowledged appends/s (failed appends)"
        rows.append(f"| {label} | {rr:,.0f} ({fr}) | {rb:,.0f} ({fb}) | {ratio(rr, rb)} |")
        cr, cb = r["sustained"]["cpu_us_per_append"], b["sustained"]["cpu_us_per_append"]
        label = "… CPU per acknowledged append, every process (µs)"
        rows.append(f"| {label} | {cr:,.0f} | {cb:,.0f} | {ratio(cr, cb)} |")
        if r["sustained"].get("cpu_us_by_process"):
            rows.append(by_process_row(r["sustained"]))
        if "calls_per_s" in r["sustained"]:
            label = "… calls telling the RunActors (`published`) per s"
            rows.append(f"| {label} | {r['sustained']['calls_per_s']:,.0f} | | |")
    if "sustained" in r and "sustained_xadd" in b:
        x = b["sustained_xadd"]
        label = f"floor: the relay's XADD without HTTP at 10 × {SUSTAINED_RATE}/s (ms)"
        rows.append(lat_row(label, r["sustained"]["ack_ms"], x["ack_ms"]))
        label = "… acknowledged/s (failed), CPU per append (µs)"
        rows.append(
            f"| {label} | | {x['rate']:,.0f} ({x['failed']}), {x['cpu_us_per_append']:,.0f} | |"
        )
    if "sustained" in b and b["sustained"].get("cpu_us_by_process"):
        rows.append(by_process_row(b["sustained"], baseline=True))
    if "sustained_healthz" in r and "sustained" in b:
        h = r["sustained_healthz"]
        label = f"floor: GET /healthz at 10 × {SUSTAINED_RATE}/s, no append behind it (ms)"
        rows.append(lat_row(label, h["ack_ms"], b["sustained"]["ack_ms"]))
        rh, rb = h["rate"], b["sustained"]["rate"]
        label = "… answered requests/s (failed), CPU per request (µs)"
        rows.append(
            f"| {label} | {rh:,.0f} ({h['failed']}), {h['cpu_us_per_append']:,.0f}"
            f" | {rb:,.0f} | {ratio(rh, rb)} |"
        )
    if "tput" in r and "tput" in b:
        tr, tb = r["tput"]["chunks_s"], b["tput"]["chunks_s"]
        label = "SSE throughput, 1 stream → 1 client (chunks/s)"
        rows.append(f"| {label} | {tr:,.0f} | {tb:,.0f} | {ratio(tr, tb)} |")
        if r["tput"].get("cpu_us_by_process"):
            rows.append(by_process_row(r["tput"]))
    fr, fb = r.get("fan"), b.get("fan")
    if fr or fb:
        label = f"{size['readers']} SSE readers of one live stream: delivered chunks/s"
        rows.append(
            f"| {label} | {fmt_fan(fr)} | {fmt_fan(fb)} | "
            f"{ratio(fr and fr.get('chunks_s'), fb and fb.get('chunks_s'))} |"
        )
    return "\n".join(rows)


def by_process_row(part: dict[str, Any], baseline: bool = False) -> str:
    """The heaviest processes of a part's CPU per delivered chunk (a process
    started during the part is charged its start-up too), in rayflow's
    column or the baseline's."""
    by = part.get("cpu_us_by_process", {})
    top = ", ".join(f"{name} {us:,.0f}" for name, us in list(by.items())[:6])
    label = "… of which, by process (µs per chunk)"
    return f"| {label} | | {top} | |" if baseline else f"| {label} | {top} | | |"


def py_row(label: str, part: dict[str, Any]) -> str:
    return f"| {label} | {ms(part.get('py_ms'))} | – | |"


def fmt_fan(f: dict[str, Any] | None) -> str:
    if not f:
        return "–"
    if "error" in f:
        return f"failed: {f['error'][:80]}"
    return f"{f['chunks_s']:,.0f} ({f['delivered']:,} in {f['seconds']:.1f} s)"


# --- entry ---


#: the parts, in order (`--parts` picks some)
PARTS = [
    "lat1",
    "lat10",
    "tput",
    "fan",
    "many",
    "many_inside",
    "sustained",
    "lat10_one",
    "lat1_http",
    "proxy",
]


async def run_parts(
    system: System,
    size: dict[str, Any],
    fan_chunks: int,
    py_runs: list[str] | None,
    parts: list[str],
    many: System,
    appender: System,
    cpu_of: list[int],
    runs: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The parts both systems run; `py_runs`: also read with rayflow's Python
    reader; `many`: the system laid out as MANY runs × keys (100 streams);
    `appender`: how the sustained part appends (rayflow: over HTTP)."""
    out: dict[str, Any] = {}
    if "lat1" in parts:
        log(f"{system.name}: latency, 1 stream")
        out["lat1"] = await latency(system, 1, size["lat_s"], py_runs[0] if py_runs else None)
    if "lat10" in parts:
        log(f"{system.name}: latency, 10 streams")
        out["lat10"] = await latency(system, 10, size["lat_s"], py_runs[1] if py_runs else None)
    if "tput" in parts:
        log(f"{system.name}: throughput")
        out["tput"] = await throughput(system, size["tput_chunks"], cpu_of)
    if "fan" in parts:
        log(f"{system.name}: {size['readers']} readers × {fan_chunks} chunks")
        try:
            out["fan"] = await fanout(system, size["readers"], fan_chunks)
        except Exception as e:  # a failed fan-out must not hide the other figures
            out["fan"] = {"error": f"{type(e).__name__}: {e}"}
    if "many" in parts:
        n = MANY["runs"] * MANY["keys"]
        log(f"{system.name}: {n} streams × {MANY['rate']}/s, one SSE reader each")
        out["many"] = await latency(many, n, size["lat_s"], rate=MANY["rate"], cpu_of=cpu_of)
    if "many_inside" in parts and runs is not None:
        n = MANY["runs"] * MANY["keys"]
        log(f"{system.name}: {n} streams × {MANY['rate']}/s written inside the runs")
        out["many_inside"] = await many_inside(many, runs, size["lat_s"], cpu_of)
    if "sustained" in parts:
        log(f"{appender.name}: sustained appends, 10 streams × {SUSTAINED_RATE}/s")
        calls = (lambda: published_calls([r for r, _ in runs])) if runs else None
        out["sustained"] = await sustained(
            appender, 10, SUSTAINED_RATE, size["lat_s"], cpu_of, calls
        )
    return out


#: appends/s per stream of the sustained part (× 10 streams = 2,000/s)
SUSTAINED_RATE = 200


def log(msg: str) -> None:
    print(f"[http-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def bench_baseline(
    base: str,
    redis: RedisClient,
    size: dict[str, Any],
    parts: list[str],
    pids: list[int],
    synchronous: str,
) -> dict[str, Any]:
    try:
        fan_chunks = size["fan_chunks"] // BASELINE_FAN_SHARE
        system = baseline_system(base, redis)
        cpu_of = [os.getpid(), *pids]
        http_system, client = baseline_http_append(system, base)
        async with client:
            out = await run_parts(
                system, size, fan_chunks, None, parts, system, http_system, cpu_of
            )
        if "sustained" in parts:
            # the floor: XADD straight to Redis, no HTTP (what this part measured before)
            log(f"floor: XADD, 10 streams × {SUSTAINED_RATE}/s (no HTTP)")
            out["sustained_xadd"] = await sustained(
                system, 10, SUSTAINED_RATE, size["lat_s"], cpu_of
            )
        with tempfile.TemporaryDirectory(prefix="rayflow-http-relay-commit-") as tmp:
            commit = GroupCommit(f"{tmp}/relay.db", synchronous)
            durable = durable_baseline_system(base, redis, commit)
            try:
                if "lat1" in parts:
                    out["lat1_floor"] = await floor_runs(system, durable, commit, size["lat_s"])
                    out["lat1_durable"] = out["lat1_floor"]["durable"]
                if "lat10" in parts:
                    log("floor: the relay with a durable commit, 10 streams")
                    out["lat10_durable"] = await latency(durable, 10, size["lat_s"])
            finally:
                commit.close()
        return out
    finally:
        await redis.close()


#: runs of the 1-stream floor argument, each the plain relay then the relay
#: with a durable commit (alternating: load drifts on a shared box)
FLOOR_REPEATS = 3


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of several runs' p50s and of their p99s."""
    from statistics import median

    return {
        "p50": median(r["p50"] for r in runs),
        "p99": median(r["p99"] for r in runs),
        "n": sum(r["n"] for r in runs),
    }


async def floor_runs(
    relay: System, durable: System, commit: GroupCommit, seconds: float
) -> dict[str, Any]:
    """Issue 23's 1-stream p50 goal (≤ 2× the relay) against the floor under
    any system that acknowledges and shows only durable chunks, as rayflow
    does (acknowledged = durable = visible; SQLite `synchronous=FULL`): the
    relay with a durable group commit before each XADD. FLOOR_REPEATS
    alternating runs of the plain relay and of that floor, each run's p50
    and p99, their medians, and the floor's parts measured inside it: how
    long each append waited for its commit (the relay's delivery is the
    rest)."""
    relays, floors, commits = [], [], []
    for i in range(FLOOR_REPEATS):
        log(f"floor argument {i + 1}/{FLOOR_REPEATS}: the relay, then with a durable commit")
        relays.append((await latency(relay, 1, seconds))["sse_ms"])
        before = len(commit.waits_ms)
        floors.append((await latency(durable, 1, seconds))["sse_ms"])
        commits.append(c.summary(commit.waits_ms[before:]))
    return {
        "relay_runs": relays,
        "durable_runs": floors,
        "commit_runs": commits,
        "relay": median_summary(relays),
        "durable": {"sse_ms": median_summary(floors)},
        "commit": median_summary(commits),
    }


async def bench_rayflow(
    base: str,
    secret: str,
    runs: list[tuple[str, str]],
    size: dict[str, Any],
    parts: list[str],
    proxy_base: str,
) -> dict[str, Any]:
    system = rayflow_system(base, runs)
    many = rayflow_system(base, runs, keys_per_run=MANY["keys"])
    http_system, client = rayflow_http_append(system, base, runs, secret)
    async with client:
        out = await run_parts(
            system,
            size,
            size["fan_chunks"],
            [runs[0][0], runs[1][0]],
            parts,
            many,
            http_system,
            [os.getpid()],  # Ray's processes, Serve's included, are this driver's children
            runs,
        )
        if "lat10_one" in parts:
            log("rayflow: latency, 10 streams of one run")
            one_run = rayflow_system(base, runs, one_run=True)
            out["lat10_one"] = await latency(one_run, 10, size["lat_s"])
        if "lat1_http" in parts:
            log("rayflow: latency, 1 stream, HTTP append")
            out["lat1_http"] = await latency(http_system, 1, size["lat_s"])
        if "sustained" in parts:
            # the floor under the sustained part: the same client and open-loop
            # rate, each request answered by the replica with nothing behind it
            log(f"floor: GET /healthz at 10 × {SUSTAINED_RATE}/s (Serve + FastAPI only)")
            out["sustained_healthz"] = await sustained(
                healthz_system(http_system, client),
                10,
                SUSTAINED_RATE,
                size["lat_s"],
                [os.getpid()],
            )
    if "proxy" in parts and proxy_base != base:
        # the same deployment through Serve's proxy, A/B against direct ingress
        proxied = rayflow_system(proxy_base, runs)
        log("rayflow: latency, 1 stream, through Serve's proxy")
        out["lat1_proxy"] = await latency(proxied, 1, size["lat_s"])
        http_proxied, client = rayflow_http_append(proxied, proxy_base, runs, secret)
        async with client:
            log("rayflow: latency, 1 stream, HTTP append through Serve's proxy")
            out["lat1_http_proxy"] = await latency(http_proxied, 1, size["lat_s"])
    return out


def measure_floors(
    base: str, synchronous: str, lat10_actors: int = 10, n: int = 150
) -> dict[str, Any]:
    """What no design on Ray Serve and fsync'd commits can go below, measured
    here without rayflow's code, one operation every 1/RATE s as in the
    latency parts (paced calls cost more than back-to-back ones on this box:
    the processes sleep in between), and back to back for reference: a bare
    async Ray actor call (round trip), one one-chunk Store commit (SQLite,
    `synchronous`), one HTTP request answered by the rayflow replica (`GET
    /healthz`: Serve + FastAPI); and a bare Ray relay (writer -> actor ->
    reader actor) at each latency part's shape and rate (the 10-stream part
    on `lat10_actors` actors, as rayflow's pool placed its runs)."""
    sys.path.insert(0, str(HERE))
    import _breakdown as bd
    import _ray_relay as rr

    sys.path.remove(str(HERE))
    out: dict[str, Any] = {}
    for label, gap in (("paced", 1 / RATE), ("back to back", 0.0)):
        ray_ms = bd.ray_call_floor(n, gap)["bare async actor call, round trip"]
        commit_ms = bd.sqlite_floor(synchronous, n, gap)
        http_ms = []
        with httpx.Client(base_url=base) as client:
            client.get("/healthz")
            for _ in range(n):
                t0 = time.perf_counter()
                client.get("/healthz").raise_for_status()
                http_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(gap)
        out[label] = {
            "ray_call": c.summary(ray_ms),
            "commit": c.summary(commit_ms),
            "http": c.summary(http_ms),
        }
    # two Ray crossings at the latency parts' own shapes and rates: what any
    # chunk from a writer through a RunActor to a replica costs, without a
    # commit or HTTP (benchmarks/_ray_relay.py)
    shapes = dict(RELAY_SHAPES)
    if lat10_actors < 10:
        # the 10 runs as the pool placed them: `lat10_actors` RunActors, each
        # told once per tick for all its runs (rayflow/_runtime/run_appender.py)
        shapes["lat10"] = (lat10_actors, 10 // lat10_actors, RATE, True)
    out["relay"] = {
        part: c.summary(rr.relay_latency(runs, keys, rate, 5, multiplexed=mux))
        for part, (runs, keys, rate, mux) in shapes.items()
    }
    out["lat10_actors"] = lat10_actors
    return out


#: the relay floor's shapes, per latency part: (runs, streams per run, rate, one
#: call per run for all its streams) — rayflow's own way of carrying each part
RELAY_SHAPES = {
    "lat1": (1, 1, RATE, False),
    "lat10": (10, 1, RATE, False),
    "many": (MANY["runs"], MANY["keys"], MANY["rate"], True),
    "many, one call per stream": (MANY["runs"], MANY["keys"], MANY["rate"], False),
}


def goals_table(res: dict[str, Any]) -> str:
    """Issue 10's p50 goals beside the floor under each: met, out of reach
    (the floor is above the goal), or missed with room left."""
    r, b, floors = res["rayflow"], res["baseline"], res.get("floors")
    if not floors:
        return ""
    rows = []
    relay = floors.get("relay", {})
    for part, f in relay.items():
        on = f" on {floors.get('lat10_actors', 10)} actors" if part == "lat10" else ""
        rows.append(
            f"bare Ray relay (two crossings, no commit, no HTTP), shape of {part}{on}:"
            f" p50 {f['p50']:.2f} / p99 {f['p99']:.2f} ms"
        )
    for label, f in floors.items():
        if label in ("relay", "lat10_actors"):
            continue
        ray_ms, commit_ms, http_ms = (f[k]["p50"] for k in ("ray_call", "commit", "http"))
        rows.append(
            f"floors, {label} (p50, ms): bare Ray call round trip {ray_ms:.2f}, one-chunk"
            f" commit {commit_ms:.2f}, HTTP request to the replica {http_ms:.2f}"
        )
    rows += [
        "",
        "| goal (p50) | rayflow | baseline | goal | floor under rayflow | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]

    def floor_of(kind: str, http: bool = False) -> float:
        # a writer outside the run commits to the Store itself before it is
        # told (rayflow/_runtime/run_appender.py); over HTTP the replica does
        f = floors[kind]
        return f["commit"]["p50"] + (f["http"]["p50"] if http else 0.0)

    # 1 stream at RATE/s: the processes sleep between chunks (paced floors);
    # 10 and 100 streams keep them busy (back-to-back floors, the lower ones)
    def sse_floor(part: str, kind: str) -> tuple[float, str]:
        # an outside writer's commit is pushed straight to the replica (one
        # crossing, as the relay's XREAD): the relay with a durable commit,
        # measured in this run; else two Ray crossings (writer -> RunActor
        # -> replica) and a commit: the Ray relay at the part's shape plus it
        if f"{part}_durable" in b:
            return b[f"{part}_durable"]["sse_ms"]["p50"], "the relay + a durable commit"
        if part in relay:
            return relay[part]["p50"] + floors[kind]["commit"]["p50"], "relay + commit"
        return floors[kind]["ray_call"]["p50"] + floor_of(kind), "Ray call + commit"

    b2b = "back to back"
    cases = [
        ("lat1", "sse_ms", None, "append → SSE, 1 stream", 2, *sse_floor("lat1", "paced")),
        ("lat10", "sse_ms", None, "append → SSE, 10 streams", 2, *sse_floor("lat10", b2b)),
        (
            "many",
            "sse_ms",
            None,
            "append → SSE, 100 streams, writer outside",
            2,
            *sse_floor("many", b2b),
        ),
        (
            "lat1",
            "ack_ms",
            None,
            "outside writer ack, 1 stream",
            3,
            floor_of("paced"),
            "one commit, paced",
        ),
        (
            "lat1",
            "ack_ms",
            "lat1_http",
            "HTTP append ack, 1 stream",
            3,
            floor_of("paced", http=True),
            "HTTP request + commit, paced",
        ),
        (
            "many",
            "sse_ms",
            "many_inside",
            "append → SSE, 100 streams, writers inside the runs",
            2,
            *sse_floor("many", b2b),
        ),
    ]
    for part, key, ours, label, times, floor, what in cases:
        mine, theirs = r.get(ours or part), b.get(part)
        if not mine or not theirs or mine[key].get("p50") is None:
            continue
        got, base_ms = mine[key]["p50"], theirs[key]["p50"]
        goal = times * base_ms
        if got <= goal:
            verdict = "met"
        elif floor > goal:
            verdict = f"out of reach: floor ×{floor / base_ms:.1f} the baseline"
        else:
            verdict = "missed; the floor is below the goal"
        rows.append(
            f"| {label} | {got:.2f} | {base_ms:.2f} | ≤ {goal:.2f} ({times}×)"
            f" | {floor:.2f} ({what}) | {verdict} |"
        )
    fl = b.get("lat1_floor")
    if fl and "lat1" in r:
        # the argument for the 1-stream p50 goal, from the floor runs alone
        # (their relay runs, not the one run beside rayflow's in the table)
        relay, floor = fl["relay"]["p50"], fl["durable"]["sse_ms"]["p50"]
        commit, ours = fl["commit"]["p50"], r["lat1"]["sse_ms"]["p50"]
        rows += [
            "",
            f"1-stream p50 goal, medians of {len(fl['relay_runs'])} alternating runs: 2 × the"
            f" relay's {relay:.2f} = {2 * relay:.2f} ms. A chunk acknowledged only once durable"
            f" and shown only once acknowledged (rayflow: SQLite synchronous=FULL) waits for its"
            f" commit first: {commit:.2f} ms here; the relay with that commit before its XADD"
            f" delivers at {floor:.2f} ms (×{floor / relay:.2f} the relay). rayflow"
            f" {ours:.2f} ms = ×{ours / floor:.2f} that floor.",
            (
                "The goal is below the floor: meeting it would mean showing chunks before"
                " they are durable (the relay's Redis does not fsync)."
                if floor > 2 * relay
                else f"The goal is above the floor: {2 * relay - floor:.2f} ms are left for"
                f" what rayflow adds (it adds {ours - floor:.2f} ms)."
            ),
        ]
    sus, healthz, bsus = r.get("sustained"), r.get("sustained_healthz"), b.get("sustained")
    if sus and healthz and bsus and bsus["ack_ms"].get("p50") and sus["ack_ms"].get("p50"):
        goal = 3 * bsus["ack_ms"]["p50"]
        floor = healthz["ack_ms"]["p50"]
        met = sus["rate"] >= 0.95 * 10 * SUSTAINED_RATE and sus["ack_ms"]["p50"] <= goal
        if met:
            verdict = "met"
        elif healthz["rate"] < 0.95 * 10 * SUSTAINED_RATE or floor > goal:
            verdict = (
                f"out of reach: the replica answers {healthz['rate']:,.0f} bare requests/s"
                f" at p50 {floor:.2f} ms"
            )
        else:
            verdict = "missed; the floor is below the goal"
        # judged against the relay's own HTTP append (the relay is a
        # FastAPI app); its XADD without HTTP is printed in the table as a floor
        rows.append(
            f"| {10 * SUSTAINED_RATE:,} HTTP appends/s, ack p50 (the relay's HTTP append)"
            f" | {sus['rate']:,.0f}/s, {sus['ack_ms']['p50']:.2f}"
            f" | {bsus['rate']:,.0f}/s, {bsus['ack_ms']['p50']:.2f} | ≤ {goal:.2f} (3×)"
            f" | {healthz['rate']:,.0f}/s, {floor:.2f} (GET /healthz, same client and rate)"
            f" | {verdict} |"
        )
    for part, label in (("many", "100 streams, writer outside"), ("many_inside", "inside")):
        if part in r and "cpu_us_per_chunk" in r[part]:
            cores = r[part]["cpu_us_per_chunk"] * MANY["runs"] * MANY["keys"] * MANY["rate"] / 1e6
            rows.append(
                f"| CPU to deliver {label}: {r[part]['cpu_us_per_chunk']:,.0f} µs/chunk"
                f" × {MANY['runs'] * MANY['keys'] * MANY['rate']:,}/s | {cores:.2f} cores"
                f" | | ≤ 2 cores | | {'fits' if cores <= 2 else 'more than the box has'} |"
            )
    return "\n".join(rows)


def breakdown(
    size: dict[str, Any], synchronous: str, postgres: bool, ingress: str, pool_size: int | None
) -> None:
    """`--breakdown`: where an append's time goes, hop by hop (benchmarks/_breakdown.py)."""
    import ray

    sys.path.insert(0, str(HERE))
    import _breakdown as bd

    sys.path.remove(str(HERE))
    load_before = os.getloadavg()
    servers = Servers()
    try:
        pg = servers.start_postgres()["url"] if postgres else None
        floor_rows = bd.floors(pg)
    finally:
        servers.stop_all()
    parts: list[tuple[str, dict[str, list[float]]]] = []
    cpu_rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rayflow-http-breakdown-") as tmp:
        hops_dir = Path(tmp) / "hops"
        base, secret, runs, _ = start_rayflow(
            tmp, 10, synchronous, ingress, trace_hops_dir=str(hops_dir), pool_size=pool_size
        )
        try:
            floor_rows.update(bd.ray_call_floor())

            async def go() -> list[tuple[str, int, list[tuple[str, list[Reader]]]]]:
                done: list[tuple[str, int, list[tuple[str, list[Reader]]]]] = []
                system = rayflow_system(base, runs)
                for label, n in (("1 stream", 1), ("10 streams (10 runs)", 10)):
                    log(f"breakdown: {label}")
                    keep: list[tuple[str, list[Reader]]] = []
                    before = cpu_by_process([os.getpid()])
                    await latency(system, n, size["lat_s"], keep=keep)
                    spent = cpu_delta(before, cpu_by_process([os.getpid()]))
                    cpu_rows[label] = {
                        k: v / (n * RATE * size["lat_s"]) * 1e6 for k, v in spent.items()
                    }
                    done.append((label, n, keep))
                http_system, client = rayflow_http_append(system, base, runs, secret)
                async with client:
                    log("breakdown: 1 stream, HTTP append")
                    keep = []
                    await latency(http_system, 1, size["lat_s"], keep=keep)
                    done.append(("1 stream, HTTP append", 1, keep))
                return done

            done = asyncio.run(go())
            hops = bd.Hops(hops_dir)
            for label, n, keep in done:
                part, readers = keep[0]
                merged: dict[str, list[float]] = {}
                for i, rd in enumerate(readers[:n]):
                    for hop, values in hops.per_hop(runs[i][0], part, rd.sent, rd.received).items():
                        merged.setdefault(hop, []).extend(values)
                parts.append((label, merged))
                # the stream's first chunk alone: it takes another path (the
                # reader waits for the stream, the writer has not learned who
                # follows the run yet)
                rd = readers[0]
                first = {0: rd.sent[0]}, {0: rd.received[0]}
                parts.append(
                    (
                        f"{label}, the first chunk of stream 0",
                        hops.per_hop(runs[0][0], part, *first),
                    )
                )
        finally:
            stop_rayflow(runs)
            if ray.is_initialized():
                ray.shutdown()
    print(bd.table("floors (no rayflow)", floor_rows))
    for label, rows in parts:
        print()
        title = f"append → SSE client, {label} × {RATE}/s, SQLite {synchronous}, {ingress} ingress"
        print(bd.table(title, rows))
    for label, per in cpu_rows.items():
        print(f"\n### CPU per delivered chunk by process, {label} (µs; driver = client too)\n")
        print("| process | µs/chunk |\n|---|---:|")
        for name, us in per.items():
            if us >= 1:
                print(f"| {name} | {us:,.0f} |")
        print(f"| total | {sum(per.values()):,.0f} |")
    print(
        f"\nbreakdown, {size['lat_s']:.0f} s per part; load average (1/5/15 min)"
        f" {'/'.join(f'{x:.1f}' for x in load_before)} before,"
        f" {'/'.join(f'{x:.1f}' for x in os.getloadavg())} after"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument(
        "--sqlite-synchronous",
        default="FULL",
        choices=["FULL", "NORMAL"],
        help="rayflow's SQLite durability (default FULL, rayflow's own default)",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="only the per-hop latency breakdown of rayflow (and the floors under it)",
    )
    p.add_argument(
        "--breakdown-postgres",
        action="store_true",
        help="with --breakdown: also a durable PostgreSQL commit floor (starts a server)",
    )
    p.add_argument(
        "--ingress",
        default="direct",
        choices=["proxy", "direct", "serve"],
        help="rayflow's HTTP port served by the replica itself (rayflow's own listener,"
        " the default, as `rayflow dev` does), by Ray Serve's direct ingress in the"
        " replica (`serve`), or by Serve's proxy",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="rayflow's warm RunActors (default: rayflow's own, 2, which the 10 runs share;"
        " 11: an actor per run, as before RunActors hosted many runs)",
    )
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default all: {','.join(PARTS)})",
    )
    args = p.parse_args()
    parts = args.parts.split(",")
    size = SIZES["quick" if args.quick else "full"]
    if args.breakdown:
        breakdown(
            size, args.sqlite_synchronous, args.breakdown_postgres, args.ingress, args.pool_size
        )
        return
    started, load_before = time.monotonic(), os.getloadavg()[0]
    servers = Servers()
    results: dict[str, Any] = {}
    runs: list[tuple[str, str]] = []
    try:
        log("starting Redis and the DIY SSE app")
        base, redis = start_baseline(servers)
        pids = [proc.pid for _, proc in servers.procs]
        results["baseline"] = asyncio.run(
            bench_baseline(base, redis, size, parts, pids, args.sqlite_synchronous)
        )
        log("starting rayflow (local Ray, SQLite, Serve)")
        with tempfile.TemporaryDirectory(prefix="rayflow-http-bench-") as tmp:
            rf_base, secret, runs, proxy_base = start_rayflow(
                tmp, 10, args.sqlite_synchronous, args.ingress, pool_size=args.pool_size
            )
            try:
                results["rayflow"] = asyncio.run(
                    bench_rayflow(rf_base, secret, runs, size, parts, proxy_base)
                )
                log("floors: a bare Ray call, a SQLite commit, one HTTP request to the replica")
                results["floors"] = measure_floors(
                    rf_base, args.sqlite_synchronous, len(run_actors([r for r, _ in runs]))
                )
            finally:
                stop_rayflow(runs)
    finally:
        servers.stop_all()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results, size))
    print()
    print(goals_table(results))
    print(
        f"\n{'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s, "
        f"rayflow SQLite synchronous={args.sqlite_synchronous}, {args.ingress} ingress, "
        f"pool_size {args.pool_size or 'default'}, "
        f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )


if __name__ == "__main__":
    main()
