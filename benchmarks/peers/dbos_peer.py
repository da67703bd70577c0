"""DBOS Transact peer, on PostgreSQL and on SQLite (``variant`` in the config).

- output stream = ``DBOS.write_stream`` / ``close_stream`` inside a workflow; readers in
  other processes use ``DBOSClient.read_stream`` (LISTEN/NOTIFY on PostgreSQL, polling
  every 10 ms on SQLite — DBOS's default is 1 s, which no one would benchmark with).
- input = ``DBOSClient.send`` from another process, ``DBOS.recv`` in a running workflow.
- suspend/resume = ``await DBOS.recv_async`` in async workflows: DBOS has no way to
  release a waiting workflow's process, so the waiters are coroutines of the app process.
- SSE: DBOS offers none (n/a).
- chat turns = one async workflow per conversation: ``await DBOS.recv_async`` for the
  user's message, the fake model's tokens each a ``write_stream_async``; the user's
  process sends with ``DBOSClient.send`` and reads the one stream with ``read_stream``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from typing import Any

import _common as c

KEY = "out"
POLL_S = 0.01


def _url(cfg: dict[str, Any]) -> str:
    if cfg["variant"] == "postgres":
        return str(cfg["pg_url"])
    return f"sqlite:///{cfg['tmp']}/dbos.sqlite"


def _client(cfg: dict[str, Any]) -> Any:
    from dbos import DBOSClient

    return DBOSClient(system_database_url=_url(cfg), use_listen_notify=cfg["variant"] == "postgres")


# --- helpers (other processes) ---


#: the reader helper's one event loop (workload 6 reads many streams at once)
_LOOP = asyncio.new_event_loop()


def reader_job(client: Any, job: dict[str, Any]) -> dict[str, Any]:
    if job["op"] == "density":
        runs = _LOOP.run_until_complete(
            c.follow_all(
                job["ids"],
                lambda wfid: client.read_stream_async(
                    wfid, KEY, offset=0, polling_interval_sec=POLL_S
                ),
            )
        )
        return {"runs": runs}

    def chunks(offset: int) -> Any:
        return client.read_stream(job["wfid"], KEY, offset=offset, polling_interval_sec=POLL_S)

    if job["op"] == "chat":
        return c.chat_turns(
            job["turns"],
            job["gap_s"],
            lambda turn: client.send(job["wfid"], {"turn": turn}, topic="in"),
            iter(chunks(0)),
        )
    if job["op"] == "live":
        live = c.LiveRead()
        for chunk in chunks(0):
            live.add(chunk)
        return live.result()
    if job["op"] == "late":
        return {
            "reads": [
                c.timed_late_read(chunks(job["offset"]), job["offset"], job["n"])
                for _ in range(job["reps"])
            ]
        }
    raise ValueError(job["op"])


def sender_job(client: Any, job: dict[str, Any]) -> dict[str, Any]:
    targets = job["targets"]
    for i in c.paced(len(targets), job["gap_s"], job.get("budget_s")):
        client.send(targets[i], {"i": i, "ts": time.time_ns()}, topic=job["topic"])
    return {"sent": i + 1}


# --- the app (host) ---


def launch(cfg: dict[str, Any]) -> Any:
    from dbos import DBOS

    config: dict[str, Any] = {
        "name": "peers-bench",
        "system_database_url": _url(cfg),
        "log_level": "WARNING",
        "sys_db_pool_size": 20,
    }
    if cfg["variant"] == "sqlite":
        config["notification_listener_polling_interval_sec"] = POLL_S

    @DBOS.workflow()
    def writer(n: int, start_at: float, budget_s: float) -> int:
        time.sleep(max(0.0, start_at - time.time()))  # the reader subscribes meanwhile
        # each write_stream is one durable commit: bound the time, not the count
        deadline = time.time() + budget_s
        written = 0
        for i in range(n):
            if time.time() > deadline:
                break
            DBOS.write_stream(KEY, c.make_chunk(i))
            written += 1
        DBOS.close_stream(KEY)
        return written

    @DBOS.workflow()
    def receiver(n: int) -> list[float]:
        lat = []
        for _ in range(n):
            msg = DBOS.recv("in", timeout_seconds=15)
            if msg is None:
                break
            lat.append(c.age_ms(msg["ts"]))
        return lat

    @DBOS.workflow()
    async def tokens(n: int, interval: float) -> int:
        await c.paced_tokens(lambda chunk: DBOS.write_stream_async(KEY, chunk), n, interval)
        await DBOS.close_stream_async(KEY)
        return n

    @DBOS.workflow()
    async def waiter() -> float | None:
        msg = await DBOS.recv_async("go", timeout_seconds=900)
        return None if msg is None else c.age_ms(msg["ts"])

    @DBOS.workflow()
    async def chat(turns: int) -> int:
        for _ in range(turns):
            msg = await DBOS.recv_async("in", timeout_seconds=120)
            if msg is None:
                break
            await c.stream_reply(lambda token: DBOS.write_stream_async(KEY, token), msg["turn"])
        await DBOS.close_stream_async(KEY)
        return turns

    DBOS(config=config)  # type: ignore[arg-type]
    DBOS.launch()
    return {
        "DBOS": DBOS,
        "writer": writer,
        "receiver": receiver,
        "waiter": waiter,
        "tokens": tokens,
        "chat": chat,
    }


def _start(app: dict[str, Any], fn: str, *args: Any) -> Any:
    from dbos import SetWorkflowID

    with SetWorkflowID(f"{fn}-{uuid.uuid4().hex}"):
        return app["DBOS"].start_workflow(app[fn], *args)


def _reader(cfg: dict[str, Any]) -> c.Helper:
    return c.Helper(c.helper_argv(__file__, "reader", cfg["_config_path"]))


def w1(cfg: dict[str, Any], app: dict[str, Any]) -> dict[str, Any]:
    reps = []
    with _reader(cfg) as reader:
        for _ in c.reps(cfg):
            handle = _start(
                app, "writer", cfg["n_chunks"], time.time() + 0.5, cfg["write_budget_s"]
            )
            reader.send({"op": "live", "wfid": handle.get_workflow_id()})
            written = handle.get_result()
            reps.append(reader.result())
    cfg["_w1_wfid"], cfg["_w1_written"] = handle.get_workflow_id(), written
    result = c.summarize_live(reps)
    if written < cfg["n_chunks"]:
        result["note"] = (
            f"wrote {written:,} of {cfg['n_chunks']:,} chunks in its {cfg['write_budget_s']} s "
            "budget (one durable commit per write_stream); workload 2 reads those"
        )
    return result


def w2(cfg: dict[str, Any], app: dict[str, Any]) -> dict[str, Any]:
    wfid = cfg.get("_w1_wfid")
    n = cfg.get("_w1_written", cfg["n_chunks"])
    if wfid is None:
        handle = _start(app, "writer", cfg["n_chunks"], time.time(), cfg["write_budget_s"])
        n = handle.get_result()
        wfid = handle.get_workflow_id()
    samples = {}
    with _reader(cfg) as reader:
        for offset in (0, c.late_offset(n)):
            samples[offset] = reader.ask(
                {"op": "late", "wfid": wfid, "offset": offset, "n": n, "reps": cfg["late_reps"]}
            )["reads"]
    return c.summarize_late(samples)


def w3(cfg: dict[str, Any], app: dict[str, Any]) -> dict[str, Any]:
    n = cfg["n_inputs"]
    handle = _start(app, "receiver", n)
    time.sleep(0.5)
    with c.Helper(c.helper_argv(__file__, "sender", cfg["_config_path"])) as sender:
        sender.ask(
            {
                "topic": "in",
                "targets": [handle.get_workflow_id()] * n,
                "gap_s": cfg["input_gap_s"],
                "budget_s": cfg["send_budget_s"],
            }
        )
    return {"lat_ms": c.summary(handle.get_result())}


def w4(cfg: dict[str, Any], app: dict[str, Any]) -> dict[str, Any]:
    from dbos import SetWorkflowID

    DBOS = app["DBOS"]
    roots = [os.getpid()] + ([cfg["pg_pid"]] if cfg["variant"] == "postgres" else [])
    n_wait, n_resume = cfg["n_waiters"], cfg["n_resume"]

    async def scenario() -> dict[str, Any]:
        before = c.footprint(roots)
        t0 = time.monotonic()
        handles = []
        for _ in range(n_wait):
            with SetWorkflowID(f"waiter-{uuid.uuid4().hex}"):
                handles.append(await DBOS.start_workflow_async(app["waiter"]))
        start_s = time.monotonic() - t0
        await asyncio.sleep(2.0)
        during = c.footprint(roots)
        ids = [h.get_workflow_id() for h in handles[:n_resume]]

        def send_all() -> int:
            with c.Helper(c.helper_argv(__file__, "sender", cfg["_config_path"])) as sender:
                return int(
                    sender.ask(
                        {
                            "topic": "go",
                            "targets": ids,
                            "gap_s": cfg["resume_gap_s"],
                            "budget_s": cfg["send_budget_s"],
                        }
                    )["sent"]
                )

        sent = await asyncio.to_thread(send_all)
        lat = []
        for h in handles[:sent]:
            v = await asyncio.wait_for(h.get_result(), timeout=60)
            if v is not None:
                lat.append(v)
        return {
            "lat_ms": c.summary(lat),
            "waiting": n_wait,
            "start_s": round(start_s, 2),
            "pss_kib_per_wait": (during["pss_kib"] - before["pss_kib"]) / n_wait,
            "processes_held": during["processes"] - before["processes"],
            "footprint_before": before,
            "footprint_during": during,
            "note": "waiting workflows are coroutines in the app process (no release of it)",
        }

    # not asyncio.run: it would cancel the waiters left over, which DBOS logs one by one
    loop = asyncio.new_event_loop()
    return loop.run_until_complete(scenario())


def w6(cfg: dict[str, Any], app: dict[str, Any]) -> dict[str, Any]:
    from dbos import SetWorkflowID

    DBOS = app["DBOS"]
    n, d = cfg["density_runs"], cfg["density_duration_s"]
    k = int(d * 10)

    async def scenario() -> dict[str, Any]:
        with _reader(cfg) as reader:
            started = time.time_ns()
            handles = []
            for _ in range(n):
                with SetWorkflowID(f"tokens-{uuid.uuid4().hex}"):
                    handles.append(await DBOS.start_workflow_async(app["tokens"], k, 0.1))
            ids = [h.get_workflow_id() for h in handles]
            answer = await asyncio.to_thread(reader.ask, {"op": "density", "ids": ids}, 600)
        for h in handles:
            await asyncio.wait_for(h.get_result(), timeout=120)
        return c.summarize_density(answer["runs"], started, n, k, d)

    loop = asyncio.new_event_loop()
    return loop.run_until_complete(scenario())


def w7(cfg: dict[str, Any], app: dict[str, Any]) -> dict[str, Any]:
    from dbos import SetWorkflowID

    turns = cfg["chat_turns"]

    async def scenario() -> dict[str, Any]:
        with SetWorkflowID(f"chat-{uuid.uuid4().hex}"):
            handle = await app["DBOS"].start_workflow_async(app["chat"], turns)
        with _reader(cfg) as user:
            job = {"op": "chat", "wfid": handle.get_workflow_id(), "turns": turns}
            result = await asyncio.to_thread(user.ask, {**job, "gap_s": cfg["turn_gap_s"]}, 300)
        await asyncio.wait_for(handle.get_result(), timeout=60)
        return result

    loop = asyncio.new_event_loop()
    return loop.run_until_complete(scenario())


def main(argv: list[str]) -> None:
    cfg = c.load_config(argv)
    role = argv[1]
    if role == "reader":
        c.helper_main(reader_job, lambda: _client(cfg))
    elif role == "sender":
        c.helper_main(sender_job, lambda: _client(cfg))
    elif role == "bench":
        app = launch(cfg)
        results = c.run_workloads(
            cfg,
            {
                1: lambda cfg: w1(cfg, app),
                2: lambda cfg: w2(cfg, app),
                3: lambda cfg: w3(cfg, app),
                4: lambda cfg: w4(cfg, app),
                5: lambda cfg: c.na("DBOS offers no SSE/HTTP stream endpoint"),
                6: lambda cfg: w6(cfg, app),
                7: lambda cfg: w7(cfg, app),
            },
            argv,
        )
        c.write_result(argv, results)
        sys.stdout.flush()
        os._exit(0)  # waiting workflows left in the app must not hold the exit
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
