"""Typed sends at the edge: an HTTP send must name an input stream its run
can receive on, and fit that stream's type.

Nothing of a send touches an actor before these checks: the stream id is
1–128 letters, digits, `_ . : -` (`check_stream_id`), and it is one of the
input streams the run's task records at registration (`check_receivable`,
from the task's stream schemas in the Store), so a made-up id is a 400 that
costs one Store read.

A task records the input streams it receives on when it is registered
(`Task.inputs`, found in its code or declared with `@task(inputs=[...])`),
pickled with the task in the Store. Before a send is stored, the route loads
the run's task here (cached by the pickled bytes' hash) and validates the data
with the stream's own pydantic type, so a wrong send is a 422 with
pydantic's message and nothing is stored. A stream the task does not declare
is not checked here (the task's typed receive still is: a message that does
not fit becomes a failed `Result`, never a failed run).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from typing import Any

import cloudpickle

from rayflow._runtime.serving import current
from rayflow.errors import InvalidArgument
from rayflow.store.base import RunRecord
from serve.errors import BadRequest

log = logging.getLogger("rayflow.serve")

#: the longest input stream id a request may name
MAX_STREAM_ID = 128
_STREAM_ID = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{MAX_STREAM_ID}}}")

#: task id -> (hash of its pickled bytes, its input streams by id)
_cache: dict[str, tuple[str, dict[str, Any]]] = {}
#: tasks whose pickle this replica could not load (logged once each)
_unloadable: set[str] = set()


def task_inputs(task_id: str) -> dict[str, Any]:
    """The input streams (InputStream handles) task `task_id` declares
    (blocking: run in a thread)."""
    blob = current().store.get_task(task_id)
    if blob is None:
        return {}
    digest = hashlib.sha256(blob).hexdigest()
    cached = _cache.get(task_id)
    if cached is not None and cached[0] == digest:
        return cached[1]
    try:
        task = cloudpickle.loads(blob)
    except Exception as e:  # its code cannot be loaded here: the task checks
        if task_id not in _unloadable:
            _unloadable.add(task_id)
            log.warning("task %r: cannot check input types at the edge: %s", task_id, e)
        return {}
    inputs: dict[str, Any] = dict(getattr(task, "inputs", {}) or {})
    _cache[task_id] = (digest, inputs)
    return inputs


async def validate_send(task_id: str, stream_id: str, data: Any) -> None:
    """Raise `ValidationError` (422) when `data` does not fit input stream
    `stream_id` of the task."""
    inputs = await asyncio.to_thread(task_inputs, task_id)
    stream = inputs.get(stream_id)
    if stream is not None:
        stream._encode(data)  # raises rayflow.errors.ValidationError with pydantic's message


def check_stream_id(stream_id: str, run_id: str | None = None) -> None:
    """Raise BadRequest (400) unless `stream_id` is 1–128 letters, digits, `_ . : -`."""
    if not _STREAM_ID.fullmatch(stream_id):
        shown = stream_id if len(stream_id) <= 40 else stream_id[:40] + "…"
        raise BadRequest(
            f"streamId must be 1 to {MAX_STREAM_ID} letters, digits, '_', '.', ':' or '-';"
            f" got {shown!r} ({len(stream_id)} characters)",
            run_id=run_id,
        )


def declared_inputs(task_id: str) -> list[str] | None:
    """The ids of the input streams task `task_id` recorded at registration
    (None: registered before rayflow recorded them; blocking)."""
    defaults = current().store.get_task_defaults(task_id)
    if defaults is None:
        return []
    inputs = json.loads(defaults).get("inputs")
    return None if inputs is None else sorted(inputs)


async def check_receivable(run: RunRecord, stream_id: str) -> None:
    """Raise InvalidArgument (400) unless the run's task receives on input
    stream `stream_id`."""
    declared = await asyncio.to_thread(declared_inputs, run.task_id)
    if declared is None or stream_id in declared:
        return
    raise InvalidArgument(
        f"run {run.id} (task {run.task_id!r}) receives on no input stream {stream_id!r};"
        f" its input streams are {', '.join(declared) or 'none'}. A task receives on the"
        " input streams its code names and those listed in @task(inputs=[...])",
        run_id=run.id,
        stream=stream_id,
    )
