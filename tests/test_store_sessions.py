"""The Store's sessions (store/_sql_sessions.py), directly against SQLite and
PostgreSQL: a start creates the session and its first run in one
transaction, concurrent starts converge, a closed or expired session starts
nothing, a send that wakes a session whose run ended continues it once (one
new run, `current_run_id` moved)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from _store_fixtures import *  # noqa: F403  (store, store_url, ... fixtures)

from rayflow import errors
from rayflow.store import Store, open_store
from rayflow.store.base import RunRecord, SessionRecord, now_ms
from rayflow.store.named import NamedOutcome, NamedStreamSpec, NamedWrite, Producer


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


def _continue(store: Store, session_id: str, run_id: str) -> str | None:
    """Send a record that wakes the session: the run it continued with (the
    new `run_id`) or None when its current run is alive and takes it."""
    write = NamedWrite(f"sessions/{session_id}/in", [b'{"data": "hi"}'])
    sent = store.session_send(
        session_id, write, 1 << 20, wakes=True, next_run=lambda _: _run(run_id)
    )
    assert sent.result.outcome is NamedOutcome.OK, sent.result
    return sent.continued


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
        _continue(store, "session_1", "run_3")
    store.start_session(_session("session_4", "chat-4", expires_at=now_ms() - 1), _run("run_4"))
    with pytest.raises(errors.SessionClosed):
        store.start_session(_session("session_5", "chat-4"), _run("run_5"))
    assert store.get_run("run_2") is None and store.get_run("run_5") is None
    with pytest.raises(errors.SessionNotFound):
        _continue(store, "session_nope", "run_6")


def test_a_continuation_replaces_a_finished_run_once(store_url: str) -> None:
    setup = open_store(store_url)
    setup.start_session(_session("session_1", "chat-1"), _run("run_1"))
    # the current run is alive: no continuation
    assert _continue(setup, "session_1", "run_x") is None
    assert setup.get_run("run_x") is None
    setup.claim_run("run_1", "actor")
    setup.finish_run("run_1", "COMPLETED", "null", None)
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def go(i: int) -> bool:
        barrier.wait(timeout=30)
        return _continue(stores[i], "session_1", f"run_c{i}") is not None

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
    assert [s.id for s in store.list_sessions(statuses=["CLOSED"])] == ["session_c"]
    assert {s.id for s in store.list_sessions(statuses=["ACTIVE"])} == {"session_a", "session_b"}
    # several statuses are one query: a page holds `limit` matches
    both = store.list_sessions(statuses=["CLOSED", "EXPIRED", "ACTIVE"], limit=2)
    assert len(both) == 2
    with pytest.raises(errors.InvalidArgument):
        store.list_sessions(statuses=["OPEN"])
    first = store.list_sessions(limit=2)
    rest = store.list_sessions(before=(first[-1].created_at, first[-1].id), limit=2)
    assert len({s.id for s in first + rest}) == 3
    updated = store.update_session("session_a", tags=["user:3"], metadata='{"k": 2}')
    assert updated is not None and updated.tags == ["user:3"] and updated.metadata == '{"k": 2}'
    assert store.update_session("session_nope", tags=[]) is None


JSON = "application/json"


def _send(store: Store, session_id: str, text: str, key: str | None, window_ms: int | None = None):  # type: ignore[no-untyped-def]
    write = NamedWrite(f"sessions/{session_id}/in", [json.dumps({"data": text}).encode()])
    return store.session_send(
        session_id, write, 1 << 20, wakes=False, next_run=None, send_key=key,
        send_key_window_ms=window_ms,
    )  # fmt: skip


def test_retention_deletes_sessions_ended_long_ago_with_their_streams_and_old_send_keys(
    store: Store,
) -> None:
    now = now_ms()
    for sid, fields in (
        ("session_a", {}),  # closed below: ended now
        ("session_ab", {}),  # active, its id a prefix-neighbour of session_a's
        ("session_old", {"expires_at": now - 10_000}),  # expired 10 s ago
        ("session_new", {"expires_at": now - 1_000}),  # expired 1 s ago
    ):
        store.start_session(_session(sid, None, **fields), _run(f"run_{sid}"))
        if "expires_at" not in fields:  # an expired session takes no send
            _send(store, sid, "hi", key=f"k-{sid}")
        else:
            store.named_create(NamedStreamSpec(f"sessions/{sid}/in", JSON), [b"{}"], 1 << 20)
        store.named_create(NamedStreamSpec(f"sessions/{sid}/out", JSON), [b"{}"], 1 << 20)
        side = NamedStreamSpec(f"sessions/{sid}/channels/side/in", JSON, ttl_s=60)
        store.named_create(side, [b"{}"], 1 << 20)
    store.session_consume("run_session_a", 1, None, "session_a", "sessions/session_a/in", 1)
    store.close_session("session_a", "done")
    # a session whose run is still alive is kept, however long ago it ended
    assert store.delete_expired_sessions(now_ms() + 1, keys_before=0) == 0
    for sid in ("session_a", "session_old", "session_new"):
        store.finish_run(f"run_{sid}", "COMPLETED", "null", None)

    # retention of 5 s: only the session that expired 10 s ago goes, all of it
    assert store.delete_expired_sessions(now_ms() - 5_000, keys_before=0) == 1
    assert store.get_session("session_old") is None
    assert store.named_info("sessions/session_old/out") is None
    assert store.named_info("sessions/session_old/in") is None
    assert store.get_session("session_new") is not None
    # every session that ended before the cutoff: the closed one with its
    # streams, channels, cursor and keys; the active neighbour keeps all
    assert store.delete_expired_sessions(now_ms() + 1, keys_before=0) == 2
    assert store.get_session("session_a") is None and store.get_session("session_new") is None
    # its side channel goes by its own sliding TTL, like every channel
    assert [i.path for i in store.named_list("sessions/session_a/")] == [
        "sessions/session_a/channels/side/in"
    ]
    assert store.session_cursor("session_a", "sessions/session_a/in") == 0
    kept = {i.path for i in store.named_list("sessions/session_ab/")}
    assert kept == {f"sessions/session_ab/{p}" for p in ("in", "out", "channels/side/in")}
    assert store.get_run("run_session_a") is not None  # runs go by run retention

    # a send key dedupes within its window, then not; retention deletes it
    again = _send(store, "session_ab", "hi", key="k-session_ab", window_ms=60_000)
    assert again.duplicate and again.seq == 0
    late = _send(store, "session_ab", "hi again", key="k-session_ab", window_ms=-1)
    assert not late.duplicate and late.seq == 1  # past its window: a new record
    assert _send(store, "session_ab", "x", key="k-session_ab", window_ms=60_000).seq == 1
    store.delete_expired_sessions(0, keys_before=now_ms() + 1)
    fresh = _send(store, "session_ab", "y", key="k-session_ab", window_ms=60_000)
    assert not fresh.duplicate and fresh.seq == 2


def test_retention_trims_what_ended_runs_took_from_an_open_sessions_input(store: Store) -> None:
    store.start_session(_session("session_in", None), _run("run_in1"))
    path = "sessions/session_in/in"
    for text in ("a", "b", "c"):
        _send(store, "session_in", text, key=None)

    def kept() -> list[int]:
        return [c.pos for c in store.named_read(path, 0, 10, 1 << 20).chunks]

    store.session_consume("run_in1", 1, None, "session_in", path, 1, 0)
    store.session_consume("run_in1", 1, None, "session_in", path, 2, 1)
    # what the current run took stays: a replay of it reads those records
    store.delete_expired_sessions(now_ms() + 1, keys_before=0)
    assert kept() == [0, 1, 2]
    # it returns; a record continues the session with a run that takes from 2
    store.claim_run("run_in1", "actor")
    store.finish_run("run_in1", "COMPLETED", "null", None)
    write = NamedWrite(path, [json.dumps({"data": "d"}).encode()])
    sent = store.session_send(
        "session_in", write, 1 << 20, wakes=True, next_run=lambda _: _run("run_in2")
    )
    assert sent.continued == "run_in2"
    size = store.named_info(path).size_bytes  # type: ignore[union-attr]
    store.delete_expired_sessions(0, keys_before=0)  # nothing that old
    assert kept() == [0, 1, 2, 3]
    store.delete_expired_sessions(now_ms() + 1, keys_before=0)
    assert kept() == [2, 3]  # a and b: taken by the run that ended
    info = store.named_info(path)
    assert info is not None and info.length == 4 and info.size_bytes < size
    assert store.session_cursor("session_in", path) == 2

    # session streams' producer state expires after its window (the
    # Controller passes `session_send_key_ttl_s`): then a stamp is new again
    out = NamedWrite(
        "sessions/session_in/out", [b"{}"], JSON, producer=Producer("run_in2:1:s", 0, 0)
    )
    store.named_create(NamedStreamSpec(out.path, JSON), [], 1 << 20)
    assert store.named_write(out, 1 << 20).outcome is NamedOutcome.OK
    assert store.named_write(out, 1 << 20).outcome is NamedOutcome.DUPLICATE
    assert store.named_expire_producers("sessions/", now_ms() + 1) == 1
    assert store.named_write(out, 1 << 20).outcome is NamedOutcome.OK


def test_a_trim_deletes_the_records_before_it_and_never_moves_back(store: Store) -> None:
    path = "sessions/session_t/out"
    store.named_create(NamedStreamSpec(path, "application/json"), [], 1 << 20)
    store.named_write(NamedWrite(path, [f'{{"n": {i}}}'.encode() for i in range(5)]), 1 << 20)
    size = store.named_info(path).size_bytes  # type: ignore[union-attr]

    def trim(earliest: int) -> int:
        result = store.named_trim(
            NamedWrite(path, [b'{"headers": [["", "trim"]]}']), earliest, 1 << 20
        )
        assert result.outcome is NamedOutcome.OK and result.start is not None
        return result.start

    def positions() -> list[int]:
        return [c.pos for c in store.named_read(path, 0, 100, 1 << 20).chunks]

    assert trim(3) == 5  # the trim record takes the next seq
    assert positions() == [3, 4, 5]  # a read from 0 starts at the first record left
    info = store.named_info(path)
    freed = sum(len(f'{{"n": {i}}}') for i in range(3))
    assert info is not None and info.length == 6
    assert info.size_bytes == size - freed + len(b'{"headers": [["", "trim"]]}')
    assert trim(1) == 6 and positions() == [3, 4, 5, 6]  # backwards: deletes nothing
    assert trim(1_000) == 7 and positions() == [7]  # never past the tail: the trim stays
    assert [c.pos for c in store.named_read(path, 6, 100, 1 << 20).chunks] == [7]
    missing = store.named_trim(NamedWrite("sessions/none/out", [b"{}"]), 1, 1 << 20)
    assert missing.outcome is NamedOutcome.MISSING
