"""What every peer module shares: chunk format, statistics, helper processes, memory.

Standard library only: this module is imported both by the peers' own venv
(`.work/venv`) and by the project venv (Ray Serve and rayflow peers).

Every peer module is a script with three roles, chosen by its first argument:

- ``bench --config CFG --out OUT``: the host. Runs the tasks/workflows, starts
  the helper processes below, writes one result dict (JSON) to OUT.
- ``reader``: a helper process that reads an output stream (workloads 1, 2, 5).
- ``sender``: a helper process that sends input (workloads 3, 4).

Helpers talk to the host over stdin/stdout, one JSON object a line: the helper
prints ``{"ready": true}`` once its client is connected, then takes one job a
line and prints one result a line. So client start-up (``ray.init``, a DB
pool) is never inside a measurement.
"""

from __future__ import annotations

import json
import math
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CHUNK_BYTES = 64
HERE = Path(__file__).resolve().parent


# --- chunks: 64 ASCII bytes carrying their index and the writer's clock ---


def make_chunk(seq: int) -> str:
    """A 64-byte chunk: index, wall-clock ns at the moment of the write call, padding."""
    head = f"{seq:08d} {time.time_ns():020d} "
    return head + "x" * (CHUNK_BYTES - len(head))


def chunk_seq(chunk: str) -> int:
    return int(chunk[:8])


def chunk_ts(chunk: str) -> int:
    return int(chunk[9:29])


def age_ms(ts_ns: int) -> float:
    return (time.time_ns() - ts_ns) / 1e6


# --- statistics ---


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, p99 and count of a list of samples (the table's two numbers)."""
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "n": len(values)}


def na(reason: str) -> dict[str, Any]:
    return {"na": reason}


# --- helper processes ---


