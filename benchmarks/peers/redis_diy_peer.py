"""Do-it-yourself peer: Redis Streams + FastAPI/sse-starlette — what a team writes by hand.

- output stream = one Redis stream per run, ``XADD`` with explicit ids ``0-<seq+1>``
  (so a reader resumes from any index without a scan), an ``end`` entry closes it;
  readers ``XREAD BLOCK``.
- input = ``XADD`` to the run's inbox stream; the running task ``XREAD BLOCK``s on it.
- suspend/resume = the task stores its state in a hash and ends; one resume worker
  ``XREAD BLOCK``s a shared ``inputs`` stream, loads the state and continues it.
- SSE = a FastAPI route (uvicorn) relaying ``XREAD BLOCK`` through sse-starlette.

Redis runs with ``appendonly yes``, ``appendfsync everysec`` (its usual durable setting).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import _common as c

END = "end"


def _redis(cfg: dict[str, Any]) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=cfg["redis_port"], decode_responses=True)


def read_stream(r: Any, key: str, offset: int = 0, block_ms: int = 30_000):
    """Chunks of ``key`` from index ``offset`` on, until the end entry."""
    last = f"0-{offset}"  # XREAD is exclusive: id 0-k is chunk k-1, so the next is chunk k
    count = 10  # a small first batch: the first chunk should not wait for a thousand
    while True:
        resp = r.xread({key: last}, count=count, block=block_ms)
        count = 1000
        if not resp:
            raise TimeoutError(f"no data on {key} for {block_ms} ms")
        for entry_id, fields in resp[0][1]:
            if END in fields:
                return
            last = entry_id
            yield fields["c"]


# --- helpers (other processes) ---


def reader_job(r: Any, job: dict[str, Any]) -> dict[str, Any]:
    if job["op"] == "live":
        live = c.LiveRead()
        for chunk in read_stream(r, job["key"]):
            live.add(chunk)
        return live.result()
    if job["op"] == "late":
        return {
            "reads": [
                c.timed_late_read(
                    read_stream(r, job["key"], job["offset"]), job["offset"], job["n"]
                )
                for _ in range(job["reps"])
            ]
        }
    if job["op"] == "sse":
        live = c.LiveRead()
        for chunk in c.sse_chunks(job["url"]):
            live.add(chunk)
        return live.result()
    raise ValueError(job["op"])


def sender_job(r: Any, job: dict[str, Any]) -> dict[str, Any]:
    targets = job["targets"]
    for i in c.paced(len(targets), job["gap_s"], job.get("budget_s")):
        r.xadd(
            job["stream"].format(run=targets[i]), {"run": targets[i], "i": i, "ts": time.time_ns()}
        )
    return {"sent": i + 1}


# --- the SSE app (served by uvicorn in its own process) ---


def sse_app() -> Any:
    """The relay: SSE over `XREAD BLOCK`, and `POST /streams/{key}/append`
    (one chunk, the raw body, `XADD`ed; acknowledged once Redis answered)
    behind a bearer key (`PEER_SECRET`, none when unset): the way a team
    exposes appends to backends outside its workers."""
    import hmac

    import redis.asyncio as aredis
    from fastapi import FastAPI, HTTPException, Request
    from sse_starlette.sse import EventSourceResponse

    app = FastAPI()
    r = aredis.Redis(
        host="127.0.0.1", port=int(os.environ["PEER_REDIS_PORT"]), decode_responses=True
    )
    expected = f"Bearer {os.environ.get('PEER_SECRET', '')}".encode()

    async def append(key: str, request: Request) -> dict[str, bool]:
        given = request.headers.get("authorization", "").encode()
        if "PEER_SECRET" in os.environ and not hmac.compare_digest(given, expected):
            raise HTTPException(401, "a bearer key is needed")
        body = await request.body()
        try:
            chunk = body.decode()
        except UnicodeDecodeError:
            raise HTTPException(400, "the chunk must be UTF-8 text") from None
        await r.xadd(key, {"c": chunk})
        return {"ok": True}

    # this module's annotations are strings, and `Request` is not a global here
    append.__annotations__["request"] = Request
    app.add_api_route("/streams/{key}/append", append, methods=["POST"])

    @app.get("/streams/{key}")
    async def stream(key: str, offset: int = 0) -> EventSourceResponse:
        async def events():
            last = f"0-{offset}"
            while True:
                resp = await r.xread({key: last}, count=1000, block=30_000)
                if not resp:
                    return
                for entry_id, fields in resp[0][1]:
                    if END in fields:
                        return
                    last = entry_id
                    yield {"id": entry_id.split("-")[1], "data": fields["c"]}

        return EventSourceResponse(events(), ping=15)

    return app


# --- workloads (host) ---


def _reader(cfg: dict[str, Any]) -> c.Helper:
    return c.Helper(c.helper_argv(__file__, "reader", cfg["_config_path"]))


def _write(r: Any, key: str, n: int) -> None:
    for i in range(n):
        r.xadd(key, {"c": c.make_chunk(i)}, id=f"0-{i + 1}")
    r.xadd(key, {END: 1}, id=f"0-{n + 1}")


def w1(cfg: dict[str, Any]) -> dict[str, Any]:
    r = _redis(cfg)
    reps = []
    with _reader(cfg) as reader:
        for _ in c.reps(cfg):
            key = f"w1:{uuid.uuid4().hex}"
            reader.send({"op": "live", "key": key})
            time.sleep(0.2)
            _write(r, key, cfg["n_chunks"])
            reps.append(reader.result())
    cfg["_w1_key"] = key
    return c.summarize_live(reps)


def w2(cfg: dict[str, Any]) -> dict[str, Any]:
    r = _redis(cfg)
    n = cfg["n_chunks"]
    key = cfg.get("_w1_key")
    if key is None:
        key = f"w2:{uuid.uuid4().hex}"
        _write(r, key, n)
    samples = {}
    with _reader(cfg) as reader:
        for offset in (0, c.late_offset(n)):
            samples[offset] = reader.ask(
                {"op": "late", "key": key, "offset": offset, "n": n, "reps": cfg["late_reps"]}
            )["reads"]
    return c.summarize_late(samples)


def w3(cfg: dict[str, Any]) -> dict[str, Any]:
    r = _redis(cfg)
    run = uuid.uuid4().hex
    n = cfg["n_inputs"]
    lat: list[float] = []

    def task() -> None:  # the running task: a blocking receive loop on its inbox
        last = "0-0"
        while len(lat) < n:
            resp = r.xread({f"in:{run}": last}, count=100, block=30_000)
            if not resp:
                return
            for entry_id, fields in resp[0][1]:
                lat.append(c.age_ms(int(fields["ts"])))
                last = entry_id

    t = threading.Thread(target=task, daemon=True)
    t.start()
    with c.Helper(c.helper_argv(__file__, "sender", cfg["_config_path"])) as sender:
        sender.ask(
            {
                "stream": "in:{run}",
                "targets": [run] * n,
                "gap_s": cfg["input_gap_s"],
                "budget_s": cfg["send_budget_s"],
            }
        )
    t.join(timeout=60)
    return {"lat_ms": c.summary(lat)}


def w4(cfg: dict[str, Any]) -> dict[str, Any]:
    r = _redis(cfg)
    roots = [cfg["redis_pid"], os.getpid()]
    before = c.footprint(roots)
    n_wait, n_resume = cfg["n_waiters"], cfg["n_resume"]
    runs = [uuid.uuid4().hex for _ in range(n_wait)]
    t0 = time.monotonic()
    pipe = r.pipeline(transaction=False)
    for run in runs:  # a task that waits saves its state and ends: no process held
        pipe.hset(f"state:{run}", mapping={"status": "WAITING", "step": 3, "payload": "x" * 64})
    pipe.execute()
    start_s = time.monotonic() - t0
    time.sleep(1.0)
    during = c.footprint(roots)
    stream = f"inputs:{uuid.uuid4().hex}"
    lat: list[float] = []
    done = threading.Event()

    def resume_worker() -> None:
        last = "0-0"
        while not done.is_set():
            resp = r.xread({stream: last}, count=100, block=1000)
            for entry_id, fields in resp[0][1] if resp else []:
                state = r.hgetall(f"state:{fields['run']}")
                if state.get("status") == "WAITING":  # continue the task from its state
                    r.hset(f"state:{fields['run']}", "status", "DONE")
                    lat.append(c.age_ms(int(fields["ts"])))
                last = entry_id

    worker = threading.Thread(target=resume_worker, daemon=True)
    worker.start()
    with c.Helper(c.helper_argv(__file__, "sender", cfg["_config_path"])) as sender:
        sender.ask(
            {
                "stream": stream,
                "targets": runs[:n_resume],
                "gap_s": cfg["resume_gap_s"],
                "budget_s": cfg["send_budget_s"],
            }
        )
    deadline = time.monotonic() + 30
    while len(lat) < n_resume and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    worker.join(timeout=5)
    r.delete(*[f"state:{run}" for run in runs])
    return {
        "lat_ms": c.summary(lat),
        "waiting": n_wait,
        "start_s": round(start_s, 2),
        "pss_kib_per_wait": (during["pss_kib"] - before["pss_kib"]) / n_wait,
        "processes_held": during["processes"] - before["processes"],
        "footprint_before": before,
        "footprint_during": during,
    }


def w5(cfg: dict[str, Any]) -> dict[str, Any]:
    r = _redis(cfg)
    port = cfg["free_ports"][0]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "redis_diy_peer:sse_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=str(c.HERE),
        env={**os.environ, "PEER_REDIS_PORT": str(cfg["redis_port"])},
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/docs")
        reps = []
        with _reader(cfg) as reader:
            for _ in c.reps(cfg):
                key = f"w5:{uuid.uuid4().hex}"
                reader.send({"op": "sse", "url": f"http://127.0.0.1:{port}/streams/{key}"})
                time.sleep(0.3)
                _write(r, key, cfg["n_chunks"])
                reps.append(reader.result())
        return c.summarize_live(reps)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def main(argv: list[str]) -> None:
    cfg = c.load_config(argv)
    role = argv[1]
    if role == "reader":
        c.helper_main(reader_job, lambda: _redis(cfg))
    elif role == "sender":
        c.helper_main(sender_job, lambda: _redis(cfg))
    elif role == "bench":
        c.write_result(
            argv,
            c.run_workloads(
                cfg,
                {
                    1: w1,
                    2: w2,
                    3: w3,
                    4: w4,
                    5: w5,
                    6: lambda cfg: c.na("not run: workload 6 compares durable runtimes"),
                    7: lambda cfg: c.na("not run: workload 7 compares durable runtimes"),
                },
                argv,
            ),
        )
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
