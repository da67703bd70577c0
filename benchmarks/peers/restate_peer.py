"""Restate peer: restate-sdk workflows served by hypercorn, the server from npm.

- output streams: Restate has none (workloads 1, 2, 5 are n/a).
- input = a workflow's shared handler resolves a durable promise the running ``main``
  handler awaits (``ctx.promise(name).value()``); the sender calls the handler over the
  ingress HTTP API from another process.
- suspend/resume = the same, with the workflow's ``inactivity_timeout`` at 1 s so the
  waiting invocations are suspended by the server (journal kept, no SDK call held)
  before anything is sent.

- chat turns = a virtual object per conversation whose ``turn`` handler calls the fake
  model inside ``ctx.run`` (journaled: a retry does not call it again) and keeps the
  history in the object's state; the user calls it over the ingress and gets the whole
  reply as the answer. Without output streams there is no first token (n/a).

The latency a handler sees is taken inside ``ctx.run`` so it is journaled, not
recomputed on replay.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

import _common as c

try:  # only the peers' venv has restate-sdk; the helpers below do not need it
    import restate

    W3 = restate.Workflow("W3")
    W4 = restate.Workflow("W4", inactivity_timeout=timedelta(seconds=1))

    @W3.main(name="run")
    async def w3_run(ctx: restate.WorkflowContext, n: int) -> list[float]:
        lat: list[float] = []
        for i in range(n):
            ts = await ctx.promise(f"m{i}", type_hint=int).value()

            async def took(ts: int = ts) -> float:
                return c.age_ms(ts)

            lat.append(await ctx.run_typed("received", took))
        return lat

    @W3.handler()
    async def w3_msg(ctx: restate.WorkflowSharedContext, msg: dict[str, int]) -> None:
        await ctx.promise(f"m{msg['i']}", type_hint=int).resolve(msg["ts"])

    @W4.main(name="run")
    async def w4_run(ctx: restate.WorkflowContext) -> float:
        ts = await ctx.promise("go", type_hint=int).value()

        async def took() -> float:
            return c.age_ms(ts)

        return await ctx.run_typed("continued", took)

    @W4.handler()
    async def w4_go(ctx: restate.WorkflowSharedContext, msg: dict[str, int]) -> None:
        await ctx.promise("go", type_hint=int).resolve(msg["ts"])

    Chat = restate.VirtualObject("Chat")

    @Chat.handler()
    async def turn(ctx: restate.ObjectContext, msg: dict[str, int]) -> list[str]:
        async def model() -> list[str]:
            reply: list[str] = []

            async def keep(token: str) -> None:
                reply.append(token)

            await c.stream_reply(keep, msg["turn"])
            return reply

        reply = await ctx.run_typed("model", model)
        history = await ctx.get("history", type_hint=list) or []
        ctx.set("history", [*history, msg["turn"]])
        return reply

    app = restate.app(services=[W3, W4, Chat])
except ImportError:
    app = None


# --- helpers (other processes) ---


def sender_job(client: Any, job: dict[str, Any]) -> dict[str, Any]:
    if job.get("op") == "chat":
        done: list[float] = []
        for t in range(job["turns"]):
            time.sleep(job["gap_s"])
            sent = time.time_ns()
            client.post(job["url"], json={"turn": t}).raise_for_status()
            done.append((time.time_ns() - sent) / 1e6)
        return {"first_ms": {"na": True}, "done_ms": c.summary(done), "turns": len(done)}
    urls = job["urls"]
    for i in c.paced(len(urls), job["gap_s"], job.get("budget_s")):
        client.post(urls[i], json={"i": i, "ts": time.time_ns()}).raise_for_status()
    return {"sent": i + 1}


# --- host ---


def start_sdk(cfg: dict[str, Any]) -> subprocess.Popen[Any]:
    import httpx

    port = cfg["free_ports"][0]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "restate_peer:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        cwd=str(c.HERE),
    )
    deadline = time.monotonic() + 30
    admin = cfg["restate"]["admin"]
    while True:  # register the deployment once hypercorn answers
        try:
            r = httpx.post(
                f"{admin}/deployments",
                json={"uri": f"http://127.0.0.1:{port}", "force": True},
                timeout=10,
            )
            if r.status_code < 300:
                time.sleep(1.0)  # the ingress learns the new services asynchronously
                return proc
            err = r.text
        except httpx.HTTPError as e:
            err = str(e)
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.terminate()
            raise RuntimeError(f"registering the Restate deployment failed: {err[:300]}")
        time.sleep(0.3)


def _sender(cfg: dict[str, Any]) -> c.Helper:
    return c.Helper(c.helper_argv(__file__, "sender", cfg["_config_path"]))


def w3(cfg: dict[str, Any]) -> dict[str, Any]:
    import httpx

    ingress, n = cfg["restate"]["ingress"], cfg["n_inputs"]
    wfid = uuid.uuid4().hex
    httpx.post(f"{ingress}/W3/{wfid}/run/send", json=n, timeout=30).raise_for_status()
    time.sleep(0.5)
    with _sender(cfg) as sender:
        sender.ask(
            {
                "urls": [f"{ingress}/W3/{wfid}/w3_msg"] * n,
                "gap_s": cfg["input_gap_s"],
                "budget_s": cfg["send_budget_s"],
            }
        )
    lat = httpx.get(f"{ingress}/restate/workflow/W3/{wfid}/attach", timeout=120).json()
    return {"lat_ms": c.summary(lat)}


def _suspended(cfg: dict[str, Any]) -> dict[str, int]:
    import httpx

    r = httpx.post(
        f"{cfg['restate']['admin']}/query",
        json={
            "query": "SELECT status, count(*) AS n FROM sys_invocation "
            "WHERE target_service_name = 'W4' GROUP BY status"
        },
        headers={"Accept": "application/json"},
        timeout=30,
    )
    if r.status_code >= 300:
        return {"query_failed": r.status_code}
    return {row["status"]: row["n"] for row in r.json().get("rows", [])}


def w4(cfg: dict[str, Any], sdk_pid: int) -> dict[str, Any]:
    import concurrent.futures

    import httpx

    ingress = cfg["restate"]["ingress"]
    roots = [cfg["restate"]["pid"], sdk_pid]
    n_wait, n_resume = cfg["n_waiters"], cfg["n_resume"]
    before = c.footprint(roots)
    ids = [uuid.uuid4().hex for _ in range(n_wait)]
    t0 = time.monotonic()
    with (
        httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16)) as client,
        concurrent.futures.ThreadPoolExecutor(8) as pool,
    ):
        for r in pool.map(lambda i: client.post(f"{ingress}/W4/{i}/run/send"), ids):
            r.raise_for_status()
    start_s = time.monotonic() - t0
    time.sleep(4.0)  # past the 1 s inactivity timeout: the server suspends them
    during = c.footprint(roots)
    statuses = _suspended(cfg)
    with _sender(cfg) as sender:
        sent = sender.ask(
            {
                "urls": [f"{ingress}/W4/{i}/w4_go" for i in ids[:n_resume]],
                "gap_s": cfg["resume_gap_s"],
                "budget_s": cfg["send_budget_s"],
            }
        )["sent"]
    lat = [
        httpx.get(f"{ingress}/restate/workflow/W4/{i}/attach", timeout=120).json()
        for i in ids[:sent]
    ]
    return {
        "lat_ms": c.summary(lat),
        "waiting": n_wait,
        "start_s": round(start_s, 2),
        "pss_kib_per_wait": (during["pss_kib"] - before["pss_kib"]) / n_wait,
        "processes_held": during["processes"] - before["processes"],
        "footprint_before": before,
        "footprint_during": during,
        "statuses_while_waiting": statuses,
    }


def w7(cfg: dict[str, Any]) -> dict[str, Any]:
    url = f"{cfg['restate']['ingress']}/Chat/{uuid.uuid4().hex}/turn"
    with _sender(cfg) as user:
        job = {"op": "chat", "url": url, "turns": cfg["chat_turns"], "gap_s": cfg["turn_gap_s"]}
        result = user.ask(job)
    result["note"] = "no output streams: the reply arrives whole, as the turn's answer"
    return result


def main(argv: list[str]) -> None:
    cfg = c.load_config(argv)
    role = argv[1]
    if role == "sender":
        import httpx

        c.helper_main(sender_job, lambda: httpx.Client(timeout=30))
    elif role == "bench":
        sdk = start_sdk(cfg)
        try:
            no_streams = "Restate has no output streams"
            c.write_result(
                argv,
                c.run_workloads(
                    cfg,
                    {
                        1: lambda cfg: c.na(no_streams),
                        2: lambda cfg: c.na(no_streams),
                        3: w3,
                        4: lambda cfg: w4(cfg, sdk.pid),
                        5: lambda cfg: c.na(no_streams),
                        6: lambda cfg: c.na(no_streams),
                        7: w7,
                    },
                    argv,
                ),
            )
        finally:
            sdk.terminate()
            sdk.wait(timeout=10)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
