"""The `rayflow` commands: one function each, wired into one typer app.

Each command parses its arguments, joins the running deployment
(`_connect.connect`) and calls the public Python API; printing is in
`_render`, failing in `_failure`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from rayflow._status import RunStatus
from rayflow.cli._connect import (
    DEV_FILE,
    connect,
    loopback_ray,
    quiet_ray_logs,
    read_dev_file,
    settings_for,
    start_quiet_serve,
)
from rayflow.cli._failure import CLIError, friendly, parse_json
from rayflow.cli._loading import import_target, reloader, tasks_in
from rayflow.cli._render import ChunkPrinter, err, out, runs_table, spinner

app = typer.Typer(
    name="rayflow",
    help="Long-running Ray tasks that stream typed data out and take typed data in.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="rayflow's data directory [env RAYFLOW_DATA_DIR; ./.rayflow]"),
]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the replica binds it (serve/listener.py): connections of a
        # server that stopped, left in TIME_WAIT, do not keep the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


#: how long `rayflow dev` waits for its port: the HTTP server of a `rayflow
#: dev` stopped a moment ago lives in a Ray worker process that may exit
#: a few seconds after its driver
PORT_WAIT_S = 10.0


def _wait_port_free(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _port_free(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


@app.command()
@friendly
def dev(
    target: Annotated[
        str | None,
        typer.Argument(help="module or .py file whose @task functions to load"),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="HTTP port [env RAYFLOW_HTTP_PORT; 8000]")
    ] = None,
    replicas: Annotated[int, typer.Option(help="HTTP API replicas")] = 1,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload", help="re-import MODULE when its file changes: new runs use the new code"
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Run rayflow on this machine: Ray, the Store, the HTTP API and the dashboard (127.0.0.1)."""
    import ray

    import rayflow
    from rayflow._runtime import bootstrap
    from serve import app as serve_app

    settings = settings_for(data_dir)
    host = "127.0.0.1"
    port = port or settings.http_port
    running = read_dev_file(settings)
    if running is not None:
        raise CLIError(
            f"rayflow dev is already running for {settings.data_dir} (pid {running['pid']},"
            f" {running['url']}); stop it or pass another --data-dir"
        )
    if not _wait_port_free(host, port, PORT_WAIT_S):
        raise CLIError(
            f"port {port} on {host} is in use (waited {PORT_WAIT_S:.0f} s); stop what"
            " listens there or pass another port with --port"
        )
    module = import_target(target) if target else None
    tasks = tasks_in(module) if module is not None else []
    if target and not tasks:
        raise CLIError(f"{target} defines no @task functions")

    quiet_ray_logs(settings)
    loopback_ray()
    with spinner(f"starting Ray, the store and the HTTP API on {host}:{port}"):
        # one replica serves the port itself (rayflow's listener or Serve's direct
        # ingress, `_runtime/ingress.py`): Ray must know first
        bootstrap.start_ray(settings, serve_port=port if replicas == 1 else None)
        resolved = rayflow.init(data_dir=settings.data_dir, http_host=host, http_port=port)
        start_quiet_serve(host, serve_app.proxy_port(resolved), settings)
        url = serve_app.start(resolved, num_replicas=replicas)
        for t in tasks:  # registered, a task can be triggered by id (HTTP, `rayflow trigger`)
            _register(t)
    dev_file = resolved.data_dir / DEV_FILE
    dev_file.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "url": url,
                "ray_address": ray.get_runtime_context().gcs_address,
                "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
                "ray_auth_mode": os.environ.get("RAY_AUTH_MODE"),
                "namespace": resolved.namespace,
                "store": resolved.store_url(),
            }
        )
    )
    secret = resolved.secret_key or ""
    out.print(f"[bold]rayflow dev[/] is running (pid {os.getpid()})", markup=True)
    out.print(f"  Dashboard   {url}/dashboard/#key={secret}")
    out.print(f"  HTTP API    {url}   (OpenAPI: {url}/docs)")
    out.print(f"  Secret key  {secret}")
    out.print(f"  Tasks       {', '.join(t.id for t in tasks) or '(none loaded)'}")
    out.print(f"  Data        {resolved.data_dir}")
    if tasks:
        out.print(f"Try: rayflow trigger {tasks[0].id} --payload '{{}}'   ·   rayflow runs --watch")
    if reload and module is not None:
        out.print(f"Reloading {module.__file__} when it changes.")
    out.print("Press Ctrl-C to stop.")
    tick = reloader(module, _register) if reload and module is not None else None
    stop = _wait_for_signal(tick)
    out.print(f"stopping ({stop})…")
    with contextlib.suppress(OSError):
        dev_file.unlink()
    # The local Ray this command started stops with every process it runs,
    # Serve's included, and nothing of rayflow's lives outside the Store.
    # `serve.shutdown()` first would only add a raylet warning
    # ("ServeController.graceful_shutdown failed … killed by ray.kill").
    ray.shutdown()
    # back at the prompt, a new `rayflow dev` finds the port free
    _wait_port_free(host, port, PORT_WAIT_S)
    out.print("stopped")


def _register(task: Any) -> None:
    from rayflow._response import run_sync

    register = getattr(task, "register", None) or task._register
    result = register()
    if hasattr(result, "result"):
        result.result()
    else:
        run_sync(result)


