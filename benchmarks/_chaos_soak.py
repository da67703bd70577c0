"""The chaos soak (issue 11): one phase of runs, readers, senders and faults, and
its verdict; shared by benchmarks/chaos.py and tests/test_chaos.py (short version).

A *phase* triggers N `chaos-run` runs. Each run has R rounds: it appends C
chunks `{"r", "i"}` to its output stream, then takes one message from its
input stream — `.wait()` (the run suspends and is revived) in even rounds,
`.once()` (the process waits) in odd ones — and appends `{"r", "ack": n}`
with the message's `n`. For every run, throughout the phase:

- a Python reader (`out.read(run, start_index=<chunks seen>)`) and an SSE
  reader (httpx, `/realtime/v1/streams/{run}/chaos-out`, the run's public
  token, `Last-Event-ID` = the last index seen) read and reconnect after any
  error; a reader stops only at the end of a closed stream of a finished run;
- a sender sends round r's message once a reader has seen the round's last
  chunk: through the Python API for even runs, `POST …/input/chaos-in` for
  odd ones, retrying on any failure with the same idempotency key.

Meanwhile a seeded schedule injects `faults` faults of the phase's kinds, one
at a time: SIGKILL of the RunActor executing a random live run (`run_actor`),
of the Inbox (`inbox`), of the Controller (`controller`), of the Serve
replica (`serve`), or a stop/start of PostgreSQL (`postgres`, given a
`restart_store`). After each fault a probe measures the time to recover
(benchmarks/_chaos_faults.py), then the next fault waits a random gap.

At the end the readers' views and the Store are compared with what the runs
must have produced: chunks lost / duplicated / out of order per view,
acknowledged messages lost or duplicated in the Store's input log, and runs
completed with exactly the messages sent, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from _chaos_faults import Faults
from _chaos_workload import (
    FINISHED,
    IN,
    OUT,
    PhaseResult,
    RunState,
    chaos_run,
    chunk_key,
    inp,
    out,
)
from httpx_sse import EventSource

from rayflow._runtime import connection

#: how long the end of a phase waits for its cancelled readers and senders
CANCEL_WAIT_S = 30.0


def backoff_s(failures: int) -> float:
    """How long a reader or sender waits before trying again: 0.1 s, doubling
    per attempt that brought nothing, at most 2 s, jittered — as a real client
    does, so an outage is not met by a reconnect storm that slows recovery."""
    return min(2.0, 0.1 * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0)


class Soak:
    """Runs phases against a rayflow deployment this process is connected to
    (`rayflow.init`) whose HTTP API answers at `http_url`."""

    def __init__(
        self,
        http_url: str,
        secret_key: str,
        *,
        seed: int = 11,
        restart_store: Callable[[float], Awaitable[None]] | None = None,
        log: Callable[[str], None] = lambda line: None,
        think_s: tuple[float, float] = (0.2, 1.0),
    ) -> None:
        self.think_s = think_s
        self.http_url = http_url
        self.log = log
        self.faults = Faults(random.Random(seed), secret_key, restart_store, log)

    # -- the phase -------------------------------------------------------------
    async def phase(
        self,
        name: str,
        kinds: list[str],
        *,
        runs: int,
        rounds: int,
        chunks: int,
        gap_s: float,
        faults: int,
        fault_gap_s: tuple[float, float],
        timeout_s: float,
    ) -> PhaseResult:
        result = PhaseResult(name, runs)
        started = time.monotonic()
        await self.faults.prepare()
        payload = {"rounds": rounds, "chunks": chunks, "gap_s": gap_s}
        handles = await chaos_run.batch_trigger([payload] * runs)
        states = [
            RunState(n, h.id, h.public_access_token, rounds, chunks, round_seen=[])
            for n, h in enumerate(handles)
        ]
        for st in states:
            st.round_seen = [asyncio.Event() for _ in range(rounds)]
        limits = httpx.Limits(max_connections=4 * runs + 10)
        async with httpx.AsyncClient(base_url=self.http_url, limits=limits) as client:
            work = [asyncio.create_task(self._py_reader(st, result)) for st in states]
            work += [asyncio.create_task(self._sse_reader(st, client, result)) for st in states]
            senders = [
                asyncio.create_task(self._sender(st, client, result, http=st.index % 2 == 1))
                for st in states
            ]
            chaos = asyncio.create_task(
                self.faults.inject(kinds, faults, fault_gap_s, states, client, result)
            )
            everything = [*work, *senders, chaos]
            try:
                await asyncio.wait_for(asyncio.gather(*everything), timeout_s)
            except asyncio.TimeoutError:
                result.problems.append(f"phase {name} did not finish within {timeout_s} s")
            except Exception as e:  # the harness's own failure: reported, never a hang
                result.problems.append(f"phase {name} stopped: {e!r}")
            finally:
                for t in everything:
                    t.cancel()
                # a reader of rayflow's can miss its cancellation on Python 3.11
                # (asyncio.wait_for returns a result that met the cancel) and,
                # following a stream without a timeout, would hang the soak here
                _, stuck = await asyncio.wait(everything, timeout=CANCEL_WAIT_S)
                for t in stuck:
                    result.problems.append(f"{t.get_coro()!r} ignored its cancellation")
        await self._verify(states, result)
        result.seconds = time.monotonic() - started
        return result

    # -- readers and senders ---------------------------------------------------
    async def _finished(self, run_id: str) -> bool:
        store = connection.current().store
        while True:
            try:
                run = await asyncio.to_thread(store.get_run, run_id)
                return run is not None and run.status in FINISHED
            except Exception:  # the Store restarting: ask again
                await asyncio.sleep(0.2)

    async def _py_reader(self, st: RunState, result: PhaseResult) -> None:
        failures = seen = 0
        while True:
            try:
                async for chunk in out.read(st.id, start_index=len(st.py), timeout_s=None):
                    key = chunk_key(chunk)
                    st.py.append(key)
                    st.saw(key)
                if await self._finished(st.id):
                    st.finished = True
                    st.ended.set()
                    return
                result.early_ends += 1
                result.problems.append(f"python reader of {st.id} ended before the run did")
            except Exception as e:
                result.reconnects["python"] += 1
                self.log(f"python reader {st.id}: {e!r}; reconnecting")
            failures = failures + 1 if len(st.py) == seen else 0
            seen = len(st.py)
            await asyncio.sleep(backoff_s(failures))

    async def _sse_reader(
        self, st: RunState, client: httpx.AsyncClient, result: PhaseResult
    ) -> None:
        failures = seen = 0
        while True:
            headers = {"Authorization": f"Bearer {st.token}", "Timeout-Seconds": "600"}
            if st.sse_last is not None:
                headers["Last-Event-ID"] = str(st.sse_last)
            done = False
            try:
                timeout = httpx.Timeout(10, read=30)  # a ping comes every 10 s
                path = f"/realtime/v1/streams/{st.id}/{OUT}"
                async with client.stream("GET", path, headers=headers, timeout=timeout) as resp:
                    if resp.status_code != 200:
                        raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())!r}")
                    events = EventSource(resp).aiter_sse()
                    async with contextlib.aclosing(events):
                        async for event in events:
                            if event.data == "[DONE]":
                                done = True
                                break
                            if event.event == "error":
                                raise RuntimeError(f"event: error {event.data}")
                            if event.event == "batch":
                                for record in json.loads(event.data)["records"]:
                                    key = chunk_key(json.loads(record["body"])["data"])
                                    st.sse.append(key)
                                    st.sse_last = int(record["seq_num"])
                                    st.saw(key)
                if done and await self._finished(st.id):
                    return
                if done:
                    result.early_ends += 1
                    result.problems.append(f"SSE reader of {st.id} got [DONE] before the run ended")
                else:
                    result.reconnects["sse"] += 1
            except Exception as e:
                result.reconnects["sse"] += 1
                self.log(f"SSE reader {st.id}: {e!r}; reconnecting")
            failures = failures + 1 if len(st.sse) == seen else 0
            seen = len(st.sse)
            await asyncio.sleep(backoff_s(failures))

    async def _sender(
        self, st: RunState, client: httpx.AsyncClient, result: PhaseResult, *, http: bool
    ) -> None:
        think = random.Random(f"{st.index}")
        for r in range(st.rounds):
            seen = asyncio.ensure_future(st.round_seen[r].wait())
            ended = asyncio.ensure_future(st.ended.wait())
            try:
                await asyncio.wait({seen, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                seen.cancel()
                ended.cancel()
            if not st.round_seen[r].is_set():
                return  # the run ended without this round: the verdict says how
            # a person or a backend takes a while: the run waits (suspended in .wait())
            await asyncio.sleep(think.uniform(*self.think_s))
            n = st.message(r)
            key = f"chaos-{st.id}-{n}"  # one logical message: retries reuse it
            tries = 0
            while True:
                try:
                    if http:
                        resp = await client.post(
                            f"/realtime/v1/streams/{st.id}/input/{IN}",
                            json={"data": {"n": n}},
                            headers={"Authorization": f"Bearer {st.token}", "Idempotency-Key": key},
                            timeout=30,
                        )
                        if resp.status_code != 200:
                            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text}")
                    else:
                        await asyncio.wait_for(inp.send(st.id, {"n": n}, idempotency_key=key), 30)
                    break
                except Exception as e:
                    if st.ended.is_set():
                        return  # refused for good: the run ended (the verdict says how)
                    result.send_retries += 1
                    self.log(f"send {n} to {st.id}: {e!r}; retrying")
                    tries += 1
                    await asyncio.sleep(backoff_s(tries))
            st.acked.append(n)

    # -- the verdict -------------------------------------------------------------
    async def _verify(self, states: list[RunState], result: PhaseResult) -> None:
        store = connection.current().store
        for st in states:
            expected = st.expected()
            result.chunks_expected += len(expected)
            stored = [
                chunk_key(json.loads(c.data))
                for c in await asyncio.to_thread(store.read_chunks, st.id, OUT, 0, 10**6)
            ]
            for view, seen in (("store", stored), ("python", st.py), ("sse", st.sse)):
                result.lost[view] += len(set(expected) - set(seen))
                result.duplicated[view] += len(seen) - len(set(seen))
                if seen != expected and set(seen) == set(expected) and len(seen) == len(expected):
                    result.misordered[view] += 1
            log_ = await asyncio.to_thread(store.inbox_read, st.id, IN, 0, 10**6)
            sent = [json.loads(m.data)["n"] for m in log_]
            result.messages_acked += len(st.acked)
            result.messages_lost += len(set(st.acked) - set(sent))
            result.messages_duplicated += len(sent) - len(set(sent))
            run = await asyncio.to_thread(store.get_run, st.id)
            if run is not None and run.status == "COMPLETED":
                result.completed += 1
                if json.loads(run.output or "null") != {
                    "got": [st.message(r) for r in range(st.rounds)]
                }:
                    result.wrong_output += 1
                    result.problems.append(f"{st.id} output {run.output}")
            else:
                result.problems.append(await self._diagnose(st, run, len(sent)))

    async def _diagnose(self, st: RunState, run: Any, stored_messages: int) -> str:
        """Where an unfinished run stands: for a report, and to find the bug."""
        if run is None:
            return f"{st.id} is missing"
        store = connection.current().store
        journal = await asyncio.to_thread(store.journal_load, st.id, run.attempt)
        waitpoint = await asyncio.to_thread(store.get_waitpoint, st.id)
        where = "no actor"
        with contextlib.suppress(Exception):
            _, actor = await asyncio.wait_for(
                connection.current().controller.locate.remote(st.id), 5
            )
            if actor is not None:
                current = await asyncio.wait_for(actor.run_ids.remote(), 5)
                where = f"actor runs {current}"
        tail = [(e.kind, e.name, e.value[:40]) for e in journal[-3:]]
        return (
            f"{st.id} ended {run.status} ({run.error}); {where}; acked {st.acked},"
            f" {stored_messages} stored; waitpoint {waitpoint}; journal {len(journal)}: {tail};"
            f" python reader saw {len(st.py)} chunks"
        )
