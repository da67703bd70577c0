"""The chaos soak's workload (benchmarks/_chaos_soak.py runs it): the tasks,
what a run must produce, and the tallies of a phase.

A `chaos-run` run has R rounds: it appends C chunks `{"r", "i"}` to its output
stream, then takes one message from its input stream — `.wait()` (the run
suspends and is revived) in even rounds, `.once()` (the process waits) in odd
ones — and appends `{"r", "ack": n}` with the message's `n`; it returns every
`n` it got, in order.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from dataclasses import dataclass, field

from rayflow import streams, task

OUT = "chaos-out"
IN = "chaos-in"
out = streams.define(OUT, dict)
inp = streams.input(IN, dict)
KINDS = ("run_actor", "inbox", "controller", "serve", "postgres")
FINISHED = {"COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT"}
#: a fault whose probe has not succeeded after this long counts as a hang
RECOVER_LIMIT_S = 120.0


@task(id="chaos-run")
async def chaos_run(payload: dict) -> dict:  # type: ignore[type-arg]
    got = []
    for r in range(int(payload["rounds"])):
        for i in range(int(payload["chunks"])):
            await out.append({"r": r, "i": i})
            await asyncio.sleep(float(payload["gap_s"]))
        if r % 2 == 0:
            message = (await inp.wait(timeout="10m")).unwrap()
        else:
            message = (await inp.once(timeout_s=600)).unwrap()
        got.append(message["n"])
        await out.append({"r": r, "ack": message["n"]})
    return {"got": got}


@task(id="chaos-noop")
async def chaos_noop(payload: dict) -> str:  # type: ignore[type-arg]
    return "ok"


def chunk_key(chunk: dict) -> str:  # type: ignore[type-arg]
    if "ack" in chunk:
        return f"{chunk['r']}:ack:{chunk['ack']}"
    return f"{chunk['r']}:{chunk['i']}"


@dataclass
class RunState:
    index: int
    id: str
    token: str
    rounds: int
    chunks: int
    py: list[str] = field(default_factory=list)
    sse: list[str] = field(default_factory=list)
    sse_last: int | None = None
    acked: list[str] = field(default_factory=list)
    round_seen: list[asyncio.Event] = field(default_factory=list)
    #: its Python reader saw the stream end with the run finished
    finished: bool = False
    #: set with `finished`: a sender waiting for a round the run never
    #: reaches (it ended CRASHED or FAILED) stops instead of hanging the phase
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def message(self, r: int) -> str:
        return f"{self.index}.{r}"

    def expected(self) -> list[str]:
        keys = []
        for r in range(self.rounds):
            keys += [f"{r}:{i}" for i in range(self.chunks)] + [f"{r}:ack:{self.message(r)}"]
        return keys

    def saw(self, key: str) -> None:
        r, _, rest = key.partition(":")
        if rest == str(self.chunks - 1):
            self.round_seen[int(r)].set()


@dataclass
class PhaseResult:
    name: str
    runs: int
    completed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    recover_s: list[float] = field(default_factory=list)
    hangs: int = 0
    chunks_expected: int = 0
    #: per view ("store", "python", "sse"): chunks lost / duplicated / out of order
    lost: Counter[str] = field(default_factory=Counter)
    duplicated: Counter[str] = field(default_factory=Counter)
    misordered: Counter[str] = field(default_factory=Counter)
    messages_acked: int = 0
    messages_lost: int = 0
    messages_duplicated: int = 0
    #: runs whose output is not exactly the messages sent, in order
    wrong_output: int = 0
    reconnects: Counter[str] = field(default_factory=Counter)
    send_retries: int = 0
    #: a reader that saw its stream end while the run had not finished
    early_ends: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return (
            self.completed == self.runs
            and self.hangs == 0
            and not any(self.lost.values())
            and not any(self.duplicated.values())
            and not any(self.misordered.values())
            and self.messages_lost == 0
            and self.messages_duplicated == 0
            and self.wrong_output == 0
        )

    def recover_text(self) -> str:
        if not self.recover_s:
            return "-"
        return f"{statistics.median(self.recover_s):.2f} / {max(self.recover_s):.2f}"