def _wait_for_signal(tick: Callable[[], None] | None = None) -> str:
    got: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        got.append(signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    while not got:
        time.sleep(0.2)
        if tick is not None and not got:
            tick()
    return got[0]


# -- trigger, runs ---------------------------------------------------------------------------
@app.command()
@friendly
def trigger(
    task_id: Annotated[str, typer.Argument(help="the task's id")],
    payload: Annotated[str, typer.Option("--payload", "-p", help="the payload as JSON")] = "null",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="a tag (repeatable)")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="reuse the run of this key")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait for the run and print its output")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    data_dir: DataDir = None,
) -> None:
    """Start a run of a task by id; prints the run id and its public access token."""
    import rayflow

    value = parse_json(payload, "--payload")
    info = connect(data_dir)
    handle = rayflow.trigger(task_id, value, tags=tag, idempotency_key=idempotency_key).result()
    run = rayflow.runs.wait(handle.id).result() if wait else None
    if as_json:
        doc: dict[str, Any] = {"id": handle.id, "publicAccessToken": handle.public_access_token}
        if run is not None:
            doc.update(status=run.status, output=run.output, error=run.error)
        out.print_json(data=doc)
    else:
        out.print(handle.id)
        if "url" in info:
            err.print(f"watch it: {info['url']}/dashboard/run.html?id={handle.id}")
        if run is not None:
            out.print(f"{run.status} {json.dumps(run.output)}")
            if run.error:
                err.print(f"error: {json.dumps(run.error)}")
    if run is not None and run.status != RunStatus.COMPLETED:
        raise typer.Exit(1)


@app.command()
@friendly
def runs(
    status: Annotated[
        list[str] | None, typer.Option("--status", help="filter (repeatable)")
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="only runs of this task")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 20,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="keep the table live")] = False,
    watch_for: Annotated[
        float | None, typer.Option(help="with --watch: stop after this many seconds")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    data_dir: DataDir = None,
) -> None:
    """List runs, newest first (live with --watch)."""
    import rayflow

    connect(data_dir)
    statuses = [s.upper() for s in status] if status else None

    def fetch() -> list[Any]:
        result: list[Any] = rayflow.runs.list(status=statuses, task_id=task, limit=limit).result()
        return result

    if as_json:
        out.print_json(data=[json.loads(r.model_dump_json()) for r in fetch()])
        return
    if not watch:
        out.print(runs_table(fetch()))
        return
    deadline = time.monotonic() + watch_for if watch_for else None
    if not out.is_terminal:  # a pipe or a file: print a fresh table each second
        while deadline is None or time.monotonic() < deadline:
            out.print(runs_table(fetch()))
            out.print()
            time.sleep(1.0)
        return
    with Live(runs_table(fetch()), console=out, refresh_per_second=4) as live:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1.0)
            live.update(runs_table(fetch()))


@app.command()
@friendly
def tail(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    key: Annotated[
        str | None, typer.Argument(help="the stream key (default: the run's only stream)")
    ] = None,
    start_index: Annotated[int, typer.Option("--start-index", "-s", min=0)] = 0,
    timeout: Annotated[
        float, typer.Option(help="stop after this many seconds without a chunk (0: never)")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON line per chunk")] = False,
    data_dir: DataDir = None,
) -> None:
    """Print a run's output stream live, from --start-index on, until the run finishes."""
    import rayflow
    from rayflow import streams

    connect(data_dir)
    rayflow.runs.retrieve(run_id).result()  # RunNotFound as one line
    if key is None:
        key = _pick_stream(run_id)
    printer = ChunkPrinter(as_json)
    try:
        reader = streams.read(run_id, key, start_index=start_index, timeout_s=timeout or None)
        for index, value in enumerate(reader, start=start_index):
            printer(index, value)
    finally:
        printer.close()


def _pick_stream(run_id: str) -> str:
    from rayflow import streams

    keys = [s["key"] for s in streams.list_streams(run_id).result()]
    if "default" in keys or not keys:
        return "default"
    if len(keys) == 1:
        return str(keys[0])
    raise CLIError(
        f"run {run_id} has streams {', '.join(keys)}; name one: rayflow tail {run_id} KEY"
    )


@app.command()
@friendly
def send(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    stream: Annotated[str, typer.Argument(help="the input stream's id")],
    data: Annotated[str, typer.Argument(help="the message as JSON")],
    data_dir: DataDir = None,
) -> None:
    """Send a JSON message to one of a run's input streams."""
    from rayflow import streams

    value = parse_json(data, "the message")
    connect(data_dir)
    streams.send(run_id, stream, value).result()
    err.print(f"sent to {run_id} / {stream}")


@app.command(name="types")
@friendly
def types_(
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to write into")] = Path("."),
    data_dir: DataDir = None,
) -> None:
    """Write rayflow-types.ts (TypeScript) and rayflow-schemas.json (JSON Schema)
    for every output and input stream of the registered tasks."""
    from rayflow import typescript
    from rayflow._runtime.connection import current

    connect(data_dir)
    for path in typescript.write(current().store, out):
        err.print(f"wrote {path}")


@app.command()
@friendly
def token(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    ttl: Annotated[int, typer.Option(help="lifetime in seconds", min=1)] = 3600,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="only read the run (no input writes)")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Print a public access token for one run: read it and its streams, write its inputs."""
    import rayflow
    from rayflow import _tokens
    from rayflow._runtime import connection

    connect(data_dir)
    rayflow.runs.retrieve(run_id).result()  # RunNotFound as one line
    scopes = _tokens.run_scopes(run_id)
    if read_only:
        scopes = scopes[:1]
    out.print(_tokens.mint_token(connection.current().secret_key, scopes, ttl))
