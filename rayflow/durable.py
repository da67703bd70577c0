"""Durable operations: steps, time and randomness that replay identically.

A run that suspends (`.wait()`) or loses its actor runs its function again
from the top on revival. Everything done through these functions returns
its recorded outcome on that replay instead of running again, so:

- put I/O and expensive or non-deterministic work in a step;
- take time from `rayflow.now()` and randomness from `rayflow.random()`;
- keep the code between durable operations deterministic.
"""

from __future__ import annotations

import functools
import inspect
import random as _random
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from pydantic_core import to_jsonable_python

from rayflow._runtime.adapters import adapter_for
from rayflow._runtime.context import current_run, reset_run, set_run
from rayflow._runtime.journal import MISSING

P = ParamSpec("P")
R = TypeVar("R")


def step(name_or_fn: Any, fn: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` once per run and journal its result.

    Two forms: `await step("name", fn, *args)`, or the decorator `@step` /
    `@step("name")` which makes every call of an async function a step.

    On replay the recorded result is returned without calling `fn`. The
    result must be JSON-serialisable (pydantic models are dumped; on replay
    they come back as dicts unless `fn` is annotated with a return type, in
    which case they are validated back into it). `fn` may be sync or async.
    Outside a task it simply calls `fn`. An exception is not journaled: the
    step runs again on the next attempt. Step names need not be unique; the
    journal matches steps by order and checks the name.
    """
    if callable(name_or_fn):
        return _decorate(name_or_fn, None)
    if fn is None:
        return lambda f: _decorate(f, name_or_fn)
    return _run_step(name_or_fn, fn, *args, **kwargs)


async def _run_step(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    ctx = current_run()
    if ctx is None:
        result = fn(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result
    # the body writes as writers of its own: a replay skips it, and the
    # writes after it must keep their numbers (`stream_journal`)
    inner = ctx.for_step()
    recorded = ctx.journal.replay("step", name)
    if recorded is not MISSING:
        return _revive(fn, recorded)
    token = set_run(inner)
    try:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    finally:
        reset_run(token)
    await ctx.journal.record("step", name, to_jsonable_python(result))
    return result


def _revive(fn: Callable[..., Any], value: Any) -> Any:
    try:
        annotation = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return value
    if annotation is inspect.Signature.empty or isinstance(annotation, str):
        return value
    return adapter_for(annotation).validate_python(value)


def _decorate(f: Callable[P, Awaitable[R]], name: str | None) -> Callable[P, Awaitable[R]]:
    @functools.wraps(f)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        result: R = await _run_step(name or f.__name__, f, *args, **kwargs)
        return result

    return run


async def now() -> float:
    """The time (seconds since the epoch), recorded so a replay sees the same."""
    return await _recorded("now", time.time)


async def random() -> float:
    """A random float in [0, 1), recorded so a replay sees the same."""
    return await _recorded("random", _random.random)


async def _recorded(kind: str, make: Callable[[], float]) -> float:
    ctx = current_run()
    if ctx is None:
        return make()
    recorded = ctx.journal.replay(kind, kind)
    if recorded is not MISSING:
        return float(recorded)
    value = make()
    await ctx.journal.record(kind, kind, value)
    return value
