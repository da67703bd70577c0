"""Shared fixtures: one real Ray instance per test session (on 127.0.0.1),
and one rayflow deployment per store backend (SQLite, PostgreSQL) on it."""

from __future__ import annotations

import os

# before Ray is imported (docs/scaling.md): a local Ray that advertises 127.0.0.1
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import asyncio  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import pytest  # noqa: E402
from _store_fixtures import *  # noqa: F403, E402  (store fixtures)

T = TypeVar("T")


@pytest.hookimpl(trylast=True)  # after pytest grouped the items by their parameters
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that do without this session's Ray run first, before it
    starts: most start Ray clusters of their own (`rayflow dev`, the
    examples, the multi-node scenarios), which on a 2-core box are slower
    beside an idle session cluster (its GCS, raylet, Serve, Controllers). A
    stable sort: the order within each part (grouped per store) is kept."""
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(
        address="local",  # our own, even if another Ray runs on this machine
        namespace="rayflow-tests",
        _node_ip_address="127.0.0.1",
        # the dashboard serves Ray's state API (used to prove a waiting run
        # holds no actor); it listens on 127.0.0.1 like the rest
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=0,
        num_cpus=8,
    )
    yield
    ray.shutdown()


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def rf(
    request: pytest.FixtureRequest,
    ray_cluster: None,
    session_store_url_for: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """rayflow initialised against a fresh store of each backend."""
    import rayflow

    backend: str = request.param
    url = session_store_url_for(backend)
    settings = rayflow.init(
        store=url,
        namespace=f"rf-test-{backend}",
        data_dir=tmp_path_factory.mktemp(f"rf-{backend}"),
        pool_size=2,
    )
    yield settings
    rayflow.shutdown(stop_runs=True)


def eventually(check: Callable[[], T], *, timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll `check` until it returns a truthy value; fail clearly at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last value: {last!r})")


async def eventually_async(
    check: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last value: {last!r})")


def run_actor_pid(run_id: str) -> int | None:
    """The process id of the RunActor executing `run_id` (None: none now,
    or the Controller has not noticed that it died)."""
    import ray

    from rayflow._runtime import connection

    _, actor = ray.get(connection.current().controller.locate.remote(run_id))
    if actor is None:
        return None
    try:
        return int(ray.get(actor.pid.remote()))
    except ray.exceptions.RayActorError:
        return None
