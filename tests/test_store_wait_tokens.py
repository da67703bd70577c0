"""The Store's wait tokens (store/_sql_tokens.py), directly against SQLite
and PostgreSQL: completion wakes waiters in its transaction, a completion
racing a suspension is never missed, creation converges on one key."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _store_fixtures import *  # noqa: F403  (store, store_url, ... fixtures)

from rayflow.store import Store, open_store
from rayflow.store.base import TOKEN_WAIT_PREFIX, RunRecord, Waitpoint, WaitTokenRecord, now_ms


def _token(token_id: str, **fields: Any) -> WaitTokenRecord:
    values: dict[str, Any] = {
        "status": "WAITING",
        "output": None,
        "output_is_error": False,
        "timeout_at": None,
        "idempotency_key": None,
        "idempotency_key_expires_at": None,
        "tags": [],
        "created_at": now_ms(),
    }
    values.update(fields)
    return WaitTokenRecord(id=token_id, **values)


def _waiting_on(store: Store, run_id: str, token_id: str) -> bool:
    store.create_run(RunRecord(id=run_id, task_id="t"))
    store.claim_run(run_id, "actor")
    wp = Waitpoint(run_id, TOKEN_WAIT_PREFIX + token_id, None, None, "PENDING", None)
    return store.suspend_run(wp)


def _in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, range(n)))


def test_completion_wakes_every_waiter_once_and_the_first_stands(store: Store) -> None:
    store.create_wait_token(_token("wp_1"))
    assert _waiting_on(store, "run_1", "wp_1") and _waiting_on(store, "run_2", "wp_1")
    token, woken = store.complete_wait_token("wp_1", '{"a": 1}')
    assert token is not None and token.status == "COMPLETED" and token.output == '{"a": 1}'
    assert sorted(woken) == ["run_1", "run_2"]
    assert [store.get_run(r).status for r in ("run_1", "run_2")] == ["QUEUED", "QUEUED"]  # type: ignore[union-attr]
    again, woken_again = store.complete_wait_token("wp_1", '{"a": 2}')
    assert again is not None and again.output == '{"a": 1}' and woken_again == []
    assert store.complete_wait_token("wp_nope", "1") == (None, [])


def test_a_run_suspending_after_the_completion_settles_itself(store: Store) -> None:
    store.create_wait_token(_token("wp_1"))
    store.complete_wait_token("wp_1", "1")  # woke nobody: nobody waited yet
    assert _waiting_on(store, "run_1", "wp_1")
    assert store.get_run("run_1").status == "WAITING"  # type: ignore[union-attr]
    assert store.settle_token_wait("run_1", "wp_1")
    assert store.get_run("run_1").status == "QUEUED"  # type: ignore[union-attr]
    claim = store.claim_run("run_1", "actor")
    assert claim.waitpoint is not None and claim.waitpoint.stream_id == "token:wp_1"
    # a token still waiting leaves the run waiting
    store.create_wait_token(_token("wp_2"))
    assert _waiting_on(store, "run_2", "wp_2") and not store.settle_token_wait("run_2", "wp_2")


def test_completions_racing_suspensions_never_strand_a_run(store_url: str) -> None:
    """Each round: one thread suspends a run on a token and settles, the other
    completes the token; whatever the order, the run ends up QUEUED."""
    setup, suspender, completer = (open_store(store_url) for _ in range(3))
    try:
        for i in range(40):
            run_id, token_id = f"run_{i}", f"wp_{i}"
            setup.create_wait_token(_token(token_id))
            setup.create_run(RunRecord(id=run_id, task_id="t"))
            setup.claim_run(run_id, "actor")
            barrier = threading.Barrier(2)

            def suspend(
                run_id: str = run_id, token_id: str = token_id, barrier: Any = barrier
            ) -> None:
                barrier.wait(timeout=30)
                wp = Waitpoint(run_id, TOKEN_WAIT_PREFIX + token_id, None, None, "PENDING", None)
                assert suspender.suspend_run(wp)
                suspender.settle_token_wait(run_id, token_id)

            def complete(token_id: str = token_id, barrier: Any = barrier) -> None:
                barrier.wait(timeout=30)
                completer.complete_wait_token(token_id, "1")

            threads = [threading.Thread(target=suspend), threading.Thread(target=complete)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            run = setup.get_run(run_id)
            assert run is not None and run.status == "QUEUED", (i, run)
    finally:
        for s in (setup, suspender, completer):
            s.close()


def test_concurrent_creations_with_one_key_converge(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(6)]
    barrier = threading.Barrier(6)

    def create(i: int) -> tuple[str, bool]:
        barrier.wait(timeout=30)
        token, created = stores[i].create_wait_token(_token(f"wp_{i}", idempotency_key="k"))
        return token.id, created

    try:
        results = _in_threads(6, create)
    finally:
        for s in stores:
            s.close()
    assert len({token_id for token_id, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1


def test_timeouts_expire_tokens_and_wake_their_waiters(store: Store) -> None:
    past = now_ms() - 1
    store.create_wait_token(_token("wp_due", timeout_at=past))
    store.create_wait_token(_token("wp_later", timeout_at=now_ms() + 60_000))
    assert _waiting_on(store, "run_1", "wp_due")
    assert store.expire_wait_tokens(now_ms()) == ["run_1"]
    due = store.get_wait_token("wp_due")
    assert due is not None and due.status == "TIMED_OUT" and due.output_is_error
    assert store.get_wait_token("wp_later").status == "WAITING"  # type: ignore[union-attr]
    # a completion after the timeout but before the timer: the timeout was first
    store.create_wait_token(_token("wp_late", timeout_at=past))
    late, _ = store.complete_wait_token("wp_late", '"too late"')
    assert late is not None and late.status == "TIMED_OUT" and late.output != '"too late"'
