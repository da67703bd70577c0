"""A session's streams from anywhere: send to its input (waking or continuing
its run), append to its output, read records by sequence number.

A session's streams are named JSON streams (`store/named.py`), one message
per record, so a record's sequence number is its position, from 0 — what
the SDK's S2 records carry as `seq_num`, monotonic across the session's runs:

- `sessions/<id>/in`, `sessions/<id>/out`;
- `sessions/<id>/channels/<name>/in`, `.../out` (side channels: created on
  first write, sliding TTL `CHANNEL_TTL_S`; their input wakes no run).

What a record holds: on an input stream, the value sent; on an output
stream, `{"data": value, "id": part id}` (a data record: exactly the S2
body the SDK writes) or `{"headers": [[name, value], …]}` (a control record,
e.g. `trigger-control: turn-complete`, whose S2 body is empty).
`S2Record.to_wire()` is the record as the HTTP API serves it. Reading them
(from the Store, woken by the change feed, pushed by a live run's RunActor)
is `session_reads`.

Invariant: a send to `.in` and the decision it causes — wake the session's
waiting run, or continue the session with a fresh run when its run ended —
commit in one transaction under the session row's lock
(`Store.session_send`); the run is launched (or the live one poked) after.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic_core import to_jsonable_python

from rayflow._runtime import (
    connection,
    hops,
    locations,
    named_appender,
    named_tails,
    session_runs,
    session_writer,
)
from rayflow._runtime.calls import call
from rayflow._runtime.context import current_run
from rayflow.errors import InvalidArgument, PayloadTooLarge, RayflowError, SessionNotFound
from rayflow.store.named import (
    NamedOutcome,
    NamedStreamSpec,
    NamedWrite,
    NamedWriteResult,
    Producer,
)

IO = Literal["in", "out"]
JSON_TYPE = "application/json"
#: a side channel's streams expire this long after their last read or write
CHANNEL_TTL_S = 7 * 24 * 3600
#: a waiting reader also reads the Store this often: a lost wake-up delays
#: a record by at most this, never forever
REREAD_S = 2.0
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass
class S2Record:
    """A session record as the SDK's S2 reader sees it."""

    seq_num: int
    timestamp: int  # ms
    body: str
    headers: list[list[str]] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "seq_num": self.seq_num,
            "timestamp": self.timestamp,
            "body": self.body,
            "headers": self.headers,
        }

    @property
    def control(self) -> str | None:
        """The `trigger-control` subtype of a control record, else None."""
        return next((v for n, v in self.headers if n == "trigger-control"), None)

    @property
    def command(self) -> str | None:
        """The S2 command (`trim`) of a command record (first header's name
        empty), else None; readers skip these."""
        if self.headers and self.headers[0][0] == "":
            return self.headers[0][1]
        return None

    def value(self) -> Any:
        """A data record's value (the `data` of its envelope); None for a
        control record."""
        if not self.body:
            return None
        return json.loads(self.body)["data"]


@dataclass
class RecordPage:
    session_id: str
    records: list[S2Record]
    #: the seq the next record will get (S2's tail)
    tail: int
    closed: bool


@dataclass
class SentRecord:
    seq: int
    session_id: str
    #: the session's run after the send: the one it woke or created, or the live one
    run_id: str | None
    #: a fresh run was created for this record (the session's run had ended)
    continued: bool = False
    #: the session's suspended run was queued for this record
    woke: bool = False


def check_channel(name: str | None) -> None:
    if name is not None and not _CHANNEL_NAME.match(name):
        raise InvalidArgument(
            f"invalid session channel name {name!r}: use 1-128 characters of [A-Za-z0-9._-]"
        )


def session_stream_path(session_id: str, io: IO, channel: str | None = None) -> str:
    if io not in ("in", "out"):
        raise InvalidArgument(f"a session stream is 'in' or 'out', not {io!r}")
    check_channel(channel)
    if channel is None:
        return f"sessions/{session_id}/{io}"
    return f"sessions/{session_id}/channels/{channel}/{io}"


def encode(value: Any, what: str) -> bytes:
    """A record's JSON text, refused past the 1 MiB limit (nothing stored)."""
    try:
        data = json.dumps(to_jsonable_python(value), separators=(",", ":")).encode()
    except Exception as e:
        raise InvalidArgument(f"{what}: the value is not JSON-serialisable: {e}") from None
    limit = connection.current().settings.max_input_bytes
    if len(data) > limit:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes; the limit is {limit} bytes")
    return data


