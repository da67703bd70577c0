"""rayflow: long-running tasks on Ray that stream typed data out and take
typed data in while they run.

    import rayflow
    from rayflow import task, streams, step

    progress = streams.define("progress", dict)

    @task(id="hello")
    async def hello(payload: dict) -> str:
        await progress.append({"percent": 100})
        return "done"

    rayflow.init()
    handle = hello.trigger({}).result()
    for chunk in progress.read(handle.id):
        print(chunk)

Beside runs: `rayflow.wait` (tokens a run waits on, holding no process, until
someone completes them) and `rayflow.sessions` (a durable input/output pair
keyed by your own id that outlives its runs: a record sent after the run
ended starts a fresh run that takes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayflow import auth, errors, metadata, runs, sessions, streams, wait
from rayflow._config import Settings
from rayflow._response import Response
from rayflow.durable import now, random, step
from rayflow.runs import Run, RunStatus
from rayflow.streams import OutputStream, StreamReader
from rayflow.task import (
    Result,
    RetryPolicy,
    RunHandle,
    RunInfo,
    Task,
    batch_trigger,
    context,
    task,
    trigger,
)

__version__ = "0.1.0"


def init(
    address: str | None = None,
    store: str | None = None,
    *,
    data_dir: str | Path | None = None,
    namespace: str | None = None,
    serve: bool = False,
    **settings: Any,
) -> Settings:
    """Connect this process to rayflow, starting what is missing.

    With no arguments: a local Ray on 127.0.0.1 and a SQLite store in
    `./.rayflow/` (the embedded default). `address=` joins an existing Ray
    cluster (`"auto"` for the local one); `store=` is `sqlite:///…` or
    `postgresql://…`. Every other `RAYFLOW_*` setting can be passed by name
    (e.g. `retention_days=7`). Environment variables fill what is not passed.
    `serve=True` also starts the HTTP API and dashboard (Ray Serve) on
    `http_host:http_port` (127.0.0.1:8000 by default).
    Every `@task` defined in this process is registered (and any defined
    later, when defined), so it can be triggered by id over HTTP.
    Returns the settings in force. Calling it again is a no-op.
    """
    from rayflow._runtime import bootstrap, connection

    overrides: dict[str, Any] = dict(settings)
    if address is not None:
        overrides["address"] = address
    if store is not None:
        overrides["store"] = store
    if data_dir is not None:
        overrides["data_dir"] = Path(data_dir)
    if namespace is not None:
        overrides["namespace"] = namespace
    resolved = bootstrap.resolved(Settings(**overrides))
    if connection.is_connected():
        current = connection.current()
        if current.settings.store_url() == resolved.store_url():
            return current.settings
        connection.disconnect()
    bootstrap.start_ray(resolved, serve_port=resolved.http_port if serve else None)
    settings_in_force = bootstrap.start_control_plane(resolved).settings
    # every @task this process defined (and will define) can be triggered by
    # id, over HTTP too, without a Python trigger first
    from rayflow.task import register_defined_tasks

    register_defined_tasks()
    if serve:
        from serve import app as serve_app

        url = serve_app.start(settings_in_force)
        print(f"rayflow HTTP API and dashboard: {url}/dashboard/")
    return settings_in_force


def shutdown(*, stop_runs: bool = False) -> None:
    """Disconnect this process. `stop_runs=True` also stops every RunActor and
    the Controller (runs stay in the store and resume on the next init)."""
    import ray

    from rayflow._runtime import connection

    if not connection.is_connected():
        return
    if stop_runs:
        conn = connection.current()
        ray.get(conn.controller.shutdown.remote())
        ray.kill(conn.controller, no_restart=True)
    connection.disconnect()


__all__ = [
    "OutputStream",
    "Response",
    "Result",
    "RetryPolicy",
    "Run",
    "RunStatus",
    "RunHandle",
    "RunInfo",
    "Settings",
    "StreamReader",
    "Task",
    "auth",
    "batch_trigger",
    "context",
    "errors",
    "init",
    "metadata",
    "now",
    "random",
    "runs",
    "sessions",
    "shutdown",
    "step",
    "streams",
    "task",
    "trigger",
    "wait",
]
