"""rayflow itself, through its public API only (README.md), embedded default (local Ray + SQLite).

- output stream = ``streams.define("out", str)``; the task writes with ``out.writer()``
  (the documented way to stream many chunks: group-committed), calling ``await w.drain()``
  every 100 chunks as a real producer does (flow control, as ``asyncio.StreamWriter``: it
  waits while more than 64 written chunks are not durable yet); readers in other processes join the
  same Ray and store with ``rayflow.init(address=…)`` and iterate ``out.read(run_id)``.
- input = ``streams.input("in", dict).send`` from another process, ``.once()`` in the task.
- suspend/resume = ``.wait()``: the RunActor commits, exits, and a send revives the run.
- SSE = rayflow's own HTTP app (``serve/``) on Ray Serve, read with the secret key.
- chat turns = a session (``rayflow.sessions``) whose run ``await``s
  ``session.input.wait()`` for each message (suspended between turns: no process) and
  ``session.output.pipe``s the fake model's tokens (one journaled step per reply);
  the user process sends with ``sessions.open(id).input.send`` and reads
  ``.output.read(start, wait_s=…)``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import _common as c

NOT_YET = (
    "the rayflow core is not importable here: rayflow_peer needs rayflow.init(), @task with "
    ".trigger(), streams.define(...).append/read and streams.input(...).send/once/wait"
)

try:
    import rayflow
    from rayflow import sessions, streams, task

    out = streams.define("out", str)
    inp = streams.input("in", dict)
    go = streams.input("go", dict)

    @task(id="peers-writer")
    async def writer(p: dict) -> int:  # not dict[str, Any]: the RunActor cannot resolve `Any`
        await asyncio.sleep(max(0.0, p["start_at"] - time.time()))  # the reader subscribes
        async with out.writer() as w:
            for i in range(p["n"]):
                head = f"{i:08d} {time.time_ns():020d} "
                w.write(head + "x" * (64 - len(head)))
                if i % 100 == 99:
                    await w.drain()  # flow control, as asyncio.StreamWriter
        return int(p["n"])

    @task(id="peers-receiver")
    async def receiver(p: dict) -> list[float]:
        lat = []
        for _ in range(p["n"]):
            r = await inp.once(timeout_s=15)
            if not r.ok:
                break
            lat.append((time.time_ns() - r.output["ts"]) / 1e6)
        return lat

    @task(id="peers-tokens")
    async def tokens(p: dict) -> int:
        """Workload 6: a token every `interval` s, each durable on return."""
        await c.paced_tokens(out.append, p["n"], p["interval"])
        return int(p["n"])

    @task(id="peers-waiter")
    async def waiter(p: dict) -> float | None:
        r = await go.wait(timeout="1h")
        if not r.ok:
            return None
        return (time.time_ns() - r.output["ts"]) / 1e6

    @task(id="peers-chat")
    async def chat(p: dict) -> int:
        """Workload 7: one conversation; each turn's reply streams as it is made."""
        me = sessions.open(sessions.current().id)
        turns = 0
        while True:
            got = await me.input.wait(timeout="1h")
            if not got.ok or got.output.get("bye"):
                return turns
            # a pipe is one journaled step: a revival replays it without
            # calling the model again (an append loop would re-run it)
            await me.output.pipe(c.reply_tokens(got.output["turn"]))
            turns += 1

    IMPORT_ERROR = None
except ImportError as e:  # the core has not landed in this checkout
    IMPORT_ERROR = f"{NOT_YET} ({e})"


def _data_dir(cfg: dict[str, Any]) -> str:
    return os.path.join(cfg["tmp"], "rayflow")


def _join(cfg: dict[str, Any]) -> None:
    """A helper process joins the host's Ray and store."""
    rayflow.init(address=os.environ["PEERS_RAY_ADDRESS"], data_dir=_data_dir(cfg))


# --- helpers (other processes) ---


#: the reader helper's one event loop (workload 6 reads many streams at once)
_LOOP = asyncio.new_event_loop()


def reader_job(_ctx: Any, job: dict[str, Any]) -> dict[str, Any]:
    if job["op"] == "density":
        runs = _LOOP.run_until_complete(
            c.follow_all(job["ids"], lambda run_id: out.read(run_id, start_index=0, timeout_s=120))
        )
        return {"runs": runs}
    if job["op"] == "live":
        live = c.LiveRead()
        for chunk in out.read(job["run_id"], start_index=0, timeout_s=120):
            live.add(chunk)
        return live.result()
    if job["op"] == "late":
        return {
            "reads": [
                c.timed_late_read(
                    out.read(job["run_id"], start_index=job["offset"], timeout_s=60),
                    job["offset"],
                    job["n"],
                )
                for _ in range(job["reps"])
            ]
        }
    if job["op"] == "chat":
        user = sessions.open(job["session"])
        result = c.chat_turns(
            job["turns"],
            job["gap_s"],
            lambda turn: user.input.send({"turn": turn}).result(timeout_s=60),
            _session_tokens(job["session"]),
        )
        user.input.send({"bye": True}).result(timeout_s=60)
        return result
    if job["op"] == "sse":
        live = c.LiveRead()
        for chunk in c.sse_chunks(job["url"], headers=job["headers"]):
            live.add(chunk)
        return live.result()
    raise ValueError(job["op"])


