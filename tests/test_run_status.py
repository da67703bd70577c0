"""`RunStatus`: one spelling of every run status, equal to the stored strings."""

from __future__ import annotations

import json

import pytest

import rayflow
from rayflow import RunStatus
from rayflow.store.base import ACTIVE_STATUSES, FINISHED_STATUSES, RunRecord


def test_statuses_are_the_strings_stored_and_sent() -> None:
    assert [s.value for s in RunStatus] == [*ACTIVE_STATUSES, *FINISHED_STATUSES]
    assert RunStatus.CANCELED == "CANCELED"
    assert f"run is {RunStatus.TIMED_OUT}" == "run is TIMED_OUT"
    assert json.dumps({"status": RunStatus.WAITING}) == '{"status": "WAITING"}'
    assert {s.value for s in RunStatus if s.is_finished} == set(FINISHED_STATUSES)


@pytest.mark.parametrize(
    ("status", "flags"),
    [
        ("QUEUED", {"is_queued"}),
        ("EXECUTING", {"is_executing"}),
        ("WAITING", {"is_waiting"}),
        ("COMPLETED", {"is_finished", "is_completed", "is_success"}),
        ("FAILED", {"is_finished", "is_completed", "is_failed"}),
        ("CANCELED", {"is_finished", "is_canceled"}),
        ("CRASHED", {"is_finished", "is_completed", "is_failed"}),
        ("TIMED_OUT", {"is_finished", "is_completed", "is_failed"}),
    ],
)
def test_a_run_from_the_store_has_a_typed_status_and_its_flags(
    status: str, flags: set[str]
) -> None:
    run = rayflow.Run.from_record(RunRecord(id="run_x", task_id="t", status=status))
    assert run.status is RunStatus(status)
    names = ("is_queued", "is_executing", "is_waiting", "is_finished", "is_completed")
    names += ("is_success", "is_failed", "is_canceled")
    assert {n for n in names if getattr(run, n)} == flags
    assert json.loads(run.model_dump_json())["status"] == status


def test_every_status_has_a_trigger_dev_database_status() -> None:
    from serve.run_shapes import DB_STATUS

    assert set(DB_STATUS) == set(RunStatus)


def test_an_unknown_stored_status_is_refused() -> None:
    with pytest.raises(ValueError, match="SYSTEM_FAILURE"):
        RunStatus("SYSTEM_FAILURE")
