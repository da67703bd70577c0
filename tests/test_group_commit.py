"""Group commit across the runs of a process (issue 21, item 4).

A RunActor hosting many runs commits what all of them wrote in one Store
transaction per round, not one per run: 1,000 runs streaming 10 tokens a
second are 10,000 writes a second from a few processes. These tests give
many runs' `StreamBuffers` on one event loop a real Store (SQLite and
PostgreSQL) that counts its transactions, and check that they are few,
that every chunk is stored once and in order, that acknowledged = durable
= visible still holds, that a stream past its limit fails alone and that a
run's drain waits for its own writes only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import ray
from conftest import eventually

import rayflow
from rayflow import streams, task
from rayflow._config import Settings
from rayflow._runtime.connection import current
from rayflow._runtime.stream_buffers import StreamBuffers
from rayflow.errors import StreamTooLarge
from rayflow.store import Store
from rayflow.store._sql_base import _Cursor
from rayflow.store.base import AppendResult, ChunkWrite, RunRecord

tokens_out = streams.define("gc-tokens", str)
go = streams.input("gc-go", dict)


@task(id="gc-lockstep")
async def lockstep(payload: dict) -> int:  # type: ignore[type-arg]
    """Waits for the go, then appends its tokens one after the other."""
    await go.once(timeout_s=300)
    for i in range(payload["n"]):
        await tokens_out.append(f"t{i}")
    return int(payload["n"])


class CountingStore:
    """A real Store that counts its `append_chunks_own` transactions (a
    RunActor's group commit)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.transactions = 0

    def append_chunks_own(self, *args: Any, **kwargs: Any) -> Any:
        self.transactions += 1
        return self._inner.append_chunks_own(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def new_run(store: Store) -> str:
    run_id = f"run_{uuid.uuid4().hex[:20]}"
    store.create_run(RunRecord(id=run_id, task_id="group-commit", status="EXECUTING", attempt=1))
    return run_id


def write(value: Any, seq: int, writer: str = "w") -> ChunkWrite:
    return ChunkWrite(data=json.dumps(value), writer_id=writer, writer_seq=seq)


async def test_many_runs_on_one_loop_commit_in_few_transactions(store: Store) -> None:
    runs, tokens = 200, 10
    counting = CountingStore(store)
    settings = Settings()
    run_ids = [await asyncio.to_thread(new_run, store) for _ in range(runs)]
    buffers = [StreamBuffers(r, counting, settings) for r in run_ids]  # type: ignore[arg-type]

    async def run(bufs: StreamBuffers) -> None:
        out = bufs.get("out")
        for i in range(tokens):
            seq = await out.submit(write(f"t{i}", i))
            assert seq == i
            # acknowledged = visible: a reader at `seq` finds it in the tail now
            reply = await out.peek(i, 10)
            assert reply is not None and reply.rows[0][:2] == (i, json.dumps(f"t{i}"))

    await asyncio.gather(*(run(b) for b in buffers))
    # one transaction per run and token would be runs × tokens = 2,000
    assert counting.transactions <= 4 * tokens, counting.transactions
    for run_id in run_ids:
        chunks = await asyncio.to_thread(store.read_chunks, run_id, "out", 0, 100)
        assert [(c.seq, c.data) for c in chunks] == [
            (i, json.dumps(f"t{i}")) for i in range(tokens)
        ]


async def test_runs_writing_many_streams_and_batches_keep_each_streams_order(store: Store) -> None:
    counting = CountingStore(store)
    run_ids = [await asyncio.to_thread(new_run, store) for _ in range(30)]
    buffers = [StreamBuffers(r, counting, Settings()) for r in run_ids]  # type: ignore[arg-type]

    async def run(bufs: StreamBuffers) -> None:
        futures = []
        for i in range(40):
            key = f"k{i % 3}"
            if i % 5 == 0:
                futures.append(
                    bufs.get(key).submit_batch([write(i, 2 * i, key), write(-i, 2 * i + 1, key)])
                )
            else:
                futures.append(bufs.get(key).submit(write(i, 2 * i, key)))
            if i % 7 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*futures)
        await bufs.drain()

    await asyncio.gather(*(run(b) for b in buffers))
    assert counting.transactions <= 20, counting.transactions
    for run_id in run_ids:
        for k in range(3):
            want: list[int] = []
            for i in range(k, 40, 3):
                want += [i, -i] if i % 5 == 0 else [i]
            chunks = await asyncio.to_thread(store.read_chunks, run_id, f"k{k}", 0, 1000)
            assert [json.loads(c.data) for c in chunks] == want
            assert [c.seq for c in chunks] == list(range(len(want)))


async def test_a_stream_past_its_limit_fails_alone_in_a_shared_round(store: Store) -> None:
    settings = Settings(max_stream_bytes=200)
    counting = CountingStore(store)
    run_ids = [await asyncio.to_thread(new_run, store) for _ in range(20)]
    buffers = [StreamBuffers(r, counting, settings) for r in run_ids]  # type: ignore[arg-type]
    # every stream knows its length: one round takes a write of each
    await asyncio.gather(*(b.get("out").ready() for b in buffers))
    big = "x" * 300
    results = await asyncio.gather(
        *(
            b.get("out").submit(write(big if n == 7 else f"small{n}", 0))
            for n, b in enumerate(buffers)
        ),
        return_exceptions=True,
    )
    assert isinstance(results[7], StreamTooLarge) and results[7].run_id == run_ids[7]
    assert [r for n, r in enumerate(results) if n != 7] == [0] * 19
    # the round that failed, the others together again, the oversized write
    # alone: not one per run
    assert counting.transactions == 3, counting.transactions
    # the stream that refused a write still takes the next one
    assert await buffers[7].get("out").submit(write("fits", 1)) == 0
    for n, run_id in enumerate(run_ids):
        chunks = await asyncio.to_thread(store.read_chunks, run_id, "out", 0, 10)
        assert [json.loads(c.data) for c in chunks] == ["fits" if n == 7 else f"small{n}"]


async def test_a_runs_drain_waits_for_its_own_writes_not_for_other_runs(store: Store) -> None:
    quiet_id, busy_id = [await asyncio.to_thread(new_run, store) for _ in range(2)]
    quiet = StreamBuffers(quiet_id, store, Settings())
    # a tail that never seals: sealing puts a segment into Ray's object store
    busy = StreamBuffers(busy_id, store, Settings(tail_chunks=10_000_000))
    stop = asyncio.Event()

    async def flood() -> int:
        n = 0
        while not stop.is_set():
            futures = [busy.get("out").submit(write(n + i, n + i)) for i in range(50)]
            n += 50
            await asyncio.gather(*futures)
        return n

    flooding = asyncio.get_running_loop().create_task(flood())
    await asyncio.sleep(0.2)  # the committer is busy with the flood
    future = quiet.get("out").submit(write("mine", 0))
    await asyncio.wait_for(quiet.drain(), timeout=30)
    assert future.done() and future.result() == 0
    assert not flooding.done(), "the flood ended before the drain was tested"
    stop.set()
    written = await flooding
    await busy.drain()
    chunks = await asyncio.to_thread(store.read_chunks, busy_id, "out", 0, written + 1)
    assert [c.seq for c in chunks] == list(range(written))


async def test_a_failing_store_fails_every_write_of_the_round_and_the_next_commits(
    store: Store,
) -> None:
    runs = 3

    class FailOnce(CountingStore):
        def append_chunks_own(self, *args: Any, **kwargs: Any) -> Any:
            self.transactions += 1
            if self.transactions == 1:
                raise ConnectionError("the database went away (played)")
            return self._inner.append_chunks_own(*args, **kwargs)

    failing = FailOnce(store)
    run_ids = [await asyncio.to_thread(new_run, store) for _ in range(runs)]
    buffers = [StreamBuffers(r, failing, Settings()) for r in run_ids]  # type: ignore[arg-type]
    await asyncio.gather(*(b.get("out").ready() for b in buffers))
    first = await asyncio.gather(
        *(b.get("out").submit(write("a", 0)) for b in buffers), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in first), first
    # a retry with the same writer numbers is stored once
    assert (
        await asyncio.gather(*(b.get("out").submit(write("a", 0)) for b in buffers)) == [0] * runs
    )
    for b in buffers:
        await asyncio.wait_for(b.drain(), timeout=30)


def test_one_round_over_many_existing_streams_numbers_dedups_and_limits(store: Store) -> None:
    """The round's statements cover all its streams at once (`append_chunks_many`
    on streams that exist): each stream numbered on, each writer's duplicates
    dropped, writes without a writer always stored, and a write past its
    stream's limit stores nothing of the round."""
    mib = 1 << 20
    run_ids = [new_run(store) for _ in range(6)]
    created = store.append_chunks_many([(r, "out", [write("a", 0)]) for r in run_ids], mib)
    assert [r.seqs for r in created] == [[0]] * 6
    items = [
        (
            r,
            "out",
            [write("a", 0), write("b", 1), ChunkWrite(data='"anon"'), write("c", 0, "other")],
        )
        for r in run_ids
    ]
    first = store.append_chunks_many(items, mib)
    assert [(r.seqs, r.length) for r in first] == [([None, 1, 2, 3], 4)] * 6
    again = store.append_chunks_many(items, mib)  # a retry after a lost answer
    assert [(r.seqs, r.length) for r in again] == [([None, None, 4, None], 5)] * 6
    size = len('"a""b""anon""c""anon"')
    with pytest.raises(StreamTooLarge) as caught:
        store.append_chunks_many(
            [(r, "out", [write("d" * (n + 1), 2)]) for n, r in enumerate(run_ids)], size + 4
        )
    assert caught.value.run_id in run_ids[2:]  # the first it met past the limit
    for r in run_ids:
        chunks = store.read_chunks(r, "out", 0, 10)
        assert [json.loads(c.data) for c in chunks] == ["a", "b", "anon", "c", "anon"]
        info = store.stream_info(r, "out")
        assert info is not None and (info.length, info.size_bytes) == (5, size)


def test_one_round_creates_the_first_streams_of_runs_beside_runs_streaming(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs starting beside runs that stream already: one round's statements
    create the new streams (each numbered from 0, the runs' change hook
    told) and append to the existing ones — a handful of statements, not ~8
    per new stream as one by one (the first tokens of 500 runs starting
    together cost ~4,000 statements, one network round trip each on
    PostgreSQL). A new stream of a run that has finished is still refused."""
    mib = 1 << 20
    run_ids = [new_run(store) for _ in range(200)]
    streaming = run_ids[::2]  # interleaved with the new ones in the lock order
    store.append_chunks_own([(r, "out", [write("a", 0)]) for r in streaming], mib)
    changed: list[str] = []
    monkeypatch.setattr(store, "on_run_change", changed.extend)
    statements = 0
    execute = _Cursor.execute

    def counted(self: Any, sql: str, args: Any = ()) -> Any:
        nonlocal statements
        statements += 1
        return execute(self, sql, args)

    monkeypatch.setattr(_Cursor, "execute", counted)
    items = [(r, "out", [write("a", 1) if r in streaming else write("n", 0)]) for r in run_ids]
    results = store.append_chunks_own(items, mib)
    assert statements <= 12, f"{statements} statements for one round of 200 streams"
    monkeypatch.setattr(_Cursor, "execute", execute)
    assert results == [
        AppendResult(seqs=[1], length=2) if r in streaming else AppendResult(seqs=[0], length=1)
        for r in run_ids
    ]
    assert sorted(set(changed)) == sorted(set(run_ids) - set(streaming))
    for r in run_ids:
        chunks = [json.loads(c.data) for c in store.read_chunks(r, "out", 0, 10)]
        assert chunks == (["a", "a"] if r in streaming else ["n"])
    finished = run_ids[1]
    store.finish_run(finished, "CANCELED", None, None)
    again = store.append_chunks_own(
        [(finished, "late", [write("x", 0)]), (run_ids[0], "out", [write("a", 2)])], mib
    )
    assert [type(r).__name__ for r in again] == ["Refused", "AppendResult"]
    assert [s.key for s in store.list_streams(finished)] == ["out"]


def test_rounds_of_every_size_reuse_a_few_statement_texts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's statements name a padded number of rows: rounds of 2..40
    streams issue a few statement texts (prepared once, from SQLite's
    statement cache), not 5 per size (parsed and planned every round) —
    and the padding stores nothing: each stream holds exactly its chunks,
    numbered on, its writer's retries still dropped."""
    mib = 1 << 20
    run_ids = [new_run(store) for _ in range(40)]
    store.append_chunks_own([(r, "out", [write("a", 0)]) for r in run_ids], mib)
    texts: set[str] = set()
    execute = _Cursor.execute

    def noted(self: Any, sql: str, args: Any = ()) -> Any:
        texts.add(sql)
        return execute(self, sql, args)

    monkeypatch.setattr(_Cursor, "execute", noted)
    written = dict.fromkeys(run_ids, 1)
    for size in range(2, 41):
        some = run_ids[:size]
        items = [(r, "out", [write(size, written[r])]) for r in some]
        results = store.append_chunks_own(items, mib)
        assert results == [AppendResult(seqs=[written[r]], length=written[r] + 1) for r in some]
        for r in some:
            written[r] += 1
    retried = store.append_chunks_own([(r, "out", [write(0, 1)]) for r in run_ids[:7]], mib)
    monkeypatch.setattr(_Cursor, "execute", execute)
    writes = [t for t in texts if not t.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    # 5 statements a round (6 on PostgreSQL: it locks the rows too), each at
    # one of 6 sizes (2, 4, 8, 16, 32, 64 rows); unpadded, ~5 per size (195)
    assert len(writes) <= 36, f"{len(writes)} statement texts for rounds of 2..40 streams"
    assert retried == [AppendResult(seqs=[None], length=written[r]) for r in run_ids[:7]]
    for n, r in enumerate(run_ids):
        chunks = store.read_chunks(r, "out", 0, 100)
        assert [json.loads(c.data) for c in chunks] == ["a", *range(max(2, n + 1), 41)]
        info = store.stream_info(r, "out")
        assert info is not None and info.length == written[r] == len(chunks)


@pytest.mark.usefixtures("rf")
def test_runs_sharing_an_actor_commit_their_tokens_together() -> None:
    """Through the public API: async runs on shared RunActors, each awaiting
    10 appends one after the other — one transaction per append and run
    would be 300."""
    runs, n = 30, 10
    ids = [h.id for h in lockstep.batch_trigger([{"n": n}] * runs).result(timeout_s=60)]
    eventually(
        lambda: all(rayflow.runs.retrieve(i).result().status == "EXECUTING" for i in ids),
        timeout_s=120,
        what="all runs executing",
    )
    controller = current().controller
    actors = {}
    for run_id in ids:
        name, actor = ray.get(controller.locate.remote(run_id))
        assert actor is not None
        actors[name] = actor
    assert len(actors) < runs, "the runs did not share actors"
    before = sum(ray.get([a.stream_commits.remote() for a in actors.values()]))

    async def go_all() -> None:
        await asyncio.gather(*(go.send(i, {}) for i in ids))

    asyncio.run(go_all())
    for run_id in ids:
        assert rayflow.runs.wait(run_id).result(timeout_s=120).output == n
    commits = sum(ray.get([a.stream_commits.remote() for a in actors.values()])) - before
    assert 1 <= commits <= runs * n // 3, commits
    for run_id in ids:
        assert list(tokens_out.read(run_id, timeout_s=5)) == [f"t{i}" for i in range(n)]