class Helper:
    """A reader/sender subprocess driven line by line over stdin/stdout."""

    def __init__(
        self, argv: list[str], *, env: dict[str, str] | None = None, ready_timeout_s: float = 120.0
    ) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # inherit: a helper's traceback shows in the run's log
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        first = self._read_line(ready_timeout_s)
        if not first.get("ready"):
            raise RuntimeError(f"helper {argv[1:3]} did not start: {first}")

    def _read_line(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"helper {self.argv[1:3]} gave no answer in {timeout_s:.0f} s"
                    )
                if not sel.select(timeout=min(left, 1.0)):
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"helper {self.argv[1:3]} exited with {self.proc.returncode}"
                        )
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(
                        f"helper {self.argv[1:3]} closed its output (exit {self.proc.poll()})"
                    )
                line = line.strip()
                if line.startswith("{"):
                    result: dict[str, Any] = json.loads(line)
                    if "error" in result:
                        raise RuntimeError(f"helper {self.argv[1:3]} failed: {result['error']}")
                    return result
                # anything else on stdout is a library's chatter; show it, keep reading
                print(f"  [helper] {line}", file=sys.stderr)
        finally:
            sel.close()

    def send(self, job: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def ask(self, job: dict[str, Any], timeout_s: float = 300.0) -> dict[str, Any]:
        self.send(job)
        return self._read_line(timeout_s)

    def result(self, timeout_s: float = 300.0) -> dict[str, Any]:
        return self._read_line(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Helper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def helper_main(handle_job: Any, setup: Any = None) -> None:
    """The loop of a helper process: set up, say ready, answer one job a line.

    ``setup()`` returns a context object passed to ``handle_job(ctx, job)``; a
    job's result dict is printed as one line. Exceptions are reported as
    ``{"error": ...}`` and end the helper.
    """
    out = sys.stdout
    # libraries that print to stdout must not break the line protocol
    sys.stdout = sys.stderr
    try:
        ctx = setup() if setup else None
        out.write(json.dumps({"ready": True}) + "\n")
        out.flush()
        for line in sys.stdin:
            if not line.strip():
                continue
            result = handle_job(ctx, json.loads(line))
            out.write(json.dumps(result) + "\n")
            out.flush()
    except BaseException as e:  # report, then exit non-zero
        import traceback

        traceback.print_exc()
        out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        out.flush()
        raise SystemExit(1) from e


def helper_argv(script: str, role: str, cfg_path: str, python: str | None = None) -> list[str]:
    return [python or sys.executable, str(HERE / script), role, "--config", cfg_path]


# --- reading a stream: the shared measurement loop ---


class LiveRead:
    """Accumulates a live read of workload 1/5: per-chunk latency and throughput."""

    def __init__(self) -> None:
        self.lat_ms: list[float] = []
        self.first_ts: int | None = None
        self.last_recv: int = 0
        self.expected_seq = 0
        self.out_of_order = 0

    def add(self, chunk: str) -> None:
        now = time.time_ns()
        ts = chunk_ts(chunk)
        if self.first_ts is None:
            self.first_ts = ts
        if chunk_seq(chunk) != self.expected_seq:
            self.out_of_order += 1
        self.expected_seq = chunk_seq(chunk) + 1
        self.lat_ms.append((now - ts) / 1e6)
        self.last_recv = now

    def result(self) -> dict[str, Any]:
        span = (self.last_recv - (self.first_ts or self.last_recv)) / 1e9
        return {
            "count": len(self.lat_ms),
            "throughput": len(self.lat_ms) / span if span > 0 else None,
            "lat_ms": [round(x, 3) for x in self.lat_ms],
            "out_of_order": self.out_of_order,
        }


def timed_late_read(chunks: Iterable[str], offset: int, total: int) -> dict[str, Any]:
    """Workload 2: time to first chunk and to the last one, reading from ``offset``."""
    t0 = time.perf_counter()
    first_ms = None
    n = 0
    first_seq = None
    for chunk in chunks:
        if first_ms is None:
            first_ms = (time.perf_counter() - t0) * 1e3
            first_seq = chunk_seq(chunk)
        n += 1
        if first_seq is not None and first_seq + n >= total:
            break
    return {
        "ttfc_ms": first_ms,
        "all_ms": (time.perf_counter() - t0) * 1e3,
        "count": n,
        "first_seq": first_seq,
    }


# --- workload 6: many runs streaming at once ---


class Follow:
    """What one reader saw of one run in workload 6: per-token latency, the
    writer clocks of its first and last token (when the run was streaming)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.count = self.out_of_order = 0
        self.first_ts = self.last_ts = self.end_ns = 0
        self.lat_ms: list[float] = []

    def add(self, chunk: str) -> None:
        now = time.time_ns()
        ts = chunk_ts(chunk)
        if not self.count:
            self.first_ts = ts
        if chunk_seq(chunk) != self.count:
            self.out_of_order += 1
        self.count += 1
        self.last_ts = ts
        self.lat_ms.append(round((now - ts) / 1e6, 3))

    def result(self) -> dict[str, Any]:
        self.end_ns = self.end_ns or time.time_ns()
        return {
            "run_id": self.run_id,
            "count": self.count,
            "out_of_order": self.out_of_order,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "end_ns": self.end_ns,
            "lat_ms": self.lat_ms,
        }


async def follow_all(ids: Sequence[str], chunks_of: Any) -> list[dict[str, Any]]:
    """Read every run's stream at once (`chunks_of(id)` is an async iterable)."""
    import asyncio

    async def one(run_id: str) -> dict[str, Any]:
        follow = Follow(run_id)
        async for chunk in chunks_of(run_id):
            follow.add(chunk)
        return follow.result()

    return list(await asyncio.gather(*(one(i) for i in ids)))


async def paced_tokens(write: Any, n: int, interval_s: float) -> None:
    """Workload 6's run body: `await write(chunk)` n times, one every
    `interval_s` (open loop: the schedule does not drift with the write)."""
    import asyncio

    start = time.monotonic()
    for i in range(n):
        await write(make_chunk(i))
        delay = start + (i + 1) * interval_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def peak_streaming(runs: Sequence[dict[str, Any]]) -> int:
    """Most runs streaming at one instant: a sweep over each run's first →
    last token (the writer's clock; `Follow.result()` rows)."""
    events = sorted(
        [(r["first_ts"], 1) for r in runs if r["count"]]
        + [(r["last_ts"], -1) for r in runs if r["count"]],
        key=lambda e: (e[0], -e[1]),
    )
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def summarize_density(
    runs: Sequence[dict[str, Any]], started_ns: int, n_runs: int, tokens: int, duration_s: float
) -> dict[str, Any]:
    """Workload 6: all done after (from the first start call), most runs
    streaming at once, per-token latency."""
    peak = peak_streaming(runs)
    done_s = (max(r["end_ns"] for r in runs) - started_ns) / 1e9 if runs else None
    return {
        "all_done_s": done_s,
        "all_done_x": done_s / duration_s if done_s else None,
        "peak": peak,
        "runs": n_runs,
        "lat_ms": summary([x for r in runs for x in r["lat_ms"]]),
        "chunks": sum(r["count"] for r in runs),
        "chunks_expected": n_runs * tokens,
        "out_of_order": sum(r["out_of_order"] for r in runs),
    }


# --- memory and processes held ---


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces: the ppid follows the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(roots: Iterable[int]) -> list[int]:
    """The given pids and all their descendants that are alive now."""
    kids = _children_map()
    seen: list[int] = []
    todo = [p for p in roots if os.path.exists(f"/proc/{p}")]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return seen


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def footprint(roots: Iterable[int]) -> dict[str, int]:
    """Memory (PSS, KiB) and number of processes of the trees under ``roots``."""
    pids = process_tree(roots)
    return {"pss_kib": sum(pss_kib(p) for p in pids), "processes": len(pids)}


# --- the bench entry ---


def load_config(argv: Sequence[str]) -> dict[str, Any]:
    path = argv[argv.index("--config") + 1]
    with open(path) as f:
        cfg: dict[str, Any] = json.load(f)
    cfg["_config_path"] = path
    return cfg


def write_result(argv: Sequence[str], result: dict[str, Any]) -> None:
    path = argv[argv.index("--out") + 1]
    with open(path, "w") as f:
        json.dump(result, f)


def run_workloads(
    cfg: dict[str, Any], workloads: dict[int, Any], argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """Run the selected workloads; a failure in one is recorded, the others still run.

    With ``argv`` the results so far are written after every workload, so a system
    that runs out of time still shows what it finished.
    """
    results: dict[str, Any] = {}
    # suspend/resume last: the waiting runs it leaves must not load the other workloads
    for number in sorted(workloads, key=lambda w: (w == 4, w)):
        fn = workloads[number]
        if number not in cfg["workloads"]:
            continue
        started = time.monotonic()
        print(f"  [{cfg['system']}] workload {number} …", file=sys.stderr, flush=True)
        try:
            results[f"w{number}"] = fn(cfg)
        except Exception as e:  # one broken workload must not hide the others' figures
            import traceback

            traceback.print_exc()
            results[f"w{number}"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        results[f"w{number}"]["seconds"] = round(time.monotonic() - started, 1)
        if argv is not None:
            write_result(argv, results)
    return results


def reps(cfg: dict[str, Any]) -> Iterable[int]:
    """Repetitions of workloads 1/5: always one, more only while within ``rep_budget_s``.

    A slow system (a few hundred durable writes a second) would otherwise take the
    whole run's time; the table says how many runs each median is of.
    """
    start = time.monotonic()
    for i in range(cfg["reps"]):
        if i > 0 and time.monotonic() - start > cfg["rep_budget_s"] * i / cfg["reps"]:
            return
        yield i


def paced(n: int, gap_s: float, budget_s: float | None = None) -> Iterable[int]:
    """Yield 0..n-1, one every ``gap_s`` seconds (open loop, no drift), for at most
    ``budget_s`` seconds: a system whose sends block must not stall the whole run."""
    start = time.perf_counter()
    for i in range(n):
        if budget_s is not None and time.perf_counter() - start > budget_s:
            return
        delay = start + i * gap_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


# --- summaries the table is built from ---


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def summarize_live(reps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Workloads 1 and 5: throughput (median of reps) and pooled per-chunk latency."""
    lat: list[float] = [x for r in reps for x in r["lat_ms"]]
    tps = [r["throughput"] for r in reps if r.get("throughput")]
    return {
        "throughput": median(tps),
        "throughput_reps": [round(t) for t in tps],
        "lat_ms": summary(lat),
        "chunks": sum(r["count"] for r in reps),
        "out_of_order": sum(r.get("out_of_order", 0) for r in reps),
    }


def summarize_late(samples: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Workload 2: time to first chunk from each offset, and to read to the end."""
    out: dict[str, Any] = {}
    for offset, reads in samples.items():
        name = "0" if offset == 0 else "_late"
        ttfc = [r["ttfc_ms"] for r in reads if r["ttfc_ms"] is not None]
        out[f"ttfc{name}_ms"] = summary(ttfc)
        out[f"all{name}_ms"] = summary([r["all_ms"] for r in reads])
        out[f"count{name}"] = [r["count"] for r in reads]
        if offset:
            out["late_offset"] = offset
    return out


def late_offset(n: int) -> int:
    """Workload 2's second offset: 9,000 of 10,000 (90 % of what was written)."""
    return n - n // 10


# --- SSE over HTTP (workload 5), for every system that offers it ---


#: a chunk as `make_chunk` writes it: digits, spaces and x's, which no JSON
#: encoding escapes, so it reads the same at any depth of nesting
CHUNK_HEAD = re.compile(r"\d{8} \d{20} ")
CHUNK_PAD = "x" * (CHUNK_BYTES - 30)


def extract_chunks(data: str) -> list[str]:
    """The 64-byte chunks inside one SSE ``data:`` payload, in order.

    Raw (one chunk an event) or JSON-wrapped, also batched and nested (rayflow follows
    Trigger.dev's wire format: ``{"records": [{"body": "<JSON text>"}]}``). Found by a
    string search of the payload, the same for every format, instead of decoding it: a
    JSON walk in Python cost 5-11 µs per chunk of a batch against ~0.2 µs for a raw
    event — this reader's cost, not the server's (a browser parses JSON natively); now
    ~0.6 µs per chunk batched, ~0.4 raw. `LiveRead` checks the chunks' order.
    """
    if len(data) == CHUNK_BYTES and CHUNK_HEAD.match(data):
        return [data]
    found: list[str] = []
    at = data.find(CHUNK_PAD)
    while at >= 0:
        chunk = data[at - 30 : at + len(CHUNK_PAD)]
        if CHUNK_HEAD.match(chunk):
            found.append(chunk)
        at = data.find(CHUNK_PAD, at + len(CHUNK_PAD))
    return found


def sse_chunks(
    url: str,
    headers: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    total: int | None = None,
) -> Iterable[str]:
    """Yield the chunks of an SSE response until it ends (or ``total`` were read)."""
    import httpx

    n = 0
    with (
        httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0)) as client,
        client.stream(
            "GET", url, headers={"Accept": "text/event-stream", **(headers or {})}
        ) as resp,
    ):
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            for chunk in extract_chunks(line[5:].lstrip(" ")):
                yield chunk
                n += 1
                if total is not None and n >= total:
                    return


# --- workload 7: chat turns (issue 22) ---

#: the fake model every system calls: TURN_TOKENS tokens, one every TOKEN_GAP_S
TURN_TOKENS = 20
TOKEN_GAP_S = 0.01


def turn_chunk(turn: int, i: int) -> str:
    """A 64-byte token of a reply: turn, index, `E` on the turn's last token."""
    head = f"{turn:04d} {i:04d} {'E' if i == TURN_TOKENS - 1 else '-'} "
    return head + "x" * (CHUNK_BYTES - len(head))


async def reply_tokens(turn: int) -> Any:
    """The fake model's reply to `turn`: an async generator of its tokens, one
    every TOKEN_GAP_S as they are "generated" (open loop, like workload 6)."""
    import asyncio

    start = time.monotonic()
    for i in range(TURN_TOKENS):
        yield turn_chunk(turn, i)
        delay = start + (i + 1) * TOKEN_GAP_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def stream_reply(write: Any, turn: int) -> None:
    """The fake model's reply to `turn`, each token handed to `await write(token)`."""
    async for token in reply_tokens(turn):
        await write(token)


def chat_turns(turns: int, gap_s: float, send: Any, tokens: Any) -> dict[str, Any]:
    """The user's side of workload 7: `turns` times, think for `gap_s`, `send(turn)`,
    then read the reply from the iterator `tokens` (one stream over every turn) up
    to its last token. Send → first token and send → turn complete, per turn."""
    first: list[float] = []
    done: list[float] = []
    for turn in range(turns):
        time.sleep(gap_s)
        sent = time.time_ns()
        send(turn)
        seen_first = False
        for chunk in tokens:
            if int(chunk[:4]) != turn:
                raise AssertionError(f"turn {turn}: got a token of turn {chunk[:4]}")
            if not seen_first:
                first.append((time.time_ns() - sent) / 1e6)
                seen_first = True
            if chunk[10] == "E":
                done.append((time.time_ns() - sent) / 1e6)
                break
    return {"first_ms": summary(first), "done_ms": summary(done), "turns": len(done)}
