"""Task registration: which tasks this process defined, storing a task in the
Store (cloudpickled, with its defaults and stream schemas) through the
Controller, and registering tasks defined after `rayflow.init()` once their
module has finished importing.

A task is pickled by value when its module is user code a worker may not be
able to import; otherwise by reference.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable
from typing import Any

import cloudpickle
from pydantic import TypeAdapter

from rayflow._runtime import connection
from rayflow._runtime.calls import call

log = logging.getLogger("rayflow")


async def register(t: Any) -> None:
    """Store task `t` (a `rayflow.task.Task`) for this deployment, once per Store."""
    conn = connection.current()
    key = (conn.store.url, t.id)
    if _registered.get(key) is t:
        return
    t.resolve_payload_type()
    module = sys.modules.get(t.fn.__module__)
    if module is not None and _pickle_by_value(module):
        cloudpickle.register_pickle_by_value(module)
    t.inputs, t.outputs = _streams_of(t.fn, t._declared_inputs)
    blob = cloudpickle.dumps(t)
    defaults = {
        **t.defaults(),
        "source": t.source,
        "fingerprint": t.fingerprint,
        "inputs": {i: _schema(s.type) for i, s in t.inputs.items()},
        "outputs": {o: _schema(s.type) for o, s in t.outputs.items()},
    }
    earlier = await asyncio.to_thread(conn.store.get_task_defaults, t.id)
    _report_redefinition(t, earlier)
    await call(conn.controller.register_task.remote(t.id, blob, json.dumps(defaults)))
    _registered[key] = t


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


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """A hash of a task function's code. A library's wrapper (a chat agent)
    names the user's function it runs (`__rayflow_user_fn__`): its code is
    the version too, not only the shared wrapper's."""
    user_fn = getattr(fn, "__rayflow_user_fn__", None)
    text = "\n".join(_code_text(f) for f in (fn, user_fn) if f is not None)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _code_text(fn: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = fn.__code__
        return repr((code.co_code, code.co_consts, code.co_names))


_registered: dict[tuple[str, str], Any] = {}
#: every task defined in this process, by id (the latest definition wins)
_defined: dict[str, Any] = {}
#: set by `rayflow.init()`: this process defines tasks for the deployment, so
#: tasks it defines are registered (RunActors and Serve replicas never set it)
_auto_register = False


def define(t: Any) -> None:
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


def _report_redefinition(t: Any, earlier_defaults: str | None) -> None:
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


def _register_when_imported(t: Any) -> None:
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


def _register_now(t: Any) -> None:
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


def load(blob: bytes) -> Any:
    """A stored task, unpickled in a RunActor for one run, with classes of its own.

    cloudpickle hands a load the class object an earlier load made of the
    same by-value class for as long as that object lives (a cached
    TypeAdapter keeps it, or anything an earlier run left), so a class
    attribute one run set was seen by the next run on a recycled actor.
    Forgetting the earlier loads' classes first gives each run fresh ones,
    as it gets fresh module globals; within one load a class is still one
    object. Synchronous: no other load on the actor's loop runs meanwhile.
    """
    tracker = cloudpickle.cloudpickle
    with tracker._DYNAMIC_CLASS_TRACKER_LOCK:
        tracker._DYNAMIC_CLASS_TRACKER_BY_ID.clear()
    return cloudpickle.loads(blob)


def _pickle_by_value(module: Any) -> bool:
    """User code that a worker may not be able to import travels by value."""
    name = getattr(module, "__name__", "")
    if name == "__main__" or name.startswith("rayflow"):
        return False
    path = getattr(module, "__file__", None) or ""
    return not any(part in path for part in ("site-packages", "dist-packages")) and bool(
        os.path.basename(path)
    )
