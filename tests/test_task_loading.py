"""A task whose code cannot be loaded in its RunActor fails once, with the
loader's error: it is not a crash to resume on another actor."""

from __future__ import annotations

import os
from typing import Any

import pytest
import ray
from ray.util import state as ray_state

import rayflow
from rayflow import task

pytestmark = pytest.mark.usefixtures("rf")


def _refuse(what: str) -> Any:
    raise RuntimeError(f"{what} cannot be loaded here")


class Unloadable:
    """Pickles fine (at registration) and fails to unpickle (in the RunActor)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ("the licence file",))


UNLOADABLE = Unloadable()


@task(id="loading-unloadable")
async def unloadable(payload: dict) -> str:  # type: ignore[type-arg]
    return repr(UNLOADABLE)


@task(id="loading-whoami")
async def whoami(payload: dict) -> int:  # type: ignore[type-arg]
    return os.getpid()


def _pid_of_next_run() -> int:
    run = rayflow.runs.wait(whoami.trigger({}).result().id).result(timeout_s=60)
    assert run.status == "COMPLETED", run.error
    return int(run.output)


def _alive_run_actors() -> set[str]:
    address = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
    actors = ray_state.list_actors(
        address=address,
        filters=[("class_name", "=", "RunActor"), ("state", "=", "ALIVE")],
        limit=10_000,
    )
    return {a.actor_id for a in actors}


def test_a_task_that_cannot_be_loaded_fails_once_with_the_loaders_error() -> None:
    _pid_of_next_run()  # the pool may still be starting its actors
    before = _alive_run_actors()
    handle = unloadable.trigger({}).result()
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert run.status == "FAILED", (run.status, run.error)
    assert run.error["name"] == "TaskLoadError"
    assert "loading-unloadable" in run.error["message"]
    assert "RuntimeError: the licence file cannot be loaded here" in run.error["message"]
    # one failure, no actor killed for it (it used to kill four)
    _pid_of_next_run()
    assert before <= _alive_run_actors()
