"""A short chaos soak (issue 11; the long one is benchmarks/chaos.py).

Runs that stream output and wait for input messages (`.wait()` suspends and
is revived, `.once()` holds the process) while a seeded schedule SIGKILLs the
RunActor of a live run, the Inbox, the Controller and the Serve replica, one
after another. Python and SSE readers reconnect throughout; senders retry
through the Python API and over HTTP with an idempotency key. Every run must
complete with exactly the messages sent, and no view (the Store, the Python
readers, the SSE readers) may miss, repeat or reorder a chunk.

PostgreSQL restarts are left out here: the suite's PostgreSQL server is shared
by every test (and by other sessions on the machine); benchmarks/chaos.py
restarts a server of its own.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
from _http_fixtures import HttpApi, http_api  # noqa: F401  (fixture)

import rayflow  # noqa: E402
from rayflow import errors, streams, task  # noqa: E402
from rayflow._runtime import connection  # noqa: E402
from rayflow.store import open_store  # noqa: E402
from rayflow.store.base import RunRecord  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _chaos_soak import Soak  # noqa: E402

KINDS = ["run_actor", "inbox", "controller", "serve"]


async def test_no_chunk_or_message_is_lost_or_repeated_under_kills(
    rf: Any,
    http_api: HttpApi,  # noqa: F811
) -> None:
    lines: list[str] = []
    soak = Soak(http_api.url, http_api.secret_key, seed=11, log=lines.append)
    result = await soak.phase(
        "mixed",
        KINDS,
        runs=4,
        rounds=8,
        chunks=10,
        gap_s=0.05,
        faults=8,
        fault_gap_s=(0.2, 0.6),
        timeout_s=150,
    )
    report = f"{result}\nlog (last 30): {lines[-30:]}"
    # every kind was injected while the runs worked (faults stop when they
    # are all done), and each part recovered
    assert set(result.faults) == set(KINDS), report
    assert result.hangs == 0, report
    assert result.completed == result.runs, report
    assert result.wrong_output == 0, report
    for view in ("store", "python", "sse"):
        assert result.lost[view] == 0, report
        assert result.duplicated[view] == 0, report
        assert result.misordered[view] == 0, report
    assert result.messages_acked == result.runs * 8, report
    assert result.messages_lost == 0 and result.messages_duplicated == 0, report
    assert result.early_ends == 0, report
    assert result.chunks_expected == result.runs * 8 * 11, report


# -- what the soak found, each pinned down on its own ------------------------------
lost_poke = streams.input("chaos-lost-poke", dict)
lost_poke_ready = streams.define("chaos-lost-poke-ready", str)


@task(id="chaos-lost-poke")
async def wait_once(payload: dict) -> dict:  # type: ignore[type-arg]
    await lost_poke_ready.append("waiting")
    message: dict = (await lost_poke.once(timeout_s=120)).unwrap()  # type: ignore[type-arg]
    return message


def test_a_message_stored_without_a_poke_still_reaches_a_waiting_once(rf: Any) -> None:
    """Found by the soak: the Inbox acknowledged a send (stored), then died
    (or found no live actor through a restarting Controller) before poking
    the run, and the run sat in `.once()` with the message in the Store for
    good. Here the message is stored the way the Inbox stores it, no poke."""
    handle = wait_once.trigger({}).result()
    assert next(iter(lost_poke_ready.read(handle.id, timeout_s=30))) == "waiting"
    store = connection.current().store
    stored = store.inbox_send_many([(handle.id, lost_poke.id, json.dumps({"n": 1}), "m-1")])
    assert not isinstance(stored[0], Exception), stored
    run = rayflow.runs.wait(handle.id).result(timeout_s=30)
    assert run.status == "COMPLETED" and run.output == {"n": 1}, run


def test_a_restarted_controller_locates_a_live_run_from_its_first_answer(rf: Any) -> None:
    """Found by the soak: right after a Controller restart, `locate` answered
    "no actor" for a run still executing on one (recovery had not
    re-attached it yet), so the Inbox skipped the poke of an acknowledged
    message. `locate` now waits for the re-attachment."""
    handle = wait_once.trigger({}).result()
    assert next(iter(lost_poke_ready.read(handle.id, timeout_s=30))) == "waiting"
    controller = connection.current().controller
    os.kill(ray.get(controller.pid.remote()), signal.SIGKILL)
    status, actor = ray.get(controller.locate.remote(handle.id), timeout=60)
    assert status == "EXECUTING" and actor is not None
    assert handle.id in ray.get(actor.run_ids.remote())
    lost_poke.send(handle.id, {"n": 2}).result()
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert run.status == "COMPLETED" and run.output == {"n": 2}, run


@task(id="chaos-take-three")
async def take_three(payload: dict) -> list:  # type: ignore[type-arg]
    return [(await lost_poke.once(timeout_s=120)).unwrap() for _ in range(3)]


async def test_a_send_retried_with_its_idempotency_key_is_stored_once(
    rf: Any,
    http_api: HttpApi,  # noqa: F811
) -> None:
    """A sender whose answer was lost (the Serve replica or the connection
    died after the message was stored) can only retry: with the same
    idempotency key the retry is recognised, over HTTP and in Python."""
    handle = await take_three.trigger({})
    await lost_poke.send(handle.id, {"n": 1}, idempotency_key="py-1")
    await lost_poke.send(handle.id, {"n": 1}, idempotency_key="py-1")
    async with http_api.client() as client:
        for _ in range(2):
            r = await client.post(
                f"/realtime/v1/streams/{handle.id}/input/{lost_poke.id}",
                json={"data": {"n": 2}},
                headers=http_api.headers(handle.public_access_token, **{"Idempotency-Key": "h-1"}),
            )
            assert r.status_code == 200, r.text
    store = connection.current().store
    stored = [json.loads(m.data) for m in store.inbox_read(handle.id, lost_poke.id, 0, 100)]
    assert stored == [{"n": 1}, {"n": 2}]
    await lost_poke.send(handle.id, {"n": 3})
    run = await rayflow.runs.wait(handle.id)
    assert run.output == [{"n": 1}, {"n": 2}, {"n": 3}]


@pytest.mark.postgres
def test_the_postgres_store_rides_out_cut_connections(
    store_url_for: Any, postgres_server_url: str
) -> None:
    """Found by the soak (PostgreSQL restarts): every Store call on a pooled
    connection the server had closed failed, and a run's Controller or
    RunActor gave up on it (stuck EXECUTING, or FAILED). The server's
    restart is played here by terminating the store's connections."""
    import psycopg

    name = "rf-chaos-" + uuid.uuid4().hex[:8]
    store = open_store(store_url_for("postgres") + f"&application_name={name}")
    try:
        assert store.get_run("run_missing") is None  # the pool holds a connection now
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            ).fetchall()
        assert cut, "the store should have held a connection to cut"
        assert store.get_run("run_missing") is None
        created = store.create_runs(
            [RunRecord(id="run_cut", task_id="t", payload="{}", options="{}", tags="[]")]
        )
        assert created[0][1] is True
    finally:
        store.close()


@pytest.mark.postgres
def test_the_postgres_store_says_unavailable_when_no_connection_comes(
    store_url_for: Any,
) -> None:
    """The pool's own PoolTimeout never reaches a caller: it is `Unavailable`
    (a 503 over HTTP, an outage a run resumes after)."""
    from rayflow.store.postgres import PostgresStore

    store = open_store(store_url_for("postgres"))
    assert isinstance(store, PostgresStore)
    small = PostgresStore(store.url, min_size=1, max_size=1, connect_timeout_s=1.0)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with small._transaction():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        with pytest.raises(errors.Unavailable, match="did not answer get_run"):
            small.get_run("run_missing")
    finally:
        release.set()
        holder.join()
        small.close()
        store.close()