def s2_record(seq: int, data: bytes | str, created_at: int) -> S2Record:
    """The record stored at `seq` (its JSON text) as S2 shows it."""
    stored = json.loads(data)
    if isinstance(stored, dict) and "headers" in stored and "data" not in stored:
        return S2Record(seq, created_at, "", [list(h) for h in stored["headers"]])
    return S2Record(seq, created_at, data if isinstance(data, str) else data.decode())


def envelope(value: Any, part_id: str | None) -> dict[str, Any]:
    """A data record as stored (and as the S2 body): `{"data", "id"}`."""
    return {"data": to_jsonable_python(value), "id": part_id or uuid.uuid4().hex}


# -- writing --------------------------------------------------------------------
async def send_input(
    id_or_external: str,
    value: Any,
    *,
    channel: str | None = None,
    idempotency_key: str | None = None,
) -> SentRecord:
    """Store `value` as the next record of the session's input (or a
    channel's) and, for `.in`, wake or continue its run in the same
    transaction. Raises SessionNotFound, SessionClosed, PayloadTooLarge,
    InvalidArgument."""
    session = await session_runs.get_session(id_or_external)
    path = session_stream_path(session.id, "in", channel)
    data = encode(envelope(value, idempotency_key), f"the record for {path}")
    conn = connection.current()
    next_run = None if channel is not None else await session_runs.next_run_factory(session)
    sent = await asyncio.to_thread(
        conn.store.session_send,
        session.id,
        NamedWrite(path, [data], JSON_TYPE),
        conn.settings.max_stream_bytes,
        wakes=channel is None,
        next_run=next_run,
        send_key=idempotency_key,
        ttl_s=CHANNEL_TTL_S if channel is not None else None,
        send_key_window_ms=int(conn.settings.session_send_key_ttl_s * 1000),
    )
    _check(sent.result, path)
    assert sent.seq is not None
    if hops.enabled():
        hops.mark("stored", [hops.named_id(path, sent.seq)])
    run_id, queued = sent.run_id, sent.continued or sent.woke
    if queued is not None:
        await session_runs.launch(queued)
    elif run_id is not None and not sent.duplicate:
        await poke(run_id, [path])
        if hops.enabled():
            hops.mark("poked", [hops.named_id(path, sent.seq)])
    return SentRecord(sent.seq, session.id, run_id, sent.continued is not None, bool(sent.woke))


async def append_output(
    id_or_external: str, value: Any, *, channel: str | None = None, part_id: str | None = None
) -> int:
    """Append a data record (`{"data": value, "id": part_id}`) to the
    session's output (or a channel's); returns its seq once durable."""
    return await _append(id_or_external, "out", envelope(value, part_id), channel)


async def append_control(
    id_or_external: str,
    subtype: str,
    headers: list[tuple[str, str]] | tuple[()] = (),
    *,
    channel: str | None = None,
) -> int:
    """Append a control record (`trigger-control: subtype` plus `headers`)."""
    record = {"headers": [["trigger-control", subtype], *[[n, v] for n, v in headers]]}
    return await _append(id_or_external, "out", record, channel)


async def trim_output(id_or_external: str, earliest: int, *, channel: str | None = None) -> int:
    """S2's trim (the SDK's `session.out.trimTo`): append a trim command
    record (`headers [["", "trim"]]`) to the session's `.out` (or a
    channel's) and delete the records before `earliest` — never past the
    stream's tail, never back (a trim below an earlier one deletes nothing
    but still takes a seq). A reader asking for a trimmed seq starts at the
    first record left, as S2 clamps. Returns the trim record's seq (-1
    inside a run when a replay did not trim again: it trimmed before)."""
    if isinstance(earliest, bool) or not isinstance(earliest, int) or earliest < 0:
        raise InvalidArgument(f"a trim point is a seq_num, 0 or more, not {earliest!r}")
    session_id = await session_runs.session_id_of(id_or_external)
    path = session_stream_path(session_id, "out", channel)
    # numbered with the run's appends to the stream: a replay makes no
    # second trim record (skipped, or a duplicate after a crash)
    return await _written(
        path,
        lambda producer: trim_encoded(path, earliest, channel, producer, gaps=producer is not None),
    )


