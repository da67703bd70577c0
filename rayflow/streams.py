"""Output streams (and input streams): the handles a user defines and calls.

`define(id, type)` gives an `OutputStream[T]`; the module functions
(`append`, `read`, `pipe`, `writer`) do the same by key, for untyped use.
A stream is `(run id, key)`; chunks are numbered 0, 1, 2, … in order.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Generic, TypeVar

import ray
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from rayflow._response import Response, portal, run_sync
from rayflow._runtime import connection, locations
from rayflow._runtime.adapters import adapter_for
from rayflow._runtime.calls import RunMoved, call
from rayflow._runtime.context import current_run, resolve_target
from rayflow._runtime.output import Row
from rayflow._runtime.reader import ChunkReader
from rayflow._runtime.writer import ChunkWriter
from rayflow.errors import ValidationError
from rayflow.inputs import InputStream

T = TypeVar("T")

DEFAULT_KEY = "default"


#: characters a JSON string cannot hold as they are (and lone surrogates)
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\ud800-\udfff]')


class _Codec(Generic[T]):
    """Validates chunks against the stream's type and turns them to JSON."""

    def __init__(self, key: str, type_: Any) -> None:
        self.key, self.type = key, type_
        self.adapter: TypeAdapter[Any] = adapter_for(type_)
        #: str and untyped streams take strings without pydantic when nothing
        #: in them needs escaping (same JSON text, a fraction of the cost)
        self._strings = type_ is str or type_ is Any
        self._list_adapter: TypeAdapter[list[Any]] | None = None

    def encode_many(self, values: list[Any]) -> list[str]:
        """`encode` for a batch: plain strings directly, the rest validated
        as one list by pydantic. Raises ValidationError naming the first bad one."""
        if self._strings:
            out: list[str] = []
            for v in values:
                if type(v) is str and _NEEDS_ESCAPE.search(v) is None:
                    out.append('"' + v + '"')
                else:
                    out.append(self.encode(v))
            return out
        if self.type is Any:
            return [self.encode(v) for v in values]
        if self._list_adapter is None:
            self._list_adapter = adapter_for(list[self.type])  # type: ignore[name-defined]
        try:
            typed = self._list_adapter.validate_python(values)
        except PydanticValidationError as e:
            raise ValidationError(
                f"chunk for stream {self.key!r} is not a valid {_type_name(self.type)}: {e}"
            ) from None
        return [self.adapter.dump_json(t).decode() for t in typed]

    def encode(self, value: Any) -> str:
        try:
            typed = self.adapter.validate_python(value)
        except PydanticValidationError as e:
            raise ValidationError(
                f"chunk for stream {self.key!r} is not a valid {_type_name(self.type)}: {e}"
            ) from None
        return self.adapter.dump_json(typed).decode()

    def decode(self, data: str) -> T:
        value: T = self.adapter.validate_json(data)
        return value


def _type_name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or repr(type_)


def _writer_for(key: str, target: str | None) -> ChunkWriter:
    """The default writer of this (run, key, target) in the current context.

    Inside a task its id is deterministic, so writes replayed after a
    revival are recognised and dropped. Outside, one writer per event loop.
    """
    run_id = resolve_target(target)
    ctx = current_run()
    if ctx is not None:
        cache: dict[Any, ChunkWriter] = ctx.__dict__.setdefault("_append_writers", {})
        key_ = (run_id, key)
        if key_ not in cache:
            cache[key_] = ChunkWriter(run_id, key, ctx.next_writer_id("append"))
        return cache[key_]
    writers = _loop_writers.setdefault(asyncio.get_running_loop(), {})
    key_ = (run_id, key)
    if key_ not in writers:
        writers[key_] = ChunkWriter(run_id, key)
    return writers[key_]


_loop_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, ChunkWriter]] = (
    weakref.WeakKeyDictionary()
)


def _new_writer(key: str, target: str | None) -> ChunkWriter:
    run_id = resolve_target(target)
    ctx = current_run()
    return ChunkWriter(run_id, key, ctx.next_writer_id("writer") if ctx is not None else None)


class StreamReader(Generic[T]):
    """Chunks of one stream from `start_index` on, then live ones, until the
    stream closes or `timeout_s` passes without a chunk. Iterate with `for`
    (blocking) or `async for`."""

    def __init__(self, reader: ChunkReader, codec: _Codec[T]) -> None:
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


