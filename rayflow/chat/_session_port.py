"""`SessionPort` on `rayflow.sessions`: the chat agent's session I/O.

The journaled, suspending `.in` wait is the session's own (`Session.input`);
the rest goes straight to the session runtime (`session_io`): a turn is one
journaled step, skipped on replay, so its writes cannot be numbered like a
run's other appends (by their order in the attempt, which a replay repeats).
A turn's records are written by an idempotent producer of its own, named by
the turn's message id (deterministic) and numbered from 0: a turn run again
after a crash re-makes them, and those the Store holds already are answered
as duplicates — the same rule as a pipe cut mid-stream (`stream_journal`).

The conversation's snapshot (what a run that continues the session starts
from) is the last record of the session's `chat.snapshot` side channel:
written before each `turn-complete`, bounded by the channel's retention.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from rayflow import _tokens, sessions
from rayflow._runtime import connection, session_inputs, session_io, session_reads, session_runs
from rayflow._runtime.context import require_run
from rayflow.chat import _wire
from rayflow.errors import SessionClosed
from rayflow.store.named import Producer

SNAPSHOT_CHANNEL = "chat.snapshot"
#: a watch of `.in` re-asks this often (it is cancelled when its turn ends)
WATCH_POLL_S = 30.0
#: records read back to find the last snapshot (a trim record may follow it)
_SNAPSHOT_LOOKBACK = 4


class SessionIO:
    def __init__(self, session: Any, chat_id: str) -> None:
        self.session = session
        self.session_id: str = session.id
        self.chat_id = chat_id
        #: why the last `wait_input` gave nothing: "idle" (timeout) or "closed"
        self.ended = "idle"
        #: the session's external id ("": none), read once for tokens
        self.external_id: str | None = None

    async def wait_input(self, timeout_s: float | None) -> tuple[int, Any] | None:
        result = await self.session.input.wait(timeout=timeout_s)
        if not result.ok:
            self.ended = "closed" if isinstance(result.error, SessionClosed) else "idle"
            return None
        seq = self.session.input.last_dispatched_seq()
        return int(seq), result.output

    async def watch_input(self, after: int) -> AsyncIterator[tuple[int, Any]]:
        start = after + 1
        while True:
            page = await session_reads.wait_records(
                self.session_id, "in", start=start, timeout_s=WATCH_POLL_S
            )
            for record in page.records:
                yield record.seq_num, record.value()
                start = record.seq_num + 1
            if page.closed and not page.records:
                return

    async def refreshed_token(self) -> str:
        ctx = require_run("a chat turn")
        if self.external_id is None:
            self.external_id = (await session_runs.get_session(self.session_id)).external_id or ""
        conn = connection.current()
        # what the session's start gave the client, and its current run
        # (Trigger.dev encodes the live run in the refreshed token)
        scopes = _tokens.session_scopes(self.session_id, self.external_id or None)
        scopes.append(f"read:runs:{ctx.run_id}")
        return _tokens.mint_token(conn.secret_key, scopes, conn.settings.session_token_ttl_s)

    async def settle(self, seq: int) -> None:
        ctx = require_run("a chat turn")
        await session_inputs.settle_through(ctx, self.session_id, seq)

    def writer(self, key: str) -> TurnWriter:
        """The writer of one turn's records (`key`: the turn's message id)."""
        return TurnWriter(self.session_id, key)

    async def load_snapshot(self) -> dict[str, Any] | None:
        head = await session_reads.read_records(
            self.session_id, "out", channel=SNAPSHOT_CHANNEL, limit=1
        )
        if head.tail == 0:
            return None
        # the last snapshot, and after it the trim that dropped the one before
        last = await session_reads.read_records(
            self.session_id,
            "out",
            channel=SNAPSHOT_CHANNEL,
            start=max(0, head.tail - _SNAPSHOT_LOOKBACK),
            limit=_SNAPSHOT_LOOKBACK,
        )
        kept = [r for r in last.records if r.command is None and r.body]
        if not kept:
            return None
        snapshot: dict[str, Any] = kept[-1].value()
        return snapshot


async def open_port(payload: _wire.WirePayload) -> SessionIO:
    """The session of the running task (`sessions.current()`), and whether
    this run continues it (its payload's first message was answered)."""
    current = sessions.current()
    if current.continuation:
        payload.continuation = True
        payload.previous_run_id = current.previous_run_id
    return SessionIO(sessions.open(current.id), payload.chat_id or current.id)


class TurnWriter:
    """One turn's `.out` records and snapshot, each stream numbered from 0."""

    def __init__(self, session_id: str, key: str) -> None:
        self.session_id = session_id
        self.key = key
        self.next: dict[str, int] = {}

    def _producer(self, path: str) -> Producer:
        seq = self.next.get(path, 0)
        self.next[path] = seq + 1
        return Producer(f"chat:{self.key}", 0, seq)

    async def _write(self, record: dict[str, Any], channel: str | None = None) -> int | None:
        path = session_io.session_stream_path(self.session_id, "out", channel)
        producer = self._producer(path)
        data = session_io.encode(record, f"the record for {path}")
        result = await session_io.append_encoded(path, data, channel, producer)
        return result.start  # None: stored before (the turn runs again)

    async def data(self, chunk: dict[str, Any]) -> None:
        index = self.next.get(session_io.session_stream_path(self.session_id, "out"), 0)
        await self._write(_wire.data_record(chunk, f"{self.key}:{index}"))

    async def control(self, headers: list[list[str]]) -> int | None:
        return await self._write({"headers": headers})

    async def snapshot(self, snapshot: dict[str, Any]) -> None:
        seq = await self._write(_wire.data_record(snapshot, self.key), SNAPSHOT_CHANNEL)
        if seq is not None:  # only the last snapshot is read: drop the ones before
            await self.trim(seq, SNAPSHOT_CHANNEL)

    async def trim(self, earliest: int, channel: str | None = None) -> None:
        path = session_io.session_stream_path(self.session_id, "out", channel)
        await session_io.trim_encoded(path, earliest, channel, self._producer(path))
