"""An outage of rayflow's own infrastructure is not the task's failure.

When the Store stays unreachable past its retries (PostgreSQL restarting for
longer than `RECONNECT_S`), a Store call inside a run raises `Unavailable`.
The run then resumes from its journal once the Store answers again — it is
not FAILED, does not spend one of the task's retry attempts, and repeats no
step and no chunk. Found by the chaos soak: runs ended FAILED with the pool's
PoolTimeout after a long PostgreSQL outage.

The outage is played by the task raising the very error the Store raises
(a real 30 s PostgreSQL outage per test would be too slow for the suite; the
chaos soak, `benchmarks/chaos.py --store postgres`, restarts a real server).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import rayflow
from rayflow import errors, step, streams, task
from rayflow._runtime.supervisor import MAX_OUTAGE_RESUMES

pytestmark = pytest.mark.usefixtures("rf")

counted = streams.define("outage-counted", int)


def _mark(path: str, i: int) -> int:
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


@task(id="outage-once")
async def outage_once(payload: dict) -> int:
    for i in range(3):
        await step("mark", _mark, payload["marks"], i)
        await counted.append(i)
    if not os.path.exists(payload["flag"]):
        Path(payload["flag"]).touch()
        raise errors.Unavailable("PostgreSQL did not answer append_chunks_many (played)")
    await counted.append(3)
    return rayflow.context().attempt


@task(id="outage-always")
async def outage_always(payload: dict) -> None:
    _mark(payload["marks"], 0)
    raise errors.Unavailable("PostgreSQL did not answer claim_run (played)")


def test_a_run_that_meets_a_store_outage_resumes_instead_of_failing(tmp_path: Path) -> None:
    marks = str(tmp_path / "marks")
    handle = outage_once.trigger({"marks": marks, "flag": str(tmp_path / "flag")}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "COMPLETED", run.error
    assert run.output == 1, "an outage must not spend one of the task's attempts"
    assert list(counted.read(handle.id, timeout_s=1)) == [0, 1, 2, 3]
    assert Path(marks).read_text().split() == ["0", "1", "2"], "steps ran again"


def test_a_run_that_meets_an_outage_at_every_attempt_still_ends(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    handle = outage_always.trigger({"marks": str(marks)}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.status == "CRASHED"
    assert "lost the Store" in run.error["message"]
    assert len(marks.read_text().split()) == MAX_OUTAGE_RESUMES + 1
