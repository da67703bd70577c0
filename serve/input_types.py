"""Typed sends at the edge: an HTTP send must fit its input stream's type.

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
import logging
from typing import Any

import cloudpickle

from rayflow._runtime.serving import current

log = logging.getLogger("rayflow.serve")

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
