"""A run's appends to a session stream, numbered so that no replay stores a
record twice — run streams' writer journaling (`stream_journal`) applied to
the named streams sessions live on.

Inside a run, every append to one session stream (`output.append`,
`write_control`, a pipe, a `writer()`, from the task's own code) goes
through the run's `SessionWriter` of that stream: writer id
`<run>:<attempt>:<scope>session:<path>` (scope: an `.on()` delivery's or a
step's, `RunContext.writer_scope`), each append numbered from 0 in the
order the code makes them. Id and number are the record's producer stamp
(`store.named.Producer`): the Store answers a stamp it stored already as a
duplicate and stores nothing.

- Replaying what ran before the run's last suspension, an append is skipped
  without I/O: every writer was flushed before the "suspend" entry was
  recorded, so the record is stored.
- Passing a suspension, the writer numbers on from the position journaled
  there (a pipe or a step the replay skips appended meanwhile).
- A run revived after a crash has no "suspend" entry past its last wait: the
  appends it makes again from there carry the numbers they had the first
  time and the Store drops those it stored (one round trip each, only then).

A writer's appends reach the Store one at a time, in the order numbered (a
stream made on first write, or a retry, must not let a later number land
first: it would turn the earlier one into a duplicate). Numbers may skip —
a write the Store refused used its number (`NamedWrite.producer_gaps`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from rayflow._runtime import stream_journal
from rayflow._runtime.context import RunContext
from rayflow.store.named import NamedWriteResult, Producer

#: writes one record with the producer stamp it is given
Write = Callable[[Producer], Awaitable[NamedWriteResult]]


class SessionWriter:
    """The numbered appends of one run (scope) to one session stream."""

    def __init__(self, ctx: RunContext, path: str) -> None:
        self.writer_id = f"{ctx.run_id}:{ctx.attempt}:{ctx.writer_scope}session:{path}"
        self.journal = ctx.journal
        self._seq = 0
        self._order = asyncio.Lock()
        self._pending: set[asyncio.Future[None]] = set()
        stream_journal.register(self.journal, self)

    @property
    def position(self) -> int:
        return self._seq

    def advance_to(self, position: int) -> None:
        self._seq = max(self._seq, position)

    async def append(self, write: Write) -> NamedWriteResult | None:
        """Number the next append and make it (None: a replay's, stored
        before the suspension the replay has not passed yet)."""
        seq = self._seq
        self._seq += 1
        if stream_journal.bound(self.journal, self.writer_id) is not None:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.add(done)
        try:
            async with self._order:  # FIFO: in the order numbered
                return await write(Producer(self.writer_id, 0, seq))
        finally:
            self._pending.discard(done)
            done.set_result(None)

    async def flush(self) -> None:
        """Every append numbered so far has reached the Store (or failed)."""
        while self._pending:
            await asyncio.wait(list(self._pending))


def writer_for(ctx: RunContext, path: str) -> SessionWriter:
    """The writer of `path` in this context (the run's, a step's, a delivery's)."""
    writers: dict[str, SessionWriter] = ctx.__dict__.setdefault("_session_writers", {})
    found = writers.get(path)
    if found is None:
        found = writers[path] = SessionWriter(ctx, path)
    return found
