"""`@task`, `RunHandle`, `Result`, trigger and trigger_and_wait."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import logging
import os
import sys
import threading
import types
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar, overload

import cloudpickle
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_jsonable_python

from rayflow import _tokens
from rayflow._response import Response
from rayflow._runtime import connection
from rayflow._runtime.adapters import adapter_for
from rayflow._runtime.calls import call
from rayflow._runtime.context import current_run, require_run
from rayflow._runtime.durations import parse_duration
from rayflow._runtime.journal import MISSING
from rayflow._status import RunStatus
from rayflow.errors import InvalidArgument, RayflowError, RunFailed, ValidationError, WaitTimeout

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("rayflow")


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt is retried: up to `max_attempts` attempts in all,
    waiting min_delay_s * factor**(n-1) (capped at max_delay_s) between them.
    Each attempt runs the task from the top with a fresh journal."""

    max_attempts: int = 3
    min_delay_s: float = 1.0
    max_delay_s: float = 30.0
    factor: float = 2.0


@dataclass(frozen=True)
class RunHandle:
    """A triggered run: its id, and a public access token for frontends
    (read its streams, write its input streams)."""

    id: str
    public_access_token: str
    task_id: str = ""
    is_cached: bool = False


@dataclass
class Result(Generic[T]):
    """The outcome of a wait, a once or a child run: `ok` and `output`, or `error`.

    `unwrap()` returns the output or raises the error (`WaitTimeout` for a
    timed-out wait, `RunFailed` for a child run that did not complete).
    """

    ok: bool
    output: T | None = None
    error: RayflowError | None = None

    def unwrap(self) -> T:
        if not self.ok:
            raise self.error or WaitTimeout("no result")
        return self.output  # type: ignore[return-value]


@dataclass(frozen=True)
class RunInfo:
    """The run the calling code executes in (`rayflow.context()`)."""

    id: str
    task_id: str
    attempt: int
    parent_id: str | None
    root_id: str
    #: True while the run re-executes journaled operations after a revival
    replaying: bool


def context() -> RunInfo:
    """The current run's id, task, attempt number and links. Raises
    `OutsideTask` outside a running task."""
    ctx = require_run("rayflow.context()")
    return RunInfo(
        id=ctx.run_id,
        task_id=ctx.task_id,
        attempt=ctx.attempt,
        parent_id=ctx.parent_id,
        root_id=ctx.root_id,
        replaying=ctx.journal.replaying,
    )


_UNRESOLVED = "<payload type not resolved yet>"


def _unresolved(t: Any) -> bool:
    return isinstance(t, str) and t == _UNRESOLVED


def _payload_type(fn: Callable[..., Any]) -> Any:
    """The first parameter's type, resolved where the function was defined.

    Resolved in the defining process: a string annotation (`from __future__
    import annotations`) names things, like `Any`, that a function pickled by
    value does not carry to the RunActor. None when unannotated.
    """
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].annotation is inspect.Parameter.empty:
        return None
    annotation = params[0].annotation
    if isinstance(annotation, str):
        import typing

        try:
            annotation = typing.get_type_hints(fn).get(params[0].name, Any)
        except NameError:
            return _UNRESOLVED  # defined later in its module: resolve at registration
    return annotation


def _validate(adapter: TypeAdapter[Any] | None, value: Any, what: str) -> Any:
    if adapter is None:
        return value
    try:
        return adapter.validate_python(value)
    except PydanticValidationError as e:
        raise ValidationError(f"{what} is invalid: {e}") from None