def _session_tokens(session_id: str) -> Any:
    """Every output record of the session as it comes (the user's reader)."""
    import json

    at = 0
    while True:
        page = sessions.open(session_id).output.read(start=at, wait_s=30).result(timeout_s=60)
        for record in page.records:
            yield json.loads(record.body)["data"]
        at += len(page.records)


def sender_job(_ctx: Any, job: dict[str, Any]) -> dict[str, Any]:
    stream = inp if job["stream"] == "in" else go
    targets = job["targets"]
    for i in c.paced(len(targets), job["gap_s"], job.get("budget_s")):
        stream.send(targets[i], {"i": i, "ts": time.time_ns()}).result(timeout_s=60)
    return {"sent": i + 1}


# --- host ---


def _helper(cfg: dict[str, Any], role: str) -> c.Helper:
    return c.Helper(
        c.helper_argv(__file__, role, cfg["_config_path"]),
        env={"PEERS_RAY_ADDRESS": cfg["_ray_address"]},
    )


def _output(run_id: str, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = rayflow.runs.retrieve(run_id).result(timeout_s=30)
        if run.is_finished:
            if not run.is_success:
                raise RuntimeError(f"run {run_id} ended {run.status}: {run.error}")
            return run.output
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} did not finish in {timeout_s} s")


def w1(cfg: dict[str, Any]) -> dict[str, Any]:
    reps = []
    with _helper(cfg, "reader") as reader:
        for _ in c.reps(cfg):
            handle = writer.trigger({"n": cfg["n_chunks"], "start_at": time.time() + 0.5}).result(
                timeout_s=60
            )
            reps.append(reader.ask({"op": "live", "run_id": handle.id}))
            _output(handle.id)
    cfg["_w1_run"] = handle.id
    return c.summarize_live(reps)


def w2(cfg: dict[str, Any]) -> dict[str, Any]:
    n = cfg["n_chunks"]
    run_id = cfg.get("_w1_run")
    if run_id is None:
        run_id = writer.trigger({"n": n, "start_at": 0}).result(timeout_s=60).id
        _output(run_id)
    samples = {}
    with _helper(cfg, "reader") as reader:
        for offset in (0, c.late_offset(n)):
            samples[offset] = reader.ask(
                {"op": "late", "run_id": run_id, "offset": offset, "n": n, "reps": cfg["late_reps"]}
            )["reads"]
    return c.summarize_late(samples)


def w3(cfg: dict[str, Any]) -> dict[str, Any]:
    n = cfg["n_inputs"]
    handle = receiver.trigger({"n": n}).result(timeout_s=60)
    time.sleep(0.5)
    run = rayflow.runs.retrieve(handle.id).result(timeout_s=30)
    if run.is_finished:
        raise RuntimeError(f"run {handle.id} ended {run.status} before any input: {run.error}")
    with _helper(cfg, "sender") as sender:
        sender.ask(
            {
                "stream": "in",
                "targets": [handle.id] * n,
                "gap_s": cfg["input_gap_s"],
                "budget_s": cfg["send_budget_s"],
            }
        )
    return {"lat_ms": c.summary(_output(handle.id))}


