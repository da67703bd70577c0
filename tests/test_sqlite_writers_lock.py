"""The SQLite store's writers' lock (`flock` on `<file>-writers`): a writer
waits in line for it at most `write_lock_timeout_s`, then gets `Unavailable`
(a process stopped while holding it must not hang every writer for ever),
and one that gave up leaves no lock behind."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

from rayflow import errors
from rayflow.store import open_store
from rayflow.store.base import RunRecord
from rayflow.store.sqlite import SQLiteStore


def _run(run_id: str) -> RunRecord:
    return RunRecord(id=run_id, task_id="lock", status="QUEUED", attempt=1)


def test_a_writer_behind_a_lock_held_too_long_gets_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'rf.db'}")
    assert isinstance(store, SQLiteStore)
    store.write_lock_timeout_s = 0.5
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            store.create_run(_run("run_behind"))
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001  (checked below)
            outcome.append(e)

    with open(f"{store.path}-writers", "a+b") as stopped:  # another process's hold
        fcntl.flock(stopped, fcntl.LOCK_EX)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(10)
        finished = not writer.is_alive()
        fcntl.flock(stopped, fcntl.LOCK_UN)
    writer.join(10)
    assert finished, "the writer waited past its timeout for the writers' lock"
    assert len(outcome) == 1 and isinstance(outcome[0], errors.Unavailable), outcome
    assert "write lock" in str(outcome[0])
    assert store.get_run("run_behind") is None
    # the wait that gave up holds nothing: writes go on, here and elsewhere
    store.create_run(_run("run_after"))
    other = open_store(f"sqlite:///{tmp_path / 'rf.db'}")
    other.create_run(_run("run_other"))
    assert store.get_run("run_other") is not None
    store.close()
    other.close()


def test_a_writer_in_line_takes_the_lock_when_it_is_freed(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'rf.db'}")
    assert isinstance(store, SQLiteStore)
    with open(f"{store.path}-writers", "a+b") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        writer = threading.Thread(target=store.create_run, args=(_run("run_in_line"),))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive(), "the writer should wait while the lock is held"
        fcntl.flock(holder, fcntl.LOCK_UN)
    writer.join(10)
    assert not writer.is_alive()
    assert store.get_run("run_in_line") is not None
    with open(f"{store.path}-writers", "a+b") as probe:  # nothing holds it any more
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(probe, fcntl.LOCK_UN)
    store.close()
