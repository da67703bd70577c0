"""`.wait(idempotency_key=...)`: a keyed result outlives attempts, and a
replay of the attempt that took it moves past it like any journaled wait."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import eventually

import rayflow
from rayflow import step, streams, task
from rayflow._runtime import waitpoints
from rayflow.store import Store

keyed_first = streams.input("keyed-first", str)
keyed_second = streams.input("keyed-second", str)


def _mark(path: str) -> None:
    with open(path, "a") as f:
        f.write("reached\n")


@task(id="keyed-wait-then-more")
async def keyed_wait_then_more(payload: dict) -> dict:  # type: ignore[type-arg]
    first = (await keyed_first.wait(timeout="2m", idempotency_key="first")).unwrap()
    await step("reached-second", _mark, payload["marks"])  # a durable operation after it
    second = (await keyed_second.wait(timeout="2m")).unwrap()
    return {"first": first, "second": second, "attempt": rayflow.context().attempt}


def _waiting(run_id: str) -> bool:
    return rayflow.runs.retrieve(run_id).result().status == "WAITING"


@pytest.mark.usefixtures("rf")
def test_a_keyed_wait_followed_by_durable_operations_replays(tmp_path: Path) -> None:
    """Revived after its second wait, the run replays the keyed wait from its
    journal and goes on past the step and the second wait (it used to fail
    with NonDeterminism at the step)."""
    marks = tmp_path / "marks"
    handle = keyed_wait_then_more.trigger({"marks": str(marks)}).result()
    eventually(lambda: _waiting(handle.id), what="the run to suspend in its keyed wait")
    keyed_first.send(handle.id, "a").result()
    eventually(
        lambda: marks.exists() and _waiting(handle.id),
        what="the revived run to pass its step and suspend in its second wait",
    )
    # revived again: the replay passes the keyed wait, the step, the second wait
    keyed_second.send(handle.id, "b").result()
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert run.status == "COMPLETED", run.error
    assert run.output == {"first": "a", "second": "b", "attempt": 1}
    assert marks.read_text() == "reached\n"  # the step never ran again on a replay


def test_keyed_results_kept_at_once_are_all_kept(store: Store) -> None:
    """Many keyed waits of one run keep their results at the same moment
    (each in its own thread, as `.wait()` does): every key is kept."""
    keys = [f"k{i}" for i in range(8)]
    start = threading.Barrier(len(keys))
    errors: list[BaseException] = []

    def keep(key: str) -> None:
        try:
            start.wait()
            waitpoints._keep_keyed_result(store, "run_keys", key, {"seq": int(key[1:])})
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=keep, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for key in keys:
        assert waitpoints._keyed_result(store, "run_keys", key) == {"seq": int(key[1:])}
