"""Ray Serve streaming responses, no durability — the floor Ray itself gives.

The "task" is the streaming generator of a Serve replica; the reader is the HTTP
client that called it (Serve has no stream a second reader can attach to), so:
- workload 1 = a plain chunked HTTP response, one line a chunk, read in another process;
- workload 2 = n/a: nothing is kept once the response is gone;
- workload 3 = the running generator awaits an asyncio.Queue that a second request
  (from another process) fills — the plain-Ray way to get input into a running call;
- workload 4 = n/a: Ray cannot suspend a call and release its replica;
- workload 5 = the same generator as ``text/event-stream`` (SSE) through the Serve proxy.

Runs in the project venv (ray[serve] is a rayflow dependency).
"""

import os
import sys
import time
import uuid
from typing import Any

import _common as c
from fastapi import FastAPI
from fastapi.responses import StreamingResponse


def _app() -> Any:
    import asyncio

    from ray import serve

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=200, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Streams:
        def __init__(self) -> None:
            self.inboxes: dict[str, asyncio.Queue[int]] = {}

        @api.get("/w1")
        async def w1(self, n: int, start_at: float, sse: int = 0) -> StreamingResponse:
            async def gen():
                await asyncio.sleep(max(0.0, start_at - time.time()))
                for i in range(n):
                    chunk = c.make_chunk(i)
                    yield f"data: {chunk}\n\n" if sse else chunk + "\n"
                    if i % 100 == 99:
                        await asyncio.sleep(0)  # let the replica flush, as a real producer would

            return StreamingResponse(gen(), media_type="text/event-stream" if sse else "text/plain")

        @api.get("/w3/{rid}")
        async def w3(self, rid: str, n: int) -> StreamingResponse:
            inbox: asyncio.Queue[int] = asyncio.Queue()
            self.inboxes[rid] = inbox

            async def gen():
                yield "ready\n"
                try:
                    for _ in range(n):
                        ts = await asyncio.wait_for(inbox.get(), timeout=60)
                        yield f"{c.age_ms(ts):.4f}\n"
                finally:
                    self.inboxes.pop(rid, None)

            return StreamingResponse(gen(), media_type="text/plain")

        @api.post("/w3/{rid}")
        async def send(self, rid: str, ts: int) -> dict[str, bool]:
            self.inboxes[rid].put_nowait(ts)
            return {"ok": True}

    return Streams.bind()


# --- helpers (other processes) ---


def _lines(url: str) -> Any:
    import httpx

    with (
        httpx.Client(timeout=httpx.Timeout(120, connect=10)) as client,
        client.stream("GET", url) as resp,
    ):
        resp.raise_for_status()
        yield from resp.iter_lines()


def reader_job(_ctx: Any, job: dict[str, Any]) -> dict[str, Any]:
    live = c.LiveRead()
    chunks = c.sse_chunks(job["url"]) if job["op"] == "sse" else _lines(job["url"])
    for chunk in chunks:
        if chunk:
            live.add(chunk)
    return live.result()


def sender_job(_ctx: Any, job: dict[str, Any]) -> dict[str, Any]:
    import httpx

    with httpx.Client(timeout=30) as client:
        for i in c.paced(job["n"], job["gap_s"], job.get("budget_s")):
            client.post(job["url"], params={"i": i, "ts": time.time_ns()}).raise_for_status()
    return {"sent": i + 1}


# --- workloads (host) ---


def start(cfg: dict[str, Any]) -> str:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # the replica imports _common too
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(c.HERE), os.environ.get("PYTHONPATH")])
    )
    import ray
    from ray import serve

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    port = cfg["free_ports"][0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(_app(), name="peers", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def _live(cfg: dict[str, Any], base: str, sse: int) -> dict[str, Any]:
    reps = []
    with c.Helper(c.helper_argv(__file__, "reader", cfg["_config_path"])) as reader:
        for _ in c.reps(cfg):
            url = f"{base}/w1?n={cfg['n_chunks']}&start_at={time.time() + 0.3}&sse={sse}"
            reps.append(reader.ask({"op": "sse" if sse else "live", "url": url}))
    return c.summarize_live(reps)


def w3(cfg: dict[str, Any], base: str) -> dict[str, Any]:
    import httpx

    rid, n = uuid.uuid4().hex, cfg["n_inputs"]
    lat: list[float] = []
    with (
        c.Helper(c.helper_argv(__file__, "sender", cfg["_config_path"])) as sender,
        httpx.Client(timeout=httpx.Timeout(120, connect=10)) as client,
        client.stream("GET", f"{base}/w3/{rid}?n={n}") as resp,
    ):
        lines = resp.iter_lines()
        assert next(lines) == "ready"
        sender.send(
            {
                "url": f"{base}/w3/{rid}",
                "n": n,
                "gap_s": cfg["input_gap_s"],
                "budget_s": cfg["send_budget_s"],
            }
        )
        for line in lines:
            if line:
                lat.append(float(line))
        sender.result()
    return {"lat_ms": c.summary(lat)}


def main(argv: list[str]) -> None:
    cfg = c.load_config(argv)
    role = argv[1]
    if role == "reader":
        c.helper_main(reader_job)
    elif role == "sender":
        c.helper_main(sender_job)
    elif role == "bench":
        base = start(cfg)
        try:
            results = c.run_workloads(
                cfg,
                {
                    1: lambda cfg: _live(cfg, base, 0),
                    2: lambda cfg: c.na(
                        "no durability: nothing is kept for a reader that comes later"
                    ),
                    3: lambda cfg: w3(cfg, base),
                    4: lambda cfg: c.na("Ray cannot suspend a call and release its replica"),
                    5: lambda cfg: _live(cfg, base, 1),
                    6: lambda cfg: c.na("its floor is benchmarks/density.py (one async actor)"),
                    7: lambda cfg: c.na("not run: workload 7 compares durable runtimes"),
                },
                argv,
            )
            c.write_result(argv, results)
        finally:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
