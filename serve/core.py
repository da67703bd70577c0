"""The HTTP app's one door into rayflow: every call to the runtime is here.

Reads (runs, stream chunks, input logs) go to the Store — the source of
truth, and stateless, so any number of replicas serve them. Writes (trigger,
cancel, append, send) go through rayflow's public API, which routes them to
the Controller, the RunActor or the Inbox.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from rayflow._runtime import serving
from rayflow._runtime.serving import Connection, current
from rayflow.errors import PayloadTooLarge, RunNotFound, TooManyRequests, WaitTokenNotFound
from rayflow.store.base import ChunkWrite, RunRecord, StreamInfo, WaitTokenRecord
from serve.deps import MAX_INDEX
from serve.errors import BadRequest
from serve.fanout import HubSource
from serve.sources import StoreSource, input_reader
from serve.sse import RecordSource

#: `<created ms>:<run id>`, as `list_runs` returns it
_CURSOR = re.compile(r"[0-9]{1,16}:[A-Za-z0-9_\-]{1,64}")


#: an input log read over SSE (tools and tests; a task receives its messages
#: pushed) polls the Store from every INPUT_POLL_S up to every INPUT_MAX_POLL_S
#: while idle: two reads a second at most, not 20-200
INPUT_POLL_S, INPUT_MAX_POLL_S = 0.05, 1.0


def _conn() -> Connection:
    return current()


async def get_run(run_id: str) -> RunRecord:
    run = await asyncio.to_thread(_conn().store.get_run, run_id)
    if run is None:
        raise RunNotFound(
            f"run {run_id} not found; check the id (finished runs are deleted after retention)",
            run_id=run_id,
        )
    return run


async def retrieve_with_relations(
    run_id: str,
) -> tuple[RunRecord, RunRecord | None, RunRecord | None, list[RunRecord]]:
    store = _conn().store
    run = await get_run(run_id)
    parent = await asyncio.to_thread(store.get_run, run.parent_id) if run.parent_id else None
    root = await asyncio.to_thread(store.get_run, run.root_id) if run.root_id else None
    children = await asyncio.to_thread(store.list_runs, parent_id=run_id, limit=100)
    return run, parent, root, children


async def list_runs(
    *,
    statuses: list[str] | None,
    task_ids: list[str] | None,
    limit: int,
    after: str | None,
    tags: list[str] | None = None,
    batch_id: str | None = None,
) -> tuple[list[RunRecord], str | None]:
    """Newest first; the cursor `<created ms>:<run id>` names the last run
    returned (runs created in one millisecond are ordered by id)."""
    store = _conn().store
    ms, _, before_id = (after or "").partition(":")
    before = None
    if after:
        if not _CURSOR.fullmatch(after) or int(ms) >= MAX_INDEX:
            shown = after if len(after) <= 40 else after[:40] + f"… ({len(after)} characters)"
            raise BadRequest(f"page[after] is not a cursor this API returned: {shown!r}")
        before = int(ms)
    task_id = task_ids[0] if task_ids and len(task_ids) == 1 else None
    runs = await asyncio.to_thread(
        store.list_runs,
        statuses=statuses,
        task_id=task_id,
        limit=limit,
        before_created_at=before,
        before_id=before_id or None,
        tags=tags,
        batch_id=batch_id,
    )
    cursor = f"{runs[-1].created_at}:{runs[-1].id}" if len(runs) == limit else None
    if task_ids and task_id is None:
        runs = [r for r in runs if r.task_id in task_ids]
    return runs, cursor


async def trigger(task_id: str, payload: Any, options: dict[str, Any]) -> tuple[str, bool]:
    """Start a run; returns (run id, whether an idempotency key found an old run).

    `options` are a trigger's options as on the wire (camelCase names)."""
    import rayflow

    tags = options.get("tags")
    handle = await rayflow.trigger(
        task_id,
        payload,
        idempotency_key=options.get("idempotencyKey"),
        tags=[tags] if isinstance(tags, str) else tags,
        max_duration=options.get("maxDuration"),
        metadata=options.get("metadata"),
    )
    return handle.id, handle.is_cached


async def cancel(run_id: str) -> None:
    import rayflow

    await get_run(run_id)
    await rayflow.runs.cancel(run_id)


async def append(run_id: str, key: str, text: str, record_id: str | None) -> None:
    """Append one string chunk to a run's output stream from outside the run.

    The replica numbers its appends to each stream as one writer: when the
    RunActor dies after storing a chunk, the retry that goes to the Store is
    recognised as the same write instead of being stored twice."""
    await serving.append_chunk(run_id, key, dumps(text), record_id)


async def check_open(run_id: str, key: str) -> None:
    """Raise StreamClosed when the run's stream `key` was closed: it takes no more chunks."""
    info = await asyncio.to_thread(_conn().store.stream_info, run_id, key)
    if info is not None and info.closed:
        raise serving.closed_error(run_id, key)


async def append_writes(run_id: str, key: str, writer: str, chunks: list[tuple[int, str]]) -> None:
    """Append JSON-text chunks numbered by their writer; a resent number is dropped."""
    writes = [ChunkWrite(text, writer_id=writer, writer_seq=seq) for seq, text in chunks]
    await serving.append_writes(run_id, key, writes)


async def writer_position(run_id: str, key: str, writer: str) -> int:
    await get_run(run_id)
    return await serving.writer_position(run_id, key, writer)