class Task(Generic[T, R]):
    """A task: an `async def` function that runs as a rayflow run on Ray.

    Create with `@task(id=...)`. Trigger it with `.trigger(payload)` from
    anywhere, or `await .trigger_and_wait(payload)` inside another task.
    """

    def __init__(
        self,
        fn: Callable[[T], Awaitable[R]],
        *,
        id: str,
        retry: RetryPolicy | int | None = None,
        max_duration: float | str | None = None,
        queue: str | None = None,
        resources: dict[str, Any] | None = None,
        inputs: list[Any] | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@task needs an `async def` function, got {fn!r}")
        self.fn, self.id, self.queue = fn, id, queue
        self.retry = RetryPolicy(max_attempts=retry) if isinstance(retry, int) else retry
        self.max_duration_s = parse_duration(max_duration)
        self.resources = resources or {}
        self.payload_type = _payload_type(fn)
        self._adapter: TypeAdapter[Any] | None = None
        self._adapter_built = False
        self._declared_inputs = list(inputs or [])
        #: input streams the task receives on, by id (filled at registration)
        self.inputs: dict[str, Any] = {}
        #: output streams it writes, by id (filled at registration)
        self.outputs: dict[str, Any] = {}
        _define(self)

    # pickled into the Store; the adapter is rebuilt where it is used
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_adapter"], state["_adapter_built"] = None, False
        return state

    @property
    def adapter(self) -> TypeAdapter[Any] | None:
        if not self._adapter_built:
            if _unresolved(self.payload_type):
                self.payload_type = _payload_type(self.fn)
            if self.payload_type is None or _unresolved(self.payload_type):
                self._adapter = None
            else:
                self._adapter = adapter_for(self.payload_type)
            self._adapter_built = True
        return self._adapter

    def defaults(self) -> dict[str, Any]:
        return {
            "retry": asdict(self.retry) if self.retry else None,
            "max_duration_s": self.max_duration_s,
            "queue": self.queue,
            "resources": self.resources or None,
        }

    @property
    def source(self) -> str:
        """Where the function is defined: `module:qualname`."""
        return f"{self.fn.__module__}:{self.fn.__qualname__}"

    @property
    def fingerprint(self) -> str:
        """A hash of the function's code: two registrations with different
        fingerprints come from different code versions."""
        try:
            text = inspect.getsource(self.fn)
        except (OSError, TypeError):
            code = self.fn.__code__
            text = repr((code.co_code, code.co_consts, code.co_names))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    async def invoke(self, payload: Any) -> R:
        """Run the function on a payload (inside the RunActor)."""
        from rayflow.metadata import flush_run

        try:
            return await self.fn(_validate(self.adapter, payload, f"payload of task {self.id!r}"))
        finally:
            # the run's last metadata is durable before its status changes
            await flush_run()

    def trigger(
        self,
        payload: T,
        *,
        idempotency_key: str | None = None,
        tags: list[str] | None = None,
        max_duration: float | str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Response[RunHandle]:
        """Start a run of this task; resolves to its `RunHandle`.

        Inside a task the new run is a child (its parent is the current run).
        Raises `ValidationError` for a payload that fails the function's type.
        The run starts even if you never read the handle, but only once the
        response is awaited or `.result()` is called.
        """
        value = _validate(self.adapter, payload, f"payload of task {self.id!r}")
        options = _options(max_duration, metadata)

        async def go() -> RunHandle:
            await self._register()
            return await _trigger(self.id, value, options, idempotency_key, tags)

        return Response(go)

    def batch_trigger(
        self,
        payloads: list[T],
        *,
        idempotency_keys: list[str | None] | None = None,
        tags: list[str] | None = None,
        max_duration: float | str | None = None,
    ) -> Response[list[RunHandle]]:
        """Start one run per payload in a single call and a single Store
        transaction; resolves to their `RunHandle`s, in order.

        Much cheaper than N `trigger` calls for many runs. Every payload is
        validated first: one that fails the function's type raises
        `ValidationError` and no run is created. `idempotency_keys` (one per
        payload, None for none) and `tags` (for all) work as in `trigger`.
        """
        values = [_validate(self.adapter, p, f"payload of task {self.id!r}") for p in payloads]
        keys: list[str | None] = (
            list(idempotency_keys) if idempotency_keys is not None else [None] * len(values)
        )
        if len(keys) != len(values):
            raise InvalidArgument(
                f"batch_trigger got {len(values)} payloads but {len(keys)} idempotency keys"
            )
        options: dict[str, Any] = {}
        if max_duration is not None:
            options["max_duration_s"] = parse_duration(max_duration)

        async def go() -> list[RunHandle]:
            await self._register()
            return await _trigger_batch(self.id, values, options, keys, tags)

        return Response(go)

    async def trigger_and_wait(
        self, payload: T, *, idempotency_key: str | None = None, tags: list[str] | None = None
    ) -> Result[R]:
        """Inside a task: trigger a child run and wait for its result.

        The result is journaled, so a revived parent does not run the child
        again. Returns a `Result`; `.unwrap()` raises `RunFailed`.
        """
        handle = await self.trigger(payload, idempotency_key=idempotency_key, tags=tags)
        return await wait_for_run(handle.id)

    def register(self) -> Response[None]:
        """Make the task known to the cluster, so it can be triggered by id
        (`rayflow.trigger`, HTTP) before anyone triggers it from Python.
        Triggering registers it too; calling this again is cheap."""
        return Response(self._register)

    async def _register(self) -> None:
        conn = connection.current()
        key = (conn.store.url, self.id)
        if _registered.get(key) is self:
            return
        if _unresolved(self.payload_type):
            self.payload_type = _payload_type(self.fn)
        module = sys.modules.get(self.fn.__module__)
        if module is not None and _pickle_by_value(module):
            cloudpickle.register_pickle_by_value(module)
        self.inputs, self.outputs = _streams_of(self.fn, self._declared_inputs)
        blob = cloudpickle.dumps(self)
        defaults = {
            **self.defaults(),
            "source": self.source,
            "fingerprint": self.fingerprint,
            "inputs": {i: _schema(s.type) for i, s in self.inputs.items()},
            "outputs": {o: _schema(s.type) for o, s in self.outputs.items()},
        }
        import asyncio

        earlier = await asyncio.to_thread(conn.store.get_task_defaults, self.id)
        _report_redefinition(self, earlier)
        await call(conn.controller.register_task.remote(self.id, blob, json.dumps(defaults)))
        _registered[key] = self

    async def __call__(self, payload: T) -> R:
        """Call the function directly, in this process (no run is created)."""
        return await self.fn(payload)


def _streams_of(
    fn: Callable[..., Any], declared: list[Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input and output streams a task uses: those declared with
    `@task(inputs=[...])`, and every stream handle its code names (module
    globals and closure variables, nested functions included). Found at
    registration, when the module has defined everything it names."""
    from rayflow.inputs import InputStream
    from rayflow.streams import OutputStream

    values: list[Any] = list(declared)

    def walk(code: types.CodeType) -> None:
        for name in code.co_names:
            if name in fn.__globals__:
                values.append(fn.__globals__[name])
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    walk(fn.__code__)
    for cell in fn.__closure__ or ():
        with contextlib.suppress(ValueError):  # an empty cell
            values.append(cell.cell_contents)
    inputs = {v.id: v for v in values if isinstance(v, InputStream)}
    outputs = {v.id: v for v in values if isinstance(v, OutputStream)}
    return inputs, outputs


def _schema(type_: Any) -> dict[str, Any]:
    """The JSON Schema of a stream's type ({} when it has none)."""
    try:
        schema: dict[str, Any] = TypeAdapter(type_).json_schema()
    except Exception:  # a type pydantic cannot describe: accept anything
        return {}
    return schema


_registered: dict[tuple[str, str], Task[Any, Any]] = {}
#: every task defined in this process, by id (the latest definition wins)
_defined: dict[str, Task[Any, Any]] = {}
#: set by `rayflow.init()`: this process defines tasks for the deployment, so
#: tasks it defines are registered (RunActors and Serve replicas never set it)
_auto_register = False


def _define(t: Task[Any, Any]) -> None:
    """Remember a new task; once `rayflow.init()` ran, register it too."""
    other = _defined.get(t.id)
    if other is not None and other.fn is not t.fn and other.fingerprint != t.fingerprint:
        warnings.warn(
            f"task id {t.id!r} is defined twice in this process, by {other.source} and"
            f" {t.source}; the later definition ({t.source}) is the one registered",
            RuntimeWarning,
            stacklevel=4,
        )
    _defined[t.id] = t
    if _auto_register:
        _register_when_imported(t)


def _report_redefinition(t: Task[Any, Any], earlier_defaults: str | None) -> None:
    if earlier_defaults is None:
        return
    earlier = json.loads(earlier_defaults)
    before = earlier.get("fingerprint")
    if before is None or before == t.fingerprint:
        return
    message = (
        f"task {t.id!r} was registered from other code ({earlier.get('source', '?')},"
        f" version {before}); this registration from {t.source} (version"
        f" {t.fingerprint}) replaces it: runs started from now on execute this code."
        " If two services define the task differently, give one of them another id."
    )
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def _register_when_imported(t: Task[Any, Any]) -> None:
    """Register `t` once the module defining it has finished importing.

    A task pickled by value takes the module globals that exist when it is
    pickled; registering in the middle of the import would lose what the
    module defines below the task. Importing the module from another thread
    blocks until the importing thread has finished it.
    """
    name = t.fn.__module__
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if module is None or name == "__main__" or not getattr(spec, "_initializing", False):
        _register_now(t)
        return

    def after_import() -> None:
        try:
            importlib.import_module(name)
        except Exception as e:  # the import failed: the task does not exist
            log.warning("task %r not registered: importing %s failed: %s", t.id, name, e)
            return
        _register_now(t)

    threading.Thread(target=after_import, name=f"rayflow-register-{t.id}", daemon=True).start()


def _register_now(t: Task[Any, Any]) -> None:
    try:
        t.register().result(timeout_s=60)
    except Exception:
        log.exception("registering task %r failed", t.id)


def register_defined_tasks() -> None:
    """Register every task defined so far in this process, and every task
    defined from now on (called by `rayflow.init()`)."""
    global _auto_register
    _auto_register = True
    for t in list(_defined.values()):
        _register_now(t)


def _pickle_by_value(module: Any) -> bool:
    """User code that a worker may not be able to import travels by value."""
    name = getattr(module, "__name__", "")
    if name == "__main__" or name.startswith("rayflow"):
        return False
    path = getattr(module, "__file__", None) or ""
    return not any(part in path for part in ("site-packages", "dist-packages")) and bool(
        os.path.basename(path)
    )


def child_key(parent_id: str, key: str | None, auto: str) -> str:
    """The stored idempotency key of a child run: scoped to its parent, so
    that no other caller can name it (HTTP callers' keys are scoped to them,
    see `serve.auth.Principal.idempotency_key`) and two parents' keys never
    meet; `auto` (attempt and journal position) when the task gave none."""
    return f"run:{parent_id}:" + (f"key:{key}" if key is not None else f"auto:{auto}")


async def _trigger(
    task_id: str,
    payload: Any,
    options: dict[str, Any],
    idempotency_key: str | None,
    tags: list[str] | None,
) -> RunHandle:
    conn = connection.current()
    ctx = current_run()
    parent_id = None
    if ctx is not None:
        parent_id = ctx.run_id
        recorded = ctx.journal.replay("trigger", task_id)
        if recorded is not MISSING:
            return _handle(conn.secret_key, recorded["id"], task_id, recorded["cached"])
        # a crash between creating the child and journaling it must not make two
        auto = f"{ctx.attempt}:{ctx.journal.cursor}"
        idempotency_key = child_key(ctx.run_id, idempotency_key, auto)
    run_id, created = await call(
        conn.controller.trigger.remote(
            task_id,
            json.dumps(to_jsonable_python(payload)),
            options,
            parent_id,
            idempotency_key,
            tags,
        )
    )
    if ctx is not None:
        await ctx.journal.record("trigger", task_id, {"id": run_id, "cached": not created})
    return _handle(conn.secret_key, run_id, task_id, not created)


async def _trigger_batch(
    task_id: str,
    payloads: list[Any],
    options: dict[str, Any],
    keys: list[str | None],
    tags: list[str] | None,
) -> list[RunHandle]:
    conn = connection.current()
    ctx = current_run()
    parent_id = None
    if ctx is not None:
        parent_id = ctx.run_id
        recorded = ctx.journal.replay("batch-trigger", task_id)
        if recorded is not MISSING:
            return [_handle(conn.secret_key, i, task_id, c) for i, c in recorded["runs"]]
        # a crash between creating the children and journaling them must not make two
        prefix = f"{ctx.attempt}:{ctx.journal.cursor}"
        keys = [child_key(ctx.run_id, k, f"{prefix}:{n}") for n, k in enumerate(keys)]
    items = [
        (json.dumps(to_jsonable_python(p)), options, k, tags)
        for p, k in zip(payloads, keys, strict=True)
    ]
    created: list[tuple[str, bool]] = await call(
        conn.controller.trigger_batch.remote(task_id, items, parent_id)
    )
    runs = [(run_id, not new) for run_id, new in created]
    if ctx is not None:
        await ctx.journal.record("batch-trigger", task_id, {"runs": runs})
    return [_handle(conn.secret_key, run_id, task_id, cached) for run_id, cached in runs]


def batch_trigger(
    task_id: str,
    payloads: list[Any],
    *,
    idempotency_keys: list[str | None] | None = None,
    tags: list[str] | None = None,
    max_duration: float | str | None = None,
) -> Response[list[RunHandle]]:
    """Trigger many runs of a registered task by its id, in one call and one
    Store transaction (see `Task.batch_trigger`). Raises `TaskNotFound` if no
    process has registered the task yet."""
    keys: list[str | None] = (
        list(idempotency_keys) if idempotency_keys is not None else [None] * len(payloads)
    )
    if len(keys) != len(payloads):
        raise InvalidArgument(
            f"batch_trigger got {len(payloads)} payloads but {len(keys)} idempotency keys"
        )
    options: dict[str, Any] = {}
    if max_duration is not None:
        options["max_duration_s"] = parse_duration(max_duration)
    return Response(lambda: _trigger_batch(task_id, list(payloads), options, keys, tags))


def _options(max_duration: float | str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if max_duration is not None:
        options["max_duration_s"] = parse_duration(max_duration)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ValidationError("metadata must be a JSON object (a dict)")
        options["metadata"] = to_jsonable_python(metadata)
    return options


def _handle(secret: str, run_id: str, task_id: str, cached: bool) -> RunHandle:
    ttl = connection.current().settings.token_ttl_s
    token = _tokens.mint_token(secret, _tokens.run_scopes(run_id), ttl)
    return RunHandle(id=run_id, public_access_token=token, task_id=task_id, is_cached=cached)


async def wait_for_run(run_id: str) -> Result[Any]:
    """Wait for a run to finish (journaled inside a task)."""
    conn = connection.current()
    ctx = current_run()
    if ctx is not None:
        recorded = ctx.journal.replay("child", run_id)
        if recorded is not MISSING:
            return _child_result(run_id, recorded)
    status = await call(conn.controller.wait_run.remote(run_id))
    import asyncio

    run = await asyncio.to_thread(conn.store.get_run, run_id)
    assert run is not None
    outcome = {
        "status": status,
        "output": json.loads(run.output) if run.output else None,
        "error": json.loads(run.error) if run.error else None,
    }
    if ctx is not None:
        await ctx.journal.record("child", run_id, outcome)
    return _child_result(run_id, outcome)


def _child_result(run_id: str, outcome: dict[str, Any]) -> Result[Any]:
    if outcome["status"] == RunStatus.COMPLETED:
        return Result(ok=True, output=outcome["output"])
    error = outcome.get("error") or {}
    return Result(
        ok=False,
        error=RunFailed(
            f"child run {run_id} ended {outcome['status']}: {error.get('message', '')}",
            run_id=run_id,
            status=outcome["status"],
            error=error,
        ),
    )


@overload
def task(fn: Callable[[T], Awaitable[R]], /) -> Task[T, R]: ...
@overload
def task(
    *,
    id: str | None = None,
    retry: RetryPolicy | int | None = None,
    max_duration: float | str | None = None,
    queue: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
    inputs: list[Any] | None = None,
) -> Callable[[Callable[[T], Awaitable[R]]], Task[T, R]]: ...
def task(
    fn: Any = None,
    /,
    *,
    id: str | None = None,
    retry: RetryPolicy | int | None = None,
    max_duration: float | str | None = None,
    queue: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
    inputs: list[Any] | None = None,
) -> Any:
    """Declare an `async def` function as a task.

    `id` names it (default: the function name) — keep it stable, runs and
    HTTP triggers refer to it. `retry` (int or RetryPolicy) retries failed
    attempts with backoff; `max_duration` ("5m", seconds) ends a run as
    TIMED_OUT; `num_cpus`/`num_gpus`/`memory`/`resources` are given to the
    run's Ray actor. `inputs` lists input streams the task receives on that
    its own code does not name (e.g. used in a helper function); those it
    names are found by themselves. Their types are checked at the HTTP edge
    (a wrong send is a 422 and is not stored). Code in a task that may
    suspend must be deterministic between durable operations (see `step`).
    """

    def wrap(f: Callable[[T], Awaitable[R]]) -> Task[T, R]:
        placement = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "memory": memory,
            "resources": resources,
        }
        return Task(
            f,
            id=id or f.__name__,
            retry=retry,
            max_duration=max_duration,
            queue=queue,
            resources={k: v for k, v in placement.items() if v is not None},
            inputs=inputs,
        )

    return wrap(fn) if fn is not None else wrap


def trigger(
    task_id: str,
    payload: Any,
    *,
    idempotency_key: str | None = None,
    tags: list[str] | None = None,
    max_duration: float | str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Response[RunHandle]:
    """Trigger a registered task by its id (for code that does not import it).

    `metadata` is the run's initial metadata (see `rayflow.metadata`).
    Raises `TaskNotFound` if no process has registered the task yet.
    """
    options = _options(max_duration, metadata)
    return Response(lambda: _trigger(task_id, payload, options, idempotency_key, tags))


__all__ = [
    "Result",
    "batch_trigger",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "Task",
    "context",
    "task",
    "trigger",
    "wait_for_run",
]