async def trim_encoded(
    path: str, earliest: int, channel: str | None, producer: Producer | None, *, gaps: bool = False
) -> NamedWriteResult:
    """Append the trim command record of `earliest` to a session stream and
    trim it there (one transaction), with `producer`'s stamp as
    `append_encoded` (a stamp stored before trims nothing again)."""
    data = encode({"headers": [["", "trim"]], "trim": earliest}, f"the trim of {path}")
    conn = connection.current()
    write = NamedWrite(path, [data], JSON_TYPE, producer=producer, producer_gaps=gaps)
    max_bytes = conn.settings.max_stream_bytes
    result = await asyncio.to_thread(conn.store.named_trim, write, earliest, max_bytes)
    if result.outcome is NamedOutcome.MISSING:  # nothing written yet: created now
        await _create(path, channel)
        result = await asyncio.to_thread(conn.store.named_trim, write, earliest, max_bytes)
    _check(result, path)
    if current_run() is not None:
        # the trim record is a row like any: the run's pushed tail stays whole
        named_tails.tails().learned(path, result, [data])
    return result


async def _append(id_or_external: str, io: IO, record: Any, channel: str | None) -> int:
    """-1 when nothing was stored: inside a run, a replay's append of a
    record stored before (`session_writer`: skipped without I/O before the
    run's last suspension, a duplicate in the Store after a crash)."""
    session_id = await session_runs.session_id_of(id_or_external)
    path = session_stream_path(session_id, io, channel)
    data = encode(record, f"the record for {path}")
    return await _written(
        path,
        lambda producer: append_encoded(path, data, channel, producer, gaps=producer is not None),
    )


async def _written(
    path: str, write: Callable[[Producer | None], Awaitable[NamedWriteResult]]
) -> int:
    """`write` the record outside a run (no stamp), or inside one through the
    run's writer of `path` (stamped: skipped on replay, a duplicate after a
    crash); its seq, -1 when nothing was stored."""
    ctx = current_run()
    if ctx is None:
        result: NamedWriteResult | None = await write(None)
    else:
        result = await session_writer.writer_for(ctx, path).append(write)
    return -1 if result is None or result.start is None else result.start


async def append_encoded(
    path: str, data: bytes, channel: str | None, producer: Producer | None, *, gaps: bool = False
) -> NamedWriteResult:
    """Append one encoded record to a session stream (created on first
    write). `producer`: its stamp (a retry or replay with the same stamp
    stores nothing); `gaps`: its seqs may skip numbers (`NamedWrite.producer_gaps`)."""
    write = NamedWrite(path, [data], JSON_TYPE, producer=producer, producer_gaps=gaps)
    after = _pusher(path, data) if current_run() is not None else None
    result = await named_appender.write(write, after)
    if result.outcome is NamedOutcome.MISSING:
        await _create(path, channel)
        result = await named_appender.write(write, after)
    _check(result, path)
    if current_run() is not None:
        # readers elsewhere following this run are handed the row (`named_tails`)
        named_tails.tails().learned(path, result, [data])
        if hops.enabled() and result.start is not None:
            hops.mark("learned", [hops.named_id(path, result.start)])
    return result


def _pusher(path: str, data: bytes) -> named_appender.AfterCommit | None:
    """Inside a run: hands the committed record to the reader processes that
    follow `path` lately, from the commit thread (`named_tails.push`)."""
    targets = named_tails.tails().targets(path)
    if not targets:
        return None
    return lambda result: named_tails.push(targets, path, result, [data])


async def _create(path: str, channel: str | None) -> None:
    """Create a session stream on its first write, once the session is
    known to exist."""
    await session_runs.get_session(path.split("/")[1])
    ttl = CHANNEL_TTL_S if channel is not None else None
    conn = connection.current()
    await asyncio.to_thread(
        conn.store.named_create,
        NamedStreamSpec(path, JSON_TYPE, ttl_s=ttl),
        [],
        conn.settings.max_stream_bytes,
    )


def _check(result: NamedWriteResult, path: str) -> None:
    if result.outcome in (NamedOutcome.OK, NamedOutcome.DUPLICATE):
        return
    if result.outcome is NamedOutcome.TOO_LARGE:
        raise PayloadTooLarge(f"session stream {path} is full ({result.size} bytes)")
    if result.outcome in (NamedOutcome.MISSING, NamedOutcome.GONE):
        raise SessionNotFound(f"session stream {path} does not exist (expired?)")
    raise RayflowError(f"session stream {path}: the Store answered {result.outcome.value}")


async def poke(run_id: str, paths: list[str]) -> None:
    """Tell the run's live RunActor that `paths` changed (its readers then
    read the Store). Best effort: a reader reads again every REREAD_S."""
    for _ in range(2):
        try:
            _, actor = await locations.locate(run_id)
            if actor is None:
                return
            if await call(actor.session_changed.remote(run_id, paths)):
                return
            locations.forget(run_id, actor)
        except RayflowError:
            return  # e.g. RunNotFound: nothing to poke
        except Exception:
            locations.forget(run_id)
