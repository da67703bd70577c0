"""The `rayflow` command: a local deployment to play with, and tools to poke it.

    rayflow dev examples/research_agent.py     # Ray + Store + HTTP API + dashboard
    rayflow trigger research-agent --payload '{"topic": "Ray"}'
    rayflow runs --watch
    rayflow tail RUN_ID ai-output --start-index 0
    rayflow send RUN_ID follow-up '{"question": "and then?"}'
    rayflow token RUN_ID

`rayflow dev` records where its Ray cluster is in `<data dir>/dev.json`; the
other commands join that cluster (or `RAYFLOW_ADDRESS`) as a Ray driver and
use the public Python API. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

# Read by Ray when it is imported: keep a local Ray on 127.0.0.1 (docs/scaling.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.live import Live  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from rayflow._config import Settings  # noqa: E402
from rayflow.errors import RayflowError  # noqa: E402

app = typer.Typer(
    name="rayflow",
    help="Long-running Ray tasks that stream typed data out and take typed data in.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

STATUS_STYLE = {
    "QUEUED": "magenta",
    "EXECUTING": "blue",
    "WAITING": "yellow",
    "COMPLETED": "green",
    "FAILED": "red",
    "CRASHED": "red",
    "TIMED_OUT": "red",
    "CANCELED": "dim",
}
DEV_FILE = "dev.json"


class CLIError(Exception):
    """A user-facing failure of the CLI itself (bad argument, nothing running)."""


def fail(message: str) -> CLIError:
    return CLIError(message)


def friendly(fn: F) -> F:
    """One line on stderr and exit 1 for every error; never a traceback
    (set RAYFLOW_DEBUG=1 to get one)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except (CLIError, RayflowError) as e:
            _die(f"{type(e).__name__ + ': ' if isinstance(e, RayflowError) else ''}{e}")
        except Exception as e:
            if os.environ.get("RAYFLOW_DEBUG"):
                raise
            _die(f"unexpected {type(e).__name__}: {e} (set RAYFLOW_DEBUG=1 for the traceback)")

    return wrapper  # type: ignore[return-value]


def _die(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    err.print(f"[bold red]error:[/] {escape(first)}", markup=True, highlight=False)
    raise typer.Exit(1)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise fail(f"{what} is not valid JSON ({e.msg} at column {e.colno}): {text!r}") from None


# -- settings, the dev file, connecting ----------------------------------------------------------
def settings_for(data_dir: Path | None) -> Settings:
    s = Settings()
    if data_dir is not None:
        s = s.model_copy(update={"data_dir": data_dir})
    return s.model_copy(update={"data_dir": s.data_dir.resolve()})


DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="rayflow's data directory [env RAYFLOW_DATA_DIR; ./.rayflow]"),
]


def read_dev_file(settings: Settings) -> dict[str, Any] | None:
    path = settings.data_dir / DEV_FILE
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None  # that `rayflow dev` is gone
    return info