async def send_input(
    run_id: str, stream_id: str, data: Any, idempotency_key: str | None = None
) -> None:
    """Send `data` to the run's input stream `stream_id` (durable before it
    returns), within the run's input quotas (TooManyRequests, PayloadTooLarge);
    a send repeated with the same `idempotency_key` is stored once."""
    import rayflow

    conn = _conn()
    usage = await asyncio.to_thread(conn.store.inbox_usage, run_id)
    messages = sum(n for n, _ in usage.values())
    size = sum(b for _, b in usage.values()) + len(dumps(data))
    if messages >= conn.settings.max_input_messages_per_run:
        raise TooManyRequests(
            f"run {run_id} already holds {messages} input messages, its limit"
            " (RAYFLOW_MAX_INPUT_MESSAGES_PER_RUN); it takes no more",
            run_id=run_id,
            stream=stream_id,
        )
    if size > conn.settings.max_input_log_bytes_per_run:
        raise PayloadTooLarge(
            f"run {run_id}'s input messages would grow to {size} bytes, over its limit of"
            f" {conn.settings.max_input_log_bytes_per_run} (RAYFLOW_MAX_INPUT_LOG_BYTES_PER_RUN)",
            run_id=run_id,
            stream=stream_id,
        )

    await rayflow.streams.send(run_id, stream_id, data, idempotency_key=idempotency_key)


async def sent_before(run_id: str, stream_id: str, idempotency_key: str) -> bool:
    """Whether a send with this idempotency key is stored on the run's input stream."""
    message_id = serving.keyed_message_id(idempotency_key)
    found = await asyncio.to_thread(_conn().store.inbox_find, run_id, stream_id, message_id)
    return found is not None


async def stream_length(run_id: str, key: str) -> int:
    info = await asyncio.to_thread(_conn().store.stream_info, run_id, key)
    return info.length if info else 0


async def output_source(run_id: str, key: str, start: int | None) -> RecordSource:
    """Records of the run's stream `key` from `start` on (None: the current tail)."""
    await get_run(run_id)
    if start is None:
        start = await stream_length(run_id, key)
    return HubSource(run_id, key, start)


async def input_source(run_id: str, stream_id: str, start: int | None) -> RecordSource:
    """Messages sent to the run's input stream `stream_id`, from `start` on."""
    store = _conn().store
    await get_run(run_id)
    if start is None:
        usage = await asyncio.to_thread(store.inbox_usage, run_id)
        start = usage.get(stream_id, (0, 0))[0]

    async def is_closed() -> bool:
        run = await asyncio.to_thread(store.get_run, run_id)
        return run is None or run.finished

    return StoreSource(
        input_reader(store, run_id, stream_id),
        is_closed,
        start,
        poll_s=INPUT_POLL_S,
        max_poll_s=INPUT_MAX_POLL_S,
    )


async def task_ids() -> list[str]:
    return await asyncio.to_thread(_conn().store.list_task_ids)


async def run_streams(run_id: str) -> tuple[list[StreamInfo], list[tuple[str, int, bool]]]:
    """The run's output streams, and its input streams as (id, messages, waiting)."""
    store = _conn().store
    await get_run(run_id)

    def collect() -> tuple[list[StreamInfo], list[tuple[str, int, bool]]]:
        outputs = store.list_streams(run_id)
        wp = store.get_waitpoint(run_id)
        waiting_on = wp.stream_id if wp is not None and wp.status == "PENDING" else None
        usage = store.inbox_usage(run_id)
        ids = set(usage)
        if waiting_on:
            ids.add(waiting_on)
        inputs = [(i, usage.get(i, (0, 0))[0], i == waiting_on) for i in sorted(ids)]
        return outputs, inputs

    return await asyncio.to_thread(collect)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- wait tokens ------------------------------------------------------------------
def wait_token_signature(secret_key: str, token_id: str) -> str:
    return serving.wait_tokens.callback_signature(secret_key, token_id)


def wait_token_url(base_url: str, secret_key: str, token_id: str) -> str:
    return serving.wait_tokens.callback_url(base_url, secret_key, token_id)


async def get_wait_token(token_id: str) -> WaitTokenRecord:
    token = await asyncio.to_thread(_conn().store.get_wait_token, token_id)
    if token is None:
        raise WaitTokenNotFound(f"wait token {token_id} not found; check the id")
    return token


async def complete_wait_token(token_id: str, data: Any) -> None:
    """Complete the token (the first completion stands) and revive its waiters."""
    await serving.wait_tokens.complete(token_id, json.dumps(data))


async def list_wait_tokens(
    *,
    statuses: list[str] | None,
    tags: list[str] | None,
    idempotency_key: str | None,
    created_from: int | None,
    created_to: int | None,
    limit: int,
    after: str | None,
) -> tuple[list[WaitTokenRecord], str | None]:
    """Newest first; the cursor `<created ms>:<token id>` names the last one."""
    ms, _, before_id = (after or "").partition(":")
    if after is not None and (not ms.isdigit() or int(ms) >= MAX_INDEX or not before_id):
        raise BadRequest("page[after] is not a cursor this API returned")
    tokens = await asyncio.to_thread(
        _conn().store.list_wait_tokens,
        statuses=statuses,
        tags=tags,
        idempotency_key=idempotency_key,
        created_from=created_from,
        created_to=created_to,
        before=(int(ms), before_id) if after is not None else None,
        limit=limit,
    )
    cursor = f"{tokens[-1].created_at}:{tokens[-1].id}" if len(tokens) == limit else None
    return tokens, cursor
