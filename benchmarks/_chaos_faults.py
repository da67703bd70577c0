"""The chaos soak's faults (benchmarks/_chaos_soak.py), one at a time, and
how long each part takes to serve again.

Kinds: `run_actor` (SIGKILL the RunActor executing a random live run of the
phase), `inbox` (SIGKILL the Inbox of the soak's input stream), `controller`
(SIGKILL the Controller), `serve` (SIGKILL the HTTP replica: found among this
process's descendants, so never another Ray session's), `postgres` (the
caller's `restart_store`: stop, stay down 0.5–3 s, start).

Recovered means: `run_actor` — the run executes on another actor (or has
suspended or finished); `inbox` — the killed Inbox answers from its new
process and a send is answered;
`controller` and `postgres` — a new run is triggered, executed and finished;
`serve` — the HTTP API answers a run lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import psutil
import ray
from _chaos_workload import (
    FINISHED,
    IN,
    KINDS,
    RECOVER_LIMIT_S,
    PhaseResult,
    RunState,
    chaos_noop,
    inp,
)

import rayflow
from rayflow._runtime import connection
from rayflow._runtime.inbox import actor_name

Probe = Callable[[httpx.AsyncClient], Awaitable[None]]


class Faults:
    def __init__(
        self,
        rng: random.Random,
        secret_key: str,
        restart_store: Callable[[float], Awaitable[None]] | None,
        log: Callable[[str], None],
    ) -> None:
        self.rng, self.secret_key = rng, secret_key
        self.restart_store, self.log = restart_store, log
        #: a finished run: the Inbox and HTTP probes ask about it
        self._finished_run: str | None = None

    async def prepare(self) -> None:
        if self._finished_run is None:
            handle = await chaos_noop.trigger({})
            await rayflow.runs.wait(handle.id)
            self._finished_run = handle.id

    async def inject(
        self,
        kinds: list[str],
        count: int,
        gap_s: tuple[float, float],
        states: list[RunState],
        client: httpx.AsyncClient,
        result: PhaseResult,
    ) -> None:
        for n in range(count):
            await asyncio.sleep(self.rng.uniform(*gap_s))
            if all(st.finished for st in states):
                break  # faults hit runs at work, not an idle deployment
            kind = kinds[n % len(kinds)] if len(kinds) > 1 else kinds[0]
            try:
                fault = await self._fault(kind, states)
            except ray.exceptions.RayActorError:
                fault = None  # its target is still restarting from an earlier fault
            if fault is None:
                continue  # nothing to hit (e.g. no run live right now)
            t0, probe = fault
            result.faults[kind] += 1
            self.log(f"fault {kind}")
            try:
                await asyncio.wait_for(probe(client), RECOVER_LIMIT_S)
                result.recover_s.append(time.monotonic() - t0)
            except asyncio.TimeoutError:
                result.hangs += 1
                result.problems.append(f"{kind}: not recovered within {RECOVER_LIMIT_S} s")

    async def _fault(self, kind: str, states: list[RunState]) -> tuple[float, Probe] | None:
        conn = connection.current()
        if kind == "run_actor":
            return await self._kill_run_actor(states)
        if kind == "inbox":
            name = actor_name(IN, states[0].id) if states else "rayflow-inbox-0"
            try:  # the Inbox starts with the stream's first send: none yet, no fault
                inbox = ray.get_actor(name, namespace=conn.settings.namespace)
                pid = await inbox.pid.remote()
            except (ValueError, ray.exceptions.RayActorError):
                return None  # not started yet, or restarting: nothing to hit now
            t0 = kill(pid)

            async def probe(client: httpx.AsyncClient, name: str = name, pid: int = pid) -> None:
                await self._probe_inbox(client, name, pid)

            return t0, probe
        if kind == "controller":
            return kill(await conn.controller.pid.remote()), self._probe_run
        if kind == "serve":
            return kill(serve_replica_pid()), self._probe_http
        if kind == "postgres":
            assert self.restart_store is not None, "postgres faults need restart_store"
            t0 = time.monotonic()
            await self.restart_store(self.rng.uniform(0.5, 3.0))
            return t0, self._probe_run
        raise ValueError(f"unknown fault kind {kind!r}; one of {KINDS}")

    async def _kill_run_actor(self, states: list[RunState]) -> tuple[float, Probe] | None:
        controller = connection.current().controller
        mine = {st.id for st in states}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            live = [r for r in await controller.live_runs.remote() if r in mine]
            if live:
                victim = self.rng.choice(sorted(live))
                with contextlib.suppress(Exception):
                    _, actor = await controller.locate.remote(victim)
                    if actor is not None and victim in await actor.run_ids.remote():
                        pid = await actor.pid.remote()
                        t0 = kill(pid)

                        async def probe(
                            _: httpx.AsyncClient, victim: str = victim, pid: int = pid
                        ) -> None:
                            await self._run_moved_on(victim, pid)

                        return t0, probe
            await asyncio.sleep(0.1)
        return None

    # -- recovery probes (each returns once the faulted part serves again) -------
    async def _run_moved_on(self, run_id: str, dead_pid: int) -> None:
        """The killed run executes on another actor, or suspended, or finished."""
        controller = connection.current().controller
        while True:
            with contextlib.suppress(Exception):
                status, actor = await asyncio.wait_for(controller.locate.remote(run_id), 5)
                if status in FINISHED or status == "WAITING":
                    return
                if actor is not None and await actor.pid.remote() != dead_pid:
                    return
            await asyncio.sleep(0.05)

    async def _probe_inbox(self, _: httpx.AsyncClient, name: str, dead_pid: int) -> None:
        """The killed Inbox (`name`) answers from a new process, and a send
        is answered (to a finished run: refused, by its Inbox). The finished
        run's Inbox may be another shard: asking only it, the soak once took
        the killed one for recovered and its next fault met that one still
        restarting (`ActorUnavailableError`, which ended the phase)."""
        assert self._finished_run is not None
        namespace = connection.current().settings.namespace
        while True:
            with contextlib.suppress(Exception):
                inbox = ray.get_actor(name, namespace=namespace)
                if await asyncio.wait_for(inbox.pid.remote(), 5) != dead_pid:
                    break
            await asyncio.sleep(0.05)
        while True:
            try:
                await asyncio.wait_for(inp.send(self._finished_run, {"n": "probe"}), 5)
            except rayflow.errors.RunFinished:
                return
            except Exception:
                await asyncio.sleep(0.05)

    async def _probe_run(self, _: httpx.AsyncClient) -> None:
        """A new run is triggered, executed and finished (Controller, pool, Store)."""
        key = "probe-" + uuid.uuid4().hex
        while True:
            try:
                handle = await asyncio.wait_for(chaos_noop.trigger({}, idempotency_key=key), 10)
                await asyncio.wait_for(rayflow.runs.wait(handle.id), 30)
                return
            except Exception:
                await asyncio.sleep(0.1)

    async def _probe_http(self, client: httpx.AsyncClient) -> None:
        """The HTTP API answers a run lookup (a replica serves again)."""
        headers = {"Authorization": f"Bearer {self.secret_key}"}
        while True:
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(
                    f"/api/v3/runs/{self._finished_run}", headers=headers, timeout=5
                )
                if r.status_code == 200:
                    return
            await asyncio.sleep(0.05)


def kill(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def serve_replica_pid() -> int:
    """The rayflow HTTP replica among this process's descendants (Ray started
    here); never another session's."""
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ServeReplica:rayflow:RayflowHTTP" in " ".join(proc.cmdline()):
                return proc.pid
    raise LookupError("no rayflow Serve replica runs under this process")
