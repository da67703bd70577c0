"""Stream, then wait: does a chat's revival grow with its earlier turns?
(issue 24)

A chat loop as `examples/chat_agent.py` writes it: each turn `.wait()`s for
the user's message (suspended: no process), pipes a stand-in model's tokens
(TOKENS tokens, DELAY_S apart, so one answer streams for ~TOKENS x DELAY_S)
and awaits the pipe. Every revival replays the run from the top, so every
earlier turn's pipe is met again: with its completion journaled the replay
returns at once; without it (before issue 24) each earlier turn's model
was called again before the new turn's first token.

For `--chats` chats of `--turns` turns, side by side per turn (p50 over
the chats): send -> the model produced that turn's first token (the task's
clock, in the token: the revival and the replay of every earlier turn) and
send -> a Python reader of the stream got it; and how many times the model
was called in all (expected: chats x turns). The load average is printed beside every
figure: absolute figures on a shared box are noise, the turn-N / turn-1
ratio is the result.

    python benchmarks/chat_turns.py [--chats 3] [--turns 10] [--store URL]

Run it against older code with PYTHONPATH pointing at that checkout (Ray's
workers inherit the driver's environment).
"""

from __future__ import annotations

import os

# before anything imports Ray (docs/scaling.md): a local Ray on 127.0.0.1 only
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from pathlib import Path  # noqa: E402

import rayflow  # noqa: E402
from rayflow import streams, task  # noqa: E402

user = streams.input("bench-chat-user", str)
assistant = streams.define("bench-chat-assistant", str)

TOKENS = 40
DELAY_S = 0.005


async def model(calls: str, prompt: str) -> AsyncIterator[str]:
    """A stand-in for a model: counts its calls in a file, then streams."""
    with open(calls, "a") as f:
        f.write(prompt + "\n")
    for i in range(TOKENS):
        await asyncio.sleep(DELAY_S)
        # the first token carries the task's clock: when the model produced it
        yield f"{prompt}:{i}@{time.time_ns()} " if i == 0 else f"{prompt}:{i} "


@task(id="bench-chat-turns")
async def chat(payload: dict) -> int:
    turns = 0
    while True:
        message = await user.wait(timeout="1h")
        if message.output == "bye":
            return turns
        pipe = assistant.pipe(model(payload["calls"], message.output))
        await pipe.wait_until_complete()
        await assistant.append("\n")
        turns += 1


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def wait_status(run_id: str, status: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while rayflow.runs.retrieve(run_id).result().status != status:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not become {status} in {timeout_s} s")
        time.sleep(0.005)


def one_chat(turns: int, calls: str) -> list[tuple[float, float]]:
    """Per turn, in ms: send -> the model produced its first token (the
    task's clock: the revival and the replay of every earlier turn), and
    send -> a Python reader got it."""
    handle = chat.trigger({"calls": calls}).result()
    reader = iter(assistant.read(handle.id, timeout_s=60))
    firsts: list[tuple[float, float]] = []
    for turn in range(1, turns + 1):
        wait_status(handle.id, "WAITING")
        sent = time.time_ns()
        user.send(handle.id, f"t{turn}").result()
        first = next(reader)
        got = time.time_ns()
        assert first.startswith(f"t{turn}:0@"), first
        produced = int(first.split("@")[1])
        firsts.append(((produced - sent) / 1e6, (got - sent) / 1e6))
        while first != "\n":
            first = next(reader)
    wait_status(handle.id, "WAITING")
    user.send(handle.id, "bye").result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED" and run.output == turns, run
    return firsts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=3)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--store", default=None, help="a store URL (default: SQLite in a tmp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        calls = str(Path(tmp) / "calls")
        kwargs = {"store": args.store} if args.store else {}
        rayflow.init(data_dir=tmp, pool_size=2, **kwargs)
        one_chat(2, str(Path(tmp) / "warm-up"))
        print(
            f"{args.chats} chats x {args.turns} turns, {TOKENS} tokens {DELAY_S * 1000:.0f} ms"
            f" apart per answer; {load()}",
            flush=True,
        )
        produced: list[list[float]] = [[] for _ in range(args.turns)]
        read: list[list[float]] = [[] for _ in range(args.turns)]
        for _ in range(args.chats):
            for i, (p, r) in enumerate(one_chat(args.turns, calls)):
                produced[i].append(p)
                read[i].append(r)
            print(f"  chat done; {load()}", flush=True)
        made = len(Path(calls).read_text().splitlines())
        p50p = [statistics.median(t) for t in produced]
        p50r = [statistics.median(t) for t in read]
        print("turn   send -> first token, p50 ms: produced (task clock)   read (Python reader)")
        for i in range(args.turns):
            print(
                f"{i + 1:>4}   {p50p[i]:8.1f} {[round(x, 1) for x in produced[i]]}"
                f"   {p50r[i]:8.1f} {[round(x, 1) for x in read[i]]}"
            )
        print(
            f"turn {args.turns} / turn 1: produced x{p50p[-1] / p50p[0]:.2f},"
            f" read x{p50r[-1] / p50r[0]:.2f}; model calls {made}"
            f" (one per turn: {args.chats * args.turns}); {load()}"
        )
        rayflow.shutdown(stop_runs=True)


if __name__ == "__main__":
    main()
