"""Output streams (and input streams): the handles a user defines and calls.

`define(id, type)` gives an `OutputStream[T]`; the module functions
(`append`, `read`, `pipe`, `writer`) do the same by key, for untyped use.
A stream is `(run id, key)`; chunks are numbered 0, 1, 2, … in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Generic, TypeVar

from rayflow._response import Response, portal, run_sync
from rayflow._runtime import connection, stream_journal
from rayflow._runtime.codec import Codec, type_name
from rayflow._runtime.context import resolve_target
from rayflow._runtime.pipe import Pipe, each
from rayflow._runtime.reader import ChunkReader
from rayflow._runtime.stream_rows import Row
from rayflow._runtime.stream_writers import close_stream, default_writer, new_writer
from rayflow._runtime.writer import ChunkWriter
from rayflow.errors import InvalidArgument
from rayflow.inputs import InputStream

T = TypeVar("T")

DEFAULT_KEY = "default"


class StreamReader(Generic[T]):
    """Chunks of one stream from `start_index` on, then live ones, until the
    stream closes or `timeout_s` passes without a chunk. Iterate with `for`
    (blocking) or `async for`."""

    def __init__(self, reader: ChunkReader, codec: Codec[T]) -> None:
        self._reader, self._codec = reader, codec

    async def __aiter__(self) -> AsyncIterator[T]:
        async for rows in self._reader.batches():
            for row in rows:
                yield self._codec.decode(row[1])

    def __iter__(self) -> Iterator[T]:
        batches = self._reader.batches()
        try:
            while True:
                try:
                    rows: list[Row] = run_sync(batches.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
                for row in rows:
                    yield self._codec.decode(row[1])
        finally:
            run_sync(batches.aclose())  # type: ignore[attr-defined]

    @property
    def next_index(self) -> int:
        """The index of the next chunk this reader would yield (to resume)."""
        return self._reader.next_index


#: chunks a writer holds written but not yet durable before `drain()` waits
#: (and `merge()` stops taking values): bounds its memory and, under a flood,
#: how long a chunk queues between `write()` and its readers
MAX_IN_FLIGHT = 64


class StreamWriter(Generic[T]):
    """`async with stream.writer() as w:` — `w.write(x)` queues a chunk (no
    await), `w.merge(aiter)` pipes an iterable in the background; leaving
    the block waits until everything is durable and raises the first error.

    Flow control, as `asyncio.StreamWriter`: a loop that writes faster than
    chunks become durable calls `await w.drain()` now and then; it waits
    while more than `max_in_flight` written chunks are not durable yet.

    Inside a task each `wait()` (leaving the block without an error is one)
    completes a segment, journaled: a replay of a completed segment writes
    nothing and does not iterate what it merges (its sources are created by
    your code, never consumed). Writes of your own loop run again on replay
    (they are your code) and are dropped; `merge` a model's tokens to call
    the model once."""

    def __init__(self, codec: Codec[T], writer: ChunkWriter, max_in_flight: int) -> None:
        if max_in_flight < 0:
            raise InvalidArgument(f"max_in_flight must be 0 or more, not {max_in_flight}")
        self._codec, self._writer = codec, writer
        self.max_in_flight = max_in_flight
        #: one future per written chunk, oldest first (they resolve in order)
        self._writes: deque[asyncio.Future[Any]] = deque()
        self._merges: list[asyncio.Future[None]] = []
        #: the segment `wait()` completes next, and its journaled outcome when
        #: a replay meets one that completed
        self._segment = 0
        self._recorded = self._completed()
        self._awaited: asyncio.Event | None = None

    def _completed(self) -> dict[str, Any] | None:
        journal = self._writer.journal
        recorded = (
            stream_journal.completion(journal, self._writer.writer_id, self._segment)
            if journal is not None
            else None
        )
        self._writer.skipping = recorded is not None
        return recorded

    @property
    def in_flight(self) -> int:
        """Chunks written and not yet known to be durable."""
        return sum(1 for f in self._writes if not f.done())

    def write(self, value: T) -> None:
        if self._recorded is not None:
            return  # a replay of a completed segment: nothing is written
        self._writes.append(self._writer.write(self._codec.encode(value)))

    async def drain(self) -> None:
        """Wait until at most `max_in_flight` written chunks are not yet
        durable. Raises the error of a write it waited for (`StreamClosed`,
        `RunFinished`, …)."""
        writes = self._writes
        while writes and (writes[0].done() or len(writes) > self.max_in_flight):
            await writes.popleft()

    def merge(self, source: AsyncIterable[T] | Iterable[T]) -> None:
        """Write every value of `source` in the background (see the class)."""
        if self._recorded is not None:
            return  # a replay of a completed segment: the source is not consumed
        if self._awaited is None:
            self._awaited = asyncio.Event()
        self._merges.append(asyncio.ensure_future(self._merge(source, self._awaited)))

    async def _merge(self, source: AsyncIterable[T] | Iterable[T], awaited: asyncio.Event) -> None:
        writer = self._writer
        async for value in each(source):
            if writer.journal is not None:
                end = writer.position + 1
                await stream_journal.admit(writer.journal, writer.writer_id, end, awaited)
            self.write(value)
            if len(self._writes) > self.max_in_flight:
                await self.drain()

    async def wait(self) -> None:
        """Wait until everything written and merged so far is durable; inside
        a task this completes a segment (journaled, see the class)."""
        await self._wait(completes=True)

    async def _wait(self, *, completes: bool) -> None:
        writer = self._writer
        if self._recorded is not None:
            writer.advance_to(int(self._recorded["position"]))
            self._segment += 1
            self._recorded = self._completed()
            return
        if self._awaited is not None:
            self._awaited.set()
            self._awaited = None
        while self._merges:
            merges, self._merges = self._merges, []
            await asyncio.gather(*merges)
        writes, self._writes = list(self._writes), deque()
        await asyncio.gather(*writes)
        await writer.flush()
        if completes and writer.journal is not None:
            outcome = {"position": writer.position}
            await stream_journal.complete(writer.journal, writer.writer_id, self._segment, outcome)
            self._segment += 1
            self._recorded = self._completed()

    async def __aenter__(self) -> StreamWriter[T]:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        # a block left by an error (or a suspension) did not complete: a
        # replay runs it again, bounded by what the journal recorded
        await self._wait(completes=exc_type is None)


class OutputStream(Generic[T]):
    """A typed output stream handle: `streams.define("ai-output", str)`.

    Inside a task the target defaults to the current run; outside a task pass
    `target=<run id>`. Chunks are validated against the type before anything
    is stored (`ValidationError`).
    """

    def __init__(self, id: str, type: Any = Any) -> None:
        self.id = id
        self.type = type
        self._codec: Codec[T] = Codec(id, type)

    def __reduce__(self) -> tuple[Any, ...]:
        return (OutputStream, (self.id, self.type))

    def __repr__(self) -> str:
        return f"OutputStream({self.id!r}, {type_name(self.type)})"

    def append(self, value: T, *, target: str | None = None) -> Response[int]:
        """Append one chunk; resolves to its index once it is durable.

        Raises `ValidationError` (wrong type), `StreamTooLarge`, `RunFinished`,
        `RunNotFound`. Remember to await it (or call `.result()`): an
        un-awaited append does nothing.
        """
        data = self._codec.encode(value)

        async def go() -> int:
            seq = await default_writer(self.id, target).write(data)
            return -1 if seq is None else seq

        return Response(go)

    def pipe(self, source: AsyncIterable[T] | Iterable[T], *, target: str | None = None) -> Pipe[T]:
        """Append every value of a sync or async iterable, in the background;
        `await pipe.wait_until_complete()` returns the count once all are durable.

        Inside a task the completion is journaled: a replay (a revived run)
        that reaches a completed pipe returns the recorded count at once and
        never iterates `source` — your code creates the generator object, the
        pipe does not start it, so a model is called once per pipe however
        often the run suspends afterwards; `pipe.stream` then yields the
        chunks the pipe stored. A pipe cut by a crash before it completed
        restarts its source: the chunks committed before the crash stay, the
        rest come from the new attempt."""
        pipe: Pipe[T] = _in_loop(lambda: Pipe(self._codec, new_writer(self.id, target), source))
        return pipe

    def writer(
        self, *, target: str | None = None, max_in_flight: int = MAX_IN_FLIGHT
    ) -> StreamWriter[T]:
        """A writer for `write()`/`merge()`; use with `async with`.
        `max_in_flight`: how many written chunks may wait to become durable
        before `drain()` waits (see StreamWriter)."""
        return StreamWriter(self._codec, new_writer(self.id, target), max_in_flight)

    def read(
        self, run_id: str, *, start_index: int = 0, timeout_s: float | None = 60.0
    ) -> StreamReader[T]:
        """Read the run's chunks from `start_index` (history first, then live).

        Ends when the stream is closed (the run finished or it was closed
        explicitly) or after `timeout_s` without a new chunk (None: never).
        Raises `RunNotFound` on the first iteration for an unknown run.
        """
        return StreamReader(ChunkReader(run_id, self.id, start_index, timeout_s), self._codec)

    def close(self, *, target: str | None = None) -> Response[None]:
        """Mark the stream finished: readers end once they have read it all."""

        async def go() -> None:
            await default_writer(self.id, target).flush()
            await close_stream(resolve_target(target), self.id)

        return Response(go)


def _in_loop(make: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return portal().call(make)
    return make()


_untyped: dict[str, OutputStream[Any]] = {}


def _by_key(key: str) -> OutputStream[Any]:
    if key not in _untyped:
        _untyped[key] = OutputStream(key, Any)
    return _untyped[key]


def define(id: str, type: type[T] | Any = Any) -> OutputStream[T]:
    """Define a typed output stream (`id` is the stream key)."""
    return OutputStream(id, type)


_NO_VALUE: Any = object()


def append(key: str | Any, value: Any = _NO_VALUE, *, target: str | None = None) -> Response[int]:
    """Append a JSON value to stream `key` of the target run (see
    OutputStream.append). `append(value)` writes to the "default" stream:
    with one positional argument, that argument is the value."""
    if value is _NO_VALUE:
        key, value = DEFAULT_KEY, key
    return _by_key(key).append(value, target=target)


def read(
    run_id: str, key: str = DEFAULT_KEY, *, start_index: int = 0, timeout_s: float | None = 60.0
) -> StreamReader[Any]:
    """Read stream `key` of a run (see OutputStream.read)."""
    return _by_key(key).read(run_id, start_index=start_index, timeout_s=timeout_s)


def pipe(
    key: str | AsyncIterable[Any] | Iterable[Any],
    source: AsyncIterable[Any] | Iterable[Any] | None = None,
    *,
    target: str | None = None,
) -> Pipe[Any]:
    """Pipe an iterable into stream `key` (see OutputStream.pipe);
    `pipe(source)` pipes into the "default" stream."""
    if source is None:
        if isinstance(key, str):
            raise TypeError(
                "streams.pipe(source) needs an iterable to pipe; to pipe into stream"
                f" {key!r} call streams.pipe({key!r}, source)"
            )
        key, source = DEFAULT_KEY, key
    if not isinstance(key, str):
        raise TypeError(f"the stream key must be a string, got {type(key).__name__}")
    return _by_key(key).pipe(source, target=target)


def writer(
    key: str = DEFAULT_KEY, *, target: str | None = None, max_in_flight: int = MAX_IN_FLIGHT
) -> StreamWriter[Any]:
    """A writer for stream `key` (see OutputStream.writer)."""
    return _by_key(key).writer(target=target, max_in_flight=max_in_flight)


def input(id: str, type: type[T] | Any = Any) -> InputStream[T]:
    """Define a typed input stream: data sent into running tasks."""
    return InputStream(id, type)


def send(
    run_id: str, stream_id: str, data: Any, *, idempotency_key: str | None = None
) -> Response[None]:
    """Send JSON `data` to input stream `stream_id` of a run (untyped; see
    InputStream.send)."""
    return InputStream(stream_id, Any).send(run_id, data, idempotency_key=idempotency_key)


def list_streams(run_id: str) -> Response[list[dict[str, Any]]]:
    """The run's output streams: key, length, size, closed."""

    async def go() -> list[dict[str, Any]]:
        conn = connection.current()
        infos = await asyncio.to_thread(conn.store.list_streams, run_id)
        return [
            {"key": i.key, "length": i.length, "size_bytes": i.size_bytes, "closed": i.closed}
            for i in infos
        ]

    return Response(go)


__all__ = [
    "DEFAULT_KEY",
    "InputStream",
    "input",
    "send",
    "OutputStream",
    "Pipe",
    "StreamReader",
    "StreamWriter",
    "append",
    "define",
    "list_streams",
    "pipe",
    "read",
    "writer",
]