def w4(cfg: dict[str, Any]) -> dict[str, Any]:
    n_wait, n_resume = cfg["n_waiters"], cfg["n_resume"]
    roots = [os.getpid()]  # rayflow.init started Ray here: every Ray process is below us
    before = c.footprint(roots)

    async def trigger_all() -> list[str]:
        ids: list[str] = []
        for start in range(0, n_wait, 500):
            handles = await waiter.batch_trigger([{}] * (min(n_wait, start + 500) - start))
            ids.extend(h.id for h in handles)
        return ids

    t0 = time.monotonic()
    asyncio.run(trigger_all())
    start_s = time.monotonic() - t0
    deadline = time.monotonic() + cfg["wait_settle_s"]
    waiting_ids: list[str] = []
    while time.monotonic() < deadline:
        waiting_ids = [
            r.id
            for r in rayflow.runs.list(
                status="WAITING", task_id="peers-waiter", limit=n_wait + 10
            ).result(timeout_s=60)
        ]
        if len(waiting_ids) >= n_wait:
            break
        time.sleep(1.0)
    waiting = len(waiting_ids)
    settle_s = time.monotonic() - t0
    # the RunActors the burst needed go back to the pool, and idle ones past
    # the pool's minimum stop after pool_idle_s: measure once they have
    pool_min = cfg["_settings"].pool_size
    import ray

    from rayflow._runtime import connection

    controller = connection.current().controller
    idle_deadline = time.monotonic() + cfg["_settings"].pool_idle_s + 30
    while time.monotonic() < idle_deadline:
        stats = ray.get(controller.pool_stats.remote())
        if stats["idle"] + stats["busy"] + stats["starting"] <= pool_min:
            break
        time.sleep(0.5)
    time.sleep(1.0)
    during = c.footprint(roots)
    resumed = waiting_ids[:n_resume]  # only runs that are suspended now
    sent = 0
    if resumed:
        with _helper(cfg, "sender") as sender:
            sent = sender.ask(
                {
                    "stream": "go",
                    "targets": resumed,
                    "gap_s": cfg["resume_gap_s"],
                    "budget_s": cfg["send_budget_s"],
                }
            )["sent"]
    lat: list[float] = []
    deadline = time.monotonic() + 60
    for run_id in resumed[:sent]:
        try:
            v = _output(run_id, max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            break
        if v is not None:
            lat.append(v)
    return {
        "lat_ms": c.summary(lat),
        "waiting": waiting,
        "start_s": round(start_s, 2),
        "settle_s": round(settle_s, 1),
        "resumed": len(lat),
        "note": (
            f"{waiting} of {n_wait} triggered runs were WAITING after {settle_s:.0f} s"
            if waiting < n_wait
            else ""
        ),
        "pss_kib_per_wait": (during["pss_kib"] - before["pss_kib"]) / max(1, waiting),
        "processes_held": during["processes"] - before["processes"],
        "footprint_before": before,
        "footprint_during": during,
    }


def w5(cfg: dict[str, Any]) -> dict[str, Any]:
    from serve.app import start as start_http
    from serve.app import wait_ready

    port = cfg["free_ports"][0]
    settings = cfg["_settings"].model_copy(update={"http_host": "127.0.0.1", "http_port": port})
    base = start_http(settings)
    headers = {"Authorization": f"Bearer {settings.secret_key}"}
    wait_ready(base)
    reps = []
    with _helper(cfg, "reader") as reader:
        for _ in c.reps(cfg):
            handle = writer.trigger({"n": cfg["n_chunks"], "start_at": time.time() + 0.5}).result(
                timeout_s=60
            )
            reps.append(
                reader.ask(
                    {
                        "op": "sse",
                        "headers": headers,
                        "url": f"{base}/realtime/v1/streams/{handle.id}/out",
                    }
                )
            )
            _output(handle.id)
    return c.summarize_live(reps)


def w6(cfg: dict[str, Any]) -> dict[str, Any]:
    n, d = cfg["density_runs"], cfg["density_duration_s"]
    k = int(d * 10)
    with _helper(cfg, "reader") as reader:

        async def start_all() -> tuple[int, list[str]]:
            started = time.time_ns()
            ids: list[str] = []
            for at in range(0, n, 500):
                batch = [{"n": k, "interval": 0.1}] * (min(n, at + 500) - at)
                ids.extend(h.id for h in await tokens.batch_trigger(batch))
            return started, ids

        started, ids = asyncio.run(start_all())
        runs = reader.ask({"op": "density", "ids": ids}, timeout_s=600)["runs"]
    for run_id in ids:
        _output(run_id)
    return c.summarize_density(runs, started, n, k, d)


def w7(cfg: dict[str, Any]) -> dict[str, Any]:
    started = sessions.start(
        type="chat",
        task_id="peers-chat",
        external_id=f"peers-chat-{time.time_ns()}",
        trigger_config={"base_payload": {}},
    ).result(timeout_s=60)
    with _helper(cfg, "reader") as user:
        job = {"op": "chat", "session": started.id, "turns": cfg["chat_turns"]}
        result = user.ask({**job, "gap_s": cfg["turn_gap_s"]})
    _output(str(started.run_id))
    return result


def main(argv: list[str]) -> None:
    cfg = c.load_config(argv)
    role = argv[1]
    if IMPORT_ERROR is not None:
        if role == "bench":
            c.write_result(argv, {"not_yet": IMPORT_ERROR})
            return
        raise NotImplementedError(IMPORT_ERROR)
    # Ray workers (RunActors) import _common too
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(c.HERE), os.environ.get("PYTHONPATH")])
    )
    if role in ("reader", "sender"):
        c.helper_main(reader_job if role == "reader" else sender_job, lambda: _join(cfg))
    elif role == "bench":
        import ray

        # idle RunActors past the pool's minimum stop after 5 s (default 60 s),
        # so workload 4 measures the waiting runs, not the burst's warm pool
        from rayflow._runtime import bootstrap

        # started as `rayflow dev` starts it: workload 5's HTTP port is served
        # by the Serve replica itself (its own listener, rayflow/_runtime/ingress.py)
        bootstrap.start_ray(rayflow.Settings(), serve_port=cfg["free_ports"][0])
        cfg["_settings"] = rayflow.init(data_dir=_data_dir(cfg), pool_idle_s=5)
        cfg["_ray_address"] = ray.get_runtime_context().gcs_address
        try:
            results = c.run_workloads(cfg, {1: w1, 2: w2, 3: w3, 4: w4, 5: w5, 6: w6, 7: w7}, argv)
            c.write_result(argv, results)
        finally:
            rayflow.shutdown(stop_runs=True)
            ray.shutdown()
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
