"""Run lifecycle: trigger, retrieve, list, cancel, retries, max_duration,
Controller restart, retention, bounded memory of long streams."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray
from conftest import eventually

import rayflow
from rayflow import errors, streams, task
from rayflow._runtime import connection, triggers

pytestmark = pytest.mark.usefixtures("rf")

ticks = streams.define("ticks", int)


@task(id="sleeper")
async def sleeper(payload: dict) -> str:
    for i in range(payload.get("n", 1000)):
        await ticks.append(i)
        await asyncio.sleep(payload.get("delay", 0.05))
    return "woke"


attempts = streams.define("attempts", int)


@task(id="flaky", retry=rayflow.RetryPolicy(max_attempts=3, min_delay_s=0.05, factor=1))
async def flaky(payload: dict) -> int:
    attempt = rayflow.context().attempt
    await attempts.append(attempt)
    if attempt < payload["succeed_on"]:
        raise RuntimeError(f"boom on attempt {attempt}")
    return attempt


@task(id="always-fails", retry=2)
async def always_fails(payload: dict) -> None:
    raise ValueError("nope: " + payload["why"])


@task(id="too-slow", max_duration="1s")
async def too_slow(payload: dict) -> None:
    await asyncio.sleep(30)


@task(id="typed-payload")
async def typed_payload(payload: dict[str, int]) -> int:
    return sum(payload.values())


@task(id="any-payload")
async def any_payload(payload: dict[str, Any]) -> list[str]:
    return sorted(payload)


def test_a_string_annotation_naming_any_resolves_where_the_task_is_defined() -> None:
    # `from __future__ import annotations` makes "dict[str, Any]" a string;
    # the RunActor gets the function by value, without this module's `Any`
    handle = any_payload.trigger({"b": 1, "a": [2]}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert (run.status, run.output) == ("COMPLETED", ["a", "b"]), run.error


def test_trigger_retrieve_and_list() -> None:
    handle = typed_payload.trigger({"a": 1, "b": 2}, tags=["sum"]).result()
    assert handle.id.startswith("run_") and handle.public_access_token.count(".") == 2
    run = rayflow.runs.wait(handle.id).result()
    assert (run.status, run.output, run.payload, run.tags) == (
        "COMPLETED",
        3,
        {"a": 1, "b": 2},
        ["sum"],
    )
    assert run.is_completed and run.is_success and not run.is_failed
    assert run.started_at is not None and run.finished_at is not None
    listed = rayflow.runs.list(task_id="typed-payload", status="COMPLETED").result()
    assert handle.id in [r.id for r in listed]


def test_wrong_payload_type_is_refused_before_a_run_exists() -> None:
    before = len(rayflow.runs.list(task_id="typed-payload", limit=1000).result())
    with pytest.raises(errors.ValidationError, match="payload of task 'typed-payload'"):
        typed_payload.trigger({"a": "many"}).result()  # type: ignore[dict-item]
    assert len(rayflow.runs.list(task_id="typed-payload", limit=1000).result()) == before


def test_trigger_by_id_and_unknown_task() -> None:
    typed_payload.trigger({"x": 1}).result()  # registers it
    handle = rayflow.trigger("typed-payload", {"x": 5}).result()
    assert rayflow.runs.wait(handle.id).result().output == 5
    with pytest.raises(errors.TaskNotFound, match="no-such-task"):
        rayflow.trigger("no-such-task", {}).result()


def test_idempotency_key_returns_the_same_run() -> None:
    a = typed_payload.trigger({"x": 1}, idempotency_key="once-only").result()
    b = typed_payload.trigger({"x": 1}, idempotency_key="once-only").result()
    assert a.id == b.id and b.is_cached and not a.is_cached
    # another payload under the same key is not a retry of that trigger
    with pytest.raises(errors.IdempotencyConflict, match="once-only"):
        typed_payload.trigger({"x": 2}, idempotency_key="once-only").result()


def test_triggers_made_together_share_calls_and_each_caller_gets_its_own_outcome() -> None:
    """100 `trigger`s at once from one event loop (a backend starting many
    runs) reach the Controller in a few calls, not 100; each caller still
    gets its own outcome: its run, the cached run of a reused key, its own
    IdempotencyConflict for a key reused with another payload (the others in
    that call are untouched), TaskNotFound for an unknown task."""
    first = typed_payload.trigger({"x": 1}, idempotency_key="together").result()
    before = triggers.coalesced_calls

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(typed_payload.trigger({"x": i}) for i in range(100)),
            typed_payload.trigger({"x": 1}, idempotency_key="together"),
            typed_payload.trigger({"x": 2}, idempotency_key="together"),
            rayflow.trigger("no-such-task", {}),
            return_exceptions=True,
        )

    *handles, cached, conflict, unknown = asyncio.run(burst())
    assert isinstance(conflict, errors.IdempotencyConflict) and "together" in str(conflict)
    assert conflict.run_id == first.id
    assert isinstance(unknown, errors.TaskNotFound)
    assert cached.id == first.id and cached.is_cached
    assert not any(h.is_cached for h in handles) and len({h.id for h in handles}) == 100
    assert triggers.coalesced_calls - before <= 10, triggers.coalesced_calls - before
    outputs = [rayflow.runs.wait(h.id).result(timeout_s=120).output for h in handles]
    assert outputs == list(range(100))


def test_failed_attempts_are_retried_with_a_fresh_attempt() -> None:
    handle = flaky.trigger({"succeed_on": 3}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert (run.status, run.output, run.attempt_count) == ("COMPLETED", 3, 3)
    assert list(attempts.read(handle.id, timeout_s=5)) == [1, 2, 3]
    handle = always_fails.trigger({"why": "bad input"}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "FAILED" and run.attempt_count == 2
    assert run.error["name"] == "ValueError" and "nope: bad input" in run.error["message"]


def test_max_duration_ends_the_run_as_timed_out() -> None:
    handle = too_slow.trigger({}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "TIMED_OUT" and "max_duration" in run.error["message"]


def test_cancel_stops_the_code_and_closes_the_streams() -> None:
    handle = sleeper.trigger({}).result()
    reader = iter(ticks.read(handle.id, timeout_s=30))
    assert next(reader) == 0
    assert rayflow.runs.cancel(handle.id).result() is True
    rest = list(reader)  # ends: the stream closed with the run
    run = rayflow.runs.retrieve(handle.id).result()
    assert run.status == "CANCELED" and run.is_canceled and run.is_finished
    assert not run.is_completed  # Trigger.dev's meaning: ran to an end
    count = len(rest) + 1
    # no chunk after the cancel: the code stopped
    assert len(list(ticks.read(handle.id, timeout_s=2))) == count
    assert rayflow.runs.cancel(handle.id).result() is False


def test_a_restarted_controller_loses_no_run(rf: Any) -> None:
    handle = sleeper.trigger({"n": 60, "delay": 0.05}).result()
    reader = iter(ticks.read(handle.id, timeout_s=30))
    assert next(reader) == 0
    conn = connection.current()
    ray.kill(conn.controller, no_restart=False)  # Ray restarts it (max_restarts=-1)

    def answers() -> bool:
        try:
            return bool(ray.get(conn.controller.start.remote(), timeout=5))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    eventually(answers, timeout_s=60, what="the Controller to come back")
    assert [0, *reader] == list(range(60))
    assert rayflow.runs.wait(handle.id).result().output == "woke"


def test_retention_removes_old_finished_runs_and_never_active_ones() -> None:
    done = typed_payload.trigger({"x": 1}).result()
    rayflow.runs.wait(done.id).result()
    active = sleeper.trigger({"n": 1000}).result()
    store = connection.current().store
    store.update_run(done.id, finished_at=1)  # finished in 1970
    store.update_run(active.id, created_at=1)
    removed = ray.get(connection.current().controller.cleanup_expired.remote())
    assert removed >= 1
    with pytest.raises(errors.RunNotFound):
        rayflow.runs.retrieve(done.id).result()
    assert rayflow.runs.retrieve(active.id).result().status in ("QUEUED", "EXECUTING")
    rayflow.runs.cancel(active.id).result()


# -- long streams stay out of the actor's heap ---------------------------------

long_stream = streams.define("long", int)


@task(id="long-stream")
async def long_writer(payload: dict) -> int:
    async with long_stream.writer() as w:
        for i in range(payload["n"]):
            w.write(i)
            if i % 1000 == 999:
                await asyncio.sleep(0)
    await long_stream.append(-1)  # keeps the run alive a moment for the stats
    await asyncio.sleep(payload.get("linger", 0))
    return payload["n"]


def test_a_long_stream_keeps_a_bounded_tail_and_reads_from_the_end_by_seek() -> None:
    n = 20_000
    handle = long_writer.trigger({"n": n, "linger": 3}).result()
    conn = connection.current()

    def actor() -> Any:
        _, a = ray.get(conn.controller.locate.remote(handle.id))
        return a

    live = eventually(actor, what="the run's actor")
    eventually(
        lambda: (streams.list_streams(handle.id).result() or [{"length": 0}])[0]["length"] > n,
        what="all chunks",
    )
    stats = ray.get(live.stream_stats.remote(handle.id))["long"]
    settings = conn.settings
    assert stats["tail"] < 2 * settings.tail_chunks
    assert stats["segments"] <= settings.object_store_segments
    # reading near the end starts there (a seek, not a scan)
    assert list(long_stream.read(handle.id, start_index=n - 3, timeout_s=10)) == [
        n - 3,
        n - 2,
        n - 1,
        -1,
    ]
    # and chunks in sealed segments and in the Store read back exactly
    middle = iter(long_stream.read(handle.id, start_index=5_000, timeout_s=10))
    assert [next(middle) for _ in range(3)] == [5_000, 5_001, 5_002]
    first = iter(long_stream.read(handle.id, start_index=0, timeout_s=10))
    assert [next(first) for _ in range(2)] == [0, 1]


def test_runs_past_max_live_runs_wait_queued_and_all_complete(
    rf: Any, store_url_for: Any, tmp_path: Any
) -> None:
    backend = "postgres" if rf.store.startswith("postgres") else "sqlite"
    rayflow.shutdown()
    try:
        rayflow.init(
            store=store_url_for(backend),
            namespace=f"rf-test-queue-{backend}",
            data_dir=tmp_path,
            max_live_runs=2,
            pool_size=0,
        )
        handles = [sleeper.trigger({"n": 4, "delay": 0.1}).result() for _ in range(5)]
        controller = connection.current().controller
        assert ray.get(controller.queue_length.remote()) >= 3
        most = 0
        statuses: list[str] = []

        def all_done() -> bool:
            nonlocal most, statuses
            statuses = [rayflow.runs.retrieve(h.id).result().status for h in handles]
            most = max(most, statuses.count("EXECUTING"))
            return all(s == "COMPLETED" for s in statuses)

        eventually(all_done, timeout_s=120, what=f"all queued runs to complete ({statuses})")
        assert 1 <= most <= 2
    finally:
        rayflow.shutdown(stop_runs=True)
        rayflow.init(store=rf.store, namespace=rf.namespace, data_dir=rf.data_dir, pool_size=2)


def test_a_public_token_is_scoped_to_its_run() -> None:
    from rayflow import _tokens

    handle = typed_payload.trigger({"x": 1}).result()
    token = rayflow.auth.create_public_token(handle.id, ttl_s=60)
    claims = _tokens.decode_token(connection.current().secret_key, token)
    assert claims["scopes"] == [f"read:runs:{handle.id}", f"write:inputStreams:{handle.id}"]
    assert claims["exp"] - claims["iat"] == 60
    assert _tokens.allows(claims["scopes"], "read", "runs", handle.id)
    assert not _tokens.allows(claims["scopes"], "read", "runs", "run_other")