def _loopback_ray() -> None:
    """Keep the Ray that `rayflow dev` starts on 127.0.0.1 (docs/scaling.md). Ray reads
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is first imported, which `import rayflow`
    already did; this applies the setting anyway."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def _quiet_ray_logs() -> None:
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _use_ray_auth(mode: str | None) -> None:
    """Ray turns token auth on by default for a local cluster, but a driver joining
    by explicit address must be told (~/.ray/auth_token holds the token)."""
    if not mode or os.environ.get("RAY_AUTH_MODE"):
        return
    os.environ["RAY_AUTH_MODE"] = mode
    with contextlib.suppress(ImportError):  # Ray reads the mode again only when told to
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")


def connect(data_dir: Path | None) -> dict[str, Any]:
    """Join the running deployment: RAYFLOW_ADDRESS, else the `rayflow dev` of the data dir.
    Returns the dev file's contents (empty when joining by address)."""
    import ray

    import rayflow

    settings = settings_for(data_dir)
    _quiet_ray_logs()
    _loopback_ray()
    if settings.address:
        ray.init(
            address=settings.address,
            namespace=settings.namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        rayflow.init(address=settings.address, data_dir=settings.data_dir)
        return {}
    info = read_dev_file(settings)
    if info is None:
        raise fail(
            f"no rayflow is running for {settings.data_dir}: start one with `rayflow dev`"
            " (or set RAYFLOW_ADDRESS / RAYFLOW_DATA_DIR)"
        )
    _use_ray_auth(info.get("ray_auth_mode"))
    ray.init(
        address=info["ray_address"],
        namespace=info["namespace"],
        _node_ip_address=info.get("node_ip", "127.0.0.1"),
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    rayflow.init(
        address=info["ray_address"],
        store=info["store"],
        data_dir=settings.data_dir,
        namespace=info["namespace"],
    )
    return info


# -- rayflow dev -----------------------------------------------------------------------------
def import_target(target: str) -> Any:
    """Import a module by file path (`examples/agent.py`) or dotted name (`app.tasks`).
    Its directory goes on sys.path and PYTHONPATH, so Ray workers can import it too."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise fail(f"no such file: {target}")
        path = path.resolve()
        _add_import_path(path.parent)
        name = path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise fail(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        _run_user_code(lambda: spec.loader.exec_module(module), target)  # type: ignore[union-attr]
        return module
    _add_import_path(Path.cwd())
    return _run_user_code(lambda: importlib.import_module(target), target)


def _add_import_path(directory: Path) -> None:
    d = str(directory)
    if d not in sys.path:
        sys.path.insert(0, d)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if d not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([d, *parts])


def _run_user_code(load: Callable[[], Any], target: str) -> Any:
    try:
        return load()
    except ModuleNotFoundError as e:
        raise fail(f"cannot import {target}: {e}") from None
    except Exception as e:
        import traceback

        frames = traceback.extract_tb(e.__traceback__)
        where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise fail(f"importing {target} failed: {type(e).__name__}: {e}{where}") from None


def tasks_in(module: Any) -> list[Any]:
    from rayflow.task import Task

    return [v for v in vars(module).values() if isinstance(v, Task)]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
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
    data_dir: DataDir = None,
) -> None:
    """Run rayflow on this machine: Ray, the Store, the HTTP API and the dashboard (127.0.0.1)."""
    import ray

    import rayflow
    from serve import app as serve_app

    settings = settings_for(data_dir)
    host = "127.0.0.1"
    port = port or settings.http_port
    running = read_dev_file(settings)
    if running is not None:
        raise fail(
            f"rayflow dev is already running for {settings.data_dir} (pid {running['pid']},"
            f" {running['url']}); stop it or pass another --data-dir"
        )
    if not _port_free(host, port):
        raise fail(f"port {port} on {host} is in use; pass another one with --port")
    module = import_target(target) if target else None
    tasks = tasks_in(module) if module is not None else []
    if target and not tasks:
        raise fail(f"{target} defines no @task functions")

    _quiet_ray_logs()
    _loopback_ray()
    with _status(f"starting Ray, the store and the HTTP API on {host}:{port}"):
        resolved = rayflow.init(data_dir=settings.data_dir, http_host=host, http_port=port)
        _start_quiet_serve(host, port)
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
    out.print("Press Ctrl-C to stop.")
    stop = _wait_for_signal()
    out.print(f"stopping ({stop})…")
    with contextlib.suppress(OSError):
        dev_file.unlink()
    from ray import serve

    try:
        serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()


def _start_quiet_serve(host: str, port: int) -> None:
    """Start Serve with its per-request INFO logs off, so the terminal shows the
    banner and the tasks' own output; serve/app.py then deploys onto it."""
    from ray import serve

    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": host, "port": port},
        logging_config={"log_level": "WARNING"},
    )


def _register(task: Any) -> None:
    from rayflow._response import run_sync

    register = getattr(task, "register", None) or task._register
    result = register()
    if hasattr(result, "result"):
        result.result()
    else:
        run_sync(result)


@contextlib.contextmanager
def _status(message: str) -> Iterator[None]:
    if err.is_terminal:
        with err.status(message):
            yield
    else:
        err.print(message + "…")
        yield


def _wait_for_signal() -> str:
    got: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        got.append(signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    while not got:
        time.sleep(0.2)
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
    if run is not None and run.status != "COMPLETED":
        raise typer.Exit(1)


def _ago(value: datetime | None) -> str:
    return value.astimezone().strftime("%H:%M:%S") if value else "—"


def _duration(run: Any) -> str:
    start = run.started_at or run.created_at
    if start is None:
        return "—"
    end = run.finished_at or datetime.now(start.tzinfo)
    s = max(0.0, (end - start).total_seconds())
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def runs_table(runs: list[Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("RUN", "TASK", "STATUS", "CREATED", "DURATION"):
        table.add_column(col, no_wrap=True)
    for r in runs:
        style = STATUS_STYLE.get(r.status, "")
        status = f"[{style}]{r.status}[/]" if style else r.status
        table.add_row(r.id, r.task_id, status, _ago(r.created_at), _duration(r))
    if not runs:
        table.add_row("(no runs)", "", "", "", "")
    return table


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


# -- tail, send, token -----------------------------------------------------------------------
def is_progress(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("percent"), int | float)


def progress_line(value: dict[str, Any], width: int = 30) -> str:
    pct = max(0.0, min(100.0, float(value["percent"])))
    filled = round(width * pct / 100)
    rest = ", ".join(f"{k}: {v}" for k, v in value.items() if k != "percent")
    return f"[{'#' * filled}{'-' * (width - filled)}] {pct:5.1f}%" + (f"  {rest}" if rest else "")


class ChunkPrinter:
    """Text chunks as they are, `{"percent": …}` chunks as a progress bar, others as JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.progress: Any = None
        self.bar: Any = None
        self.mid_line = False

    def __call__(self, index: int, value: Any) -> None:
        if self.as_json:
            out.print_json(json.dumps({"index": index, "data": value}), indent=None)
        elif isinstance(value, str):
            self._write(value)
            self.mid_line = not value.endswith("\n")
        elif is_progress(value):
            self._progress(value)
        else:
            self._line(json.dumps(value))

    def _write(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, end="", markup=False, highlight=False)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def _line(self, text: str) -> None:
        if self.mid_line:
            self._write("\n")
            self.mid_line = False
        self._write(text + "\n")

    def _progress(self, value: dict[str, Any]) -> None:
        if not out.is_terminal:
            self._line(progress_line(value))
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        rest = ", ".join(f"{k}: {v}" for k, v in value.items() if k != "percent")
        if self.progress is None:
            if self.mid_line:
                self._write("\n")
                self.mid_line = False
            self.progress = Progress(
                BarColumn(), TaskProgressColumn(), TextColumn("{task.description}"), console=out
            )
            self.progress.start()
            self.bar = self.progress.add_task(rest, total=100)
        self.progress.update(self.bar, completed=float(value["percent"]), description=rest)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        elif self.mid_line:
            self._write("\n")


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
    raise fail(f"run {run_id} has streams {', '.join(keys)}; name one: rayflow tail {run_id} KEY")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
