"""The Store's sessions (store/_sql_sessions.py), directly against SQLite and
PostgreSQL: a start creates the session and its first run in one
transaction, concurrent starts converge, a closed or expired session starts
nothing, a continuation creates one run and moves `current_run_id`."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from _store_fixtures import *  # noqa: F403  (store, store_url, ... fixtures)

from rayflow import errors
from rayflow.store import Store, open_store
from rayflow.store.base import RunRecord, SessionRecord, now_ms


def _session(session_id: str, external_id: str | None, **fields: object) -> SessionRecord:
    values: dict[str, object] = {
        "type": "inbox",
        "task_id": "inbox-agent",
        "trigger_config": json.dumps({"base_payload": {"sessionId": external_id}}),
        "current_run_id": None,
        "tags": [],
        "metadata": None,
        "closed_at": None,
        "closed_reason": None,
        "expires_at": None,
        "created_at": now_ms(),
        "updated_at": now_ms(),
    }
    values.update(fields)
    return SessionRecord(id=session_id, external_id=external_id, **values)  # type: ignore[arg-type]


def _run(run_id: str) -> RunRecord:
    return RunRecord(id=run_id, task_id="inbox-agent")


def test_a_start_creates_the_session_and_its_first_run_then_is_cached(store: Store) -> None:
    session, created = store.start_session(_session("session_1", "chat-1"), _run("run_1"))
    assert created and session.current_run_id == "run_1"
    run = store.get_run("run_1")
    assert run is not None and run.status == "QUEUED"
    again, created = store.start_session(
        _session("session_2", "chat-1", tags=["t"], metadata='{"m": 1}'), _run("run_2")
    )
    assert not created and again.id == "session_1" and again.current_run_id == "run_1"
    assert again.tags == ["t"] and again.metadata == '{"m": 1}'  # written through
    assert store.get_run("run_2") is None  # no second run
    assert store.get_session("chat-1").id == "session_1"  # type: ignore[union-attr]
    assert store.get_session("session_1").external_id == "chat-1"  # type: ignore[union-attr]
    assert store.get_session("session_nope") is None and store.get_session("nope") is None


def test_concurrent_starts_converge_on_one_session_and_one_run(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(6)]
    barrier = threading.Barrier(6)

    def start(i: int) -> tuple[str, str | None, bool]:
        barrier.wait(timeout=30)
        s, created = stores[i].start_session(_session(f"session_{i}", "same"), _run(f"run_{i}"))
        return s.id, s.current_run_id, created

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(start, range(6)))
        runs = [stores[0].get_run(f"run_{i}") for i in range(6)]
    finally:
        for s in stores:
            s.close()
    assert len({(sid, rid) for sid, rid, _ in results}) == 1
    assert [created for *_, created in results].count(True) == 1
    assert sum(r is not None for r in runs) == 1


def test_a_closed_or_expired_session_starts_and_continues_nothing(store: Store) -> None:
    store.start_session(_session("session_1", "chat-1"), _run("run_1"))
    closed = store.close_session("session_1", "user left")
    assert closed is not None and closed.closed_reason == "user left"
    again = store.close_session("session_1", "another reason")
    assert again is not None and again.closed_reason == "user left"  # the first stands
    with pytest.raises(errors.SessionClosed):
        store.start_session(_session("session_2", "chat-1"), _run("run_2"))
    with pytest.raises(errors.SessionClosed):
        store.continue_session("session_1", _run("run_3"))
    store.start_session(_session("session_4", "chat-4", expires_at=now_ms() - 1), _run("run_4"))
    with pytest.raises(errors.SessionClosed):
        store.start_session(_session("session_5", "chat-4"), _run("run_5"))
    assert store.get_run("run_2") is None and store.get_run("run_5") is None
    with pytest.raises(errors.SessionNotFound):
        store.continue_session("session_nope", _run("run_6"))


def test_a_continuation_replaces_a_finished_run_once(store_url: str) -> None:
    setup = open_store(store_url)
    setup.start_session(_session("session_1", "chat-1"), _run("run_1"))
    # the current run is alive: no continuation
    assert setup.continue_session("session_1", _run("run_x")) == (
        setup.get_session("session_1"),
        False,
    )
    setup.claim_run("run_1", "actor")
    setup.finish_run("run_1", "COMPLETED", "null", None)
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def go(i: int) -> bool:
        barrier.wait(timeout=30)
        return stores[i].continue_session("session_1", _run(f"run_c{i}"))[1]

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            created = list(pool.map(go, range(4)))
        session = setup.get_session("session_1")
    finally:
        for s in [setup, *stores]:
            s.close()
    assert created.count(True) == 1
    assert session is not None and session.current_run_id == f"run_c{created.index(True)}"


def test_sessions_list_by_type_tag_status_and_page(store: Store) -> None:
    store.start_session(_session("session_a", "a", tags=["user:1"]), _run("run_a"))
    store.start_session(
        _session("session_b", "b", tags=["user:1", "x"], type="chat.agent"), _run("run_b")
    )
    store.start_session(_session("session_c", "c", tags=["user:2"]), _run("run_c"))
    store.close_session("session_c", None)
    assert [s.id for s in store.list_sessions(tags=["user:1"])] == ["session_b", "session_a"]
    assert [s.id for s in store.list_sessions(types=["chat.agent"])] == ["session_b"]
    assert [s.id for s in store.list_sessions(status="CLOSED")] == ["session_c"]
    assert {s.id for s in store.list_sessions(status="ACTIVE")} == {"session_a", "session_b"}
    first = store.list_sessions(limit=2)
    rest = store.list_sessions(before=(first[-1].created_at, first[-1].id), limit=2)
    assert len({s.id for s in first + rest}) == 3
    updated = store.update_session("session_a", tags=["user:3"], metadata='{"k": 2}')
    assert updated is not None and updated.tags == ["user:3"] and updated.metadata == '{"k": 2}'
    assert store.update_session("session_nope", tags=[]) is None
