"""`@task`, `RunHandle`, `Result`, trigger and trigger_and_wait.

The user's side only: the `Task` object and the functions that start runs.
Registration is in `rayflow._runtime.registry`, triggering and child-run
journaling in `rayflow._runtime.triggers`, the result types in
`rayflow._handles`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Generic, TypeVar, overload

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_jsonable_python

from rayflow._handles import Result, RetryPolicy, RunHandle, RunInfo
from rayflow._response import Response
from rayflow._runtime import registry
from rayflow._runtime.adapters import adapter_for
from rayflow._runtime.context import require_run
from rayflow._runtime.durations import parse_duration
from rayflow._runtime.registry import register_defined_tasks
from rayflow._runtime.triggers import trigger_run, trigger_runs, wait_for_run
from rayflow.errors import InvalidArgument, ValidationError

T = TypeVar("T")
R = TypeVar("R")


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
        registry.define(self)

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
        return registry.code_fingerprint(self.fn)

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
            return await trigger_run(self.id, value, options, idempotency_key, tags)

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
            return await trigger_runs(self.id, values, options, keys, tags)

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
        await registry.register(self)

    def resolve_payload_type(self) -> None:
        """Resolve a payload annotation that named something defined later in
        its module (done at registration, when the module is complete)."""
        if _unresolved(self.payload_type):
            self.payload_type = _payload_type(self.fn)

    async def __call__(self, payload: T) -> R:
        """Call the function directly, in this process (no run is created)."""
        return await self.fn(payload)


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
    return Response(lambda: trigger_runs(task_id, list(payloads), options, keys, tags))


def _options(max_duration: float | str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if max_duration is not None:
        options["max_duration_s"] = parse_duration(max_duration)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ValidationError("metadata must be a JSON object (a dict)")
        options["metadata"] = to_jsonable_python(metadata)
    return options


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
    runs_per_actor: int | None = None,
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
    runs_per_actor: int | None = None,
) -> Any:
    """Declare an `async def` function as a task.

    `id` names it (default: the function name) — keep it stable, runs and
    HTTP triggers refer to it. `retry` (int or RetryPolicy) retries failed
    attempts with backoff; `max_duration` ("5m", seconds) ends a run as
    TIMED_OUT; `num_cpus`/`num_gpus`/`memory`/`resources` are given to the
    run's Ray actor. Up to `runs_per_actor` runs (default 1000) share one
    actor's event loop, each with its own context, streams, inputs and
    metadata (imported modules are shared): do not block the loop;
    `runs_per_actor=1` (the default with resources) gives a run a process.
    `inputs` lists input streams the task receives on that its own code
    does not name (e.g. used in a helper function); those it names are
    found by themselves. Their types are checked at the HTTP edge
    (a wrong send is a 422 and is not stored). Code in a task that may
    suspend must be deterministic between durable operations (see `step`).
    """

    if runs_per_actor is not None and (type(runs_per_actor) is not int or runs_per_actor < 1):
        raise InvalidArgument(f"runs_per_actor must be a whole number >= 1, not {runs_per_actor!r}")

    def wrap(f: Callable[[T], Awaitable[R]]) -> Task[T, R]:
        placement = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "memory": memory,
            "resources": resources,
            # the pool's shape: actors of this capacity (`pool.capacity_of`)
            "runs_per_actor": runs_per_actor,
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
    return Response(lambda: trigger_run(task_id, payload, options, idempotency_key, tags))


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
    "register_defined_tasks",
    "wait_for_run",
]