class StreamWriter(Generic[T]):
    """`async with stream.writer() as w:` — `w.write(x)` queues a chunk (no
    await), `w.merge(aiter)` pipes an iterable in the background; leaving
    the block waits until everything is durable and raises the first error."""

    def __init__(self, codec: _Codec[T], writer: ChunkWriter) -> None:
        self._codec, self._writer = codec, writer
        self._futures: list[asyncio.Future[Any]] = []

    def write(self, value: T) -> None:
        self._futures.append(self._writer.write(self._codec.encode(value)))

    def merge(self, source: AsyncIterable[T] | Iterable[T]) -> None:
        self._futures.append(asyncio.ensure_future(self._merge(source)))

    async def _merge(self, source: AsyncIterable[T] | Iterable[T]) -> None:
        async for value in _aiter(source):
            self.write(value)

    async def wait(self) -> None:
        while self._futures:
            futures, self._futures = self._futures, []
            await asyncio.gather(*futures)
        await self._writer.flush()

    async def __aenter__(self) -> StreamWriter[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.wait()


async def _aiter(source: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[T]:
    if hasattr(source, "__aiter__"):
        async for value in source:
            yield value
    else:
        for i, value in enumerate(source):
            yield value
            if i % 64 == 63:
                await asyncio.sleep(0)  # let the committer run


#: most values a pipe takes from a sync iterable at once, and the longest it
#: keeps taking before it writes what it has (a slow generator is not held up)
PIPE_BATCH = 1024
PIPE_BATCH_S = 0.002


async def _batches(source: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[list[T]]:
    """The values of `source` in batches: a sync iterable in runs of up to
    PIPE_BATCH (or PIPE_BATCH_S), an async one value by value (its values
    arrive when they arrive; the writer coalesces whatever queues up)."""
    if hasattr(source, "__aiter__"):
        async for value in source:
            yield [value]
        return
    it = iter(source)
    while True:
        deadline = time.perf_counter() + PIPE_BATCH_S
        batch: list[T] = []
        for value in it:
            batch.append(value)
            if len(batch) >= PIPE_BATCH or time.perf_counter() >= deadline:
                break
        if not batch:
            return
        yield batch
        await asyncio.sleep(0)  # let the committer and the tees run


class Pipe(Generic[T]):
    """A running pipe: `.stream` tees the values locally as they pass,
    `await wait_until_complete()` returns once all of them are durable.

    Values are taken, encoded and written in batches: one future and one
    group commit per batch, not per value."""

    def __init__(self, codec: _Codec[T], writer: ChunkWriter, source: Any) -> None:
        self._codec, self._writer = codec, writer
        self._tees: list[asyncio.Queue[tuple[bool, Any]]] = []
        self._count = 0
        self._task = asyncio.ensure_future(self._run(source))

    async def _run(self, source: AsyncIterable[T] | Iterable[T]) -> int:
        futures: list[asyncio.Future[Any]] = []
        count = 0
        try:
            async for values in _batches(source):
                if len(values) == 1:
                    futures.append(self._writer.write(self._codec.encode(values[0])))
                else:
                    try:
                        datas = self._codec.encode_many(values)
                    except ValidationError:
                        # as without batching: the values before the bad one are written
                        for value in values:
                            futures.append(self._writer.write(self._codec.encode(value)))
                    else:
                        futures.append(self._writer.write_many(datas))
                count += len(values)
                for q in self._tees:
                    for value in values:
                        q.put_nowait((False, value))
        finally:
            for q in self._tees:
                q.put_nowait((True, None))
        await asyncio.gather(*futures)
        await self._writer.flush()
        return count

    @property
    def stream(self) -> AsyncIterator[T]:
        """The piped values as they pass (a local tee; take it right after pipe())."""
        q: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        self._tees.append(q)

        async def tee() -> AsyncIterator[T]:
            while True:
                done, value = await q.get()
                if done:
                    return
                yield value

        return tee()

    async def wait_until_complete(self) -> int:
        """Wait until every piped chunk is durable; returns how many were piped."""
        return await asyncio.shield(self._task)


class OutputStream(Generic[T]):
    """A typed output stream handle: `streams.define("ai-output", str)`.

    Inside a task the target defaults to the current run; outside a task pass
    `target=<run id>`. Chunks are validated against the type before anything
    is stored (`ValidationError`).
    """

    def __init__(self, id: str, type: Any = Any) -> None:
        self.id = id
        self.type = type
        self._codec: _Codec[T] = _Codec(id, type)

    def __reduce__(self) -> tuple[Any, ...]:
        return (OutputStream, (self.id, self.type))

    def __repr__(self) -> str:
        return f"OutputStream({self.id!r}, {_type_name(self.type)})"

    def append(self, value: T, *, target: str | None = None) -> Response[int]:
        """Append one chunk; resolves to its index once it is durable.

        Raises `ValidationError` (wrong type), `StreamTooLarge`, `RunFinished`,
        `RunNotFound`. Remember to await it (or call `.result()`): an
        un-awaited append does nothing.
        """
        data = self._codec.encode(value)

        async def go() -> int:
            seq = await _writer_for(self.id, target).write(data)
            return -1 if seq is None else seq

        return Response(go)

    def pipe(self, source: AsyncIterable[T] | Iterable[T], *, target: str | None = None) -> Pipe[T]:
        """Append every value of a sync or async iterable, in the background."""
        pipe: Pipe[T] = _in_loop(lambda: Pipe(self._codec, _new_writer(self.id, target), source))
        return pipe

    def writer(self, *, target: str | None = None) -> StreamWriter[T]:
        """A writer for `write()`/`merge()`; use with `async with`."""
        return StreamWriter(self._codec, _new_writer(self.id, target))

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
            await _writer_for(self.id, target).flush()
            await close_stream(resolve_target(target), self.id)

        return Response(go)


def _in_loop(make: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return portal().call(make)
    return make()


async def close_stream(run_id: str, key: str) -> None:
    conn = connection.current()
    for _ in range(10):
        _, actor = await locations.locate(run_id)
        if actor is None:
            break
        try:
            await call(actor.close_stream.remote(run_id, key))
            return
        except (RunMoved, ray.exceptions.RayActorError):
            locations.forget(run_id, actor)  # it left that actor: look again
    await asyncio.to_thread(conn.store.close_stream, run_id, key)


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


def writer(key: str = DEFAULT_KEY, *, target: str | None = None) -> StreamWriter[Any]:
    """A writer for stream `key` (see OutputStream.writer)."""
    return _by_key(key).writer(target=target)


def input(id: str, type: type[T] | Any = Any) -> InputStream[T]:
    """Define a typed input stream: data sent into running tasks."""
    return InputStream(id, type)


def send(run_id: str, stream_id: str, data: Any) -> Response[None]:
    """Send JSON `data` to input stream `stream_id` of a run (untyped)."""
    return InputStream(stream_id, Any).send(run_id, data)


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
