"""One turn of a chat agent: the agent's pieces framed as an assistant
message on `.out`, a stop or a steering message on `.in` seen while it
streams, and the turn's outcome (what the run journals).

Framing: `start` (the message id), `start-step`, the pieces (a string opens
a text part, or continues the open one; any other chunk closes it), then
`finish-step` and `finish` — or, when the user stops the turn, the open
parts closed, `abort` and `finish`. Every chunk is one data record; the
turn ends with the `turn-complete` control record, whose
`session-in-event-id` is the last `.in` record the turn consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from rayflow.chat import _wire, chunks
from rayflow.chat._port import SessionPort, TurnWriter
from rayflow.chat.messages import MessageBuilder, UIMessage

log = logging.getLogger(__name__)


@dataclass
class Turn:
    """What an agent's turn function is given."""

    chat_id: str
    session_id: str
    #: the conversation so far, ending with the message this turn answers
    messages: list[UIMessage]
    #: "submit-message", or "regenerate-message" (the last answer was dropped)
    trigger: str
    #: the client's `clientData` (the payload's `metadata`)
    metadata: Any
    #: set when the user stops the turn (the agent's pieces stop being read)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: list[tuple[int, UIMessage]] = field(default_factory=list)
    _taken: list[int] = field(default_factory=list)
    _steered: list[UIMessage] = field(default_factory=list)
    _unsent: list[UIMessage] = field(default_factory=list)
    _stops: list[int] = field(default_factory=list)

    @property
    def message(self) -> UIMessage | None:
        """The user message this turn answers."""
        users = [m for m in self.messages if m.role == "user"]
        return users[-1] if users else None

    def take_pending(self) -> list[UIMessage]:
        """User messages sent while this turn streams (steering), taken into
        it: each is appended to `messages`, streamed as a `steering-message`
        part, and not answered again as a turn of its own. An agent that
        never calls this answers them as the next turns, in order."""
        taken = [m for _, m in self._pending]
        self._taken += [seq for seq, _ in self._pending]
        self._pending.clear()
        self.messages.extend(taken)
        self._steered += taken
        self._unsent += taken
        return taken


TurnFunction = Callable[[Turn], AsyncIterator["str | chunks.Chunk"]]


class _Out:
    """Writes one assistant message's chunks to `.out`, building it as it goes."""

    def __init__(self, writer: TurnWriter, message_id: str) -> None:
        self.writer = writer
        self.builder = MessageBuilder(message_id)
        self.text_id: str | None = None
        self.parts = 0

    async def emit(self, chunk: chunks.Chunk) -> None:
        wire = chunk.wire()
        self.builder.apply(wire)
        await self.writer.data(wire)

    async def piece(self, piece: str | chunks.Chunk) -> None:
        if isinstance(piece, str):
            if self.text_id is None:
                self.text_id = f"{self.builder.message.id}-t{self.parts}"
                self.parts += 1
                await self.emit(chunks.TextStart(id=self.text_id))
            await self.emit(chunks.TextDelta(id=self.text_id, delta=piece))
            return
        await self.close_text()
        await self.emit(piece)

    async def close_text(self) -> None:
        if self.text_id is not None:
            text_id, self.text_id = self.text_id, None
            await self.emit(chunks.TextEnd(id=text_id))


async def run_turn(
    port: SessionPort,
    writer: TurnWriter,
    fn: TurnFunction,
    turn: Turn,
    *,
    message_id: str,
    in_seq: int | None,
    watch_from: int,
    skip: set[int],
    inject: bool,
) -> dict[str, Any]:
    """Stream one turn; returns the outcome to journal: the assistant
    message, the `.in` seqs taken into it (steering, a stop), whether it was
    stopped, the last `.in` seq it consumed."""
    out = _Out(writer, message_id)
    watcher = asyncio.create_task(_watch(port, turn, watch_from, skip, inject))
    await out.emit(chunks.Start(message_id=message_id))
    await out.emit(chunks.StartStep())
    failed: str | None = None
    try:
        stopped = await _pump(fn(turn), out, turn)
    except Exception as e:  # the agent's own error ends its turn, not the run
        log.exception("chat %s: the agent's turn failed", turn.session_id)
        stopped, failed = False, f"{type(e).__name__}: {e}"
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await out.close_text()
    for open_part in out.builder.open_reasoning():
        await out.emit(chunks.ReasoningEnd(id=open_part))
    await out.emit(chunks.FinishStep())
    if failed is not None:
        await out.emit(chunks.Error(error_text=failed))
    if stopped:
        await out.emit(chunks.Abort(reason="stopped"))
    await out.emit(chunks.Finish())
    consumed = max([s for s in [in_seq, *turn._taken] if s is not None], default=None)
    message = out.builder.finish()
    return {
        "message": message.wire(),
        "taken": turn._taken,
        "steered": [m.wire() for m in turn._steered],
        "stopped": stopped,
        "error": failed,
        "stops": turn._stops,
        "consumed": consumed,
    }


async def _pump(source: AsyncIterator[str | chunks.Chunk], out: _Out, turn: Turn) -> bool:
    """Write the agent's pieces until they end (False) or the turn is stopped (True)."""
    stop = asyncio.create_task(turn.stopped.wait())
    iterator = source.__aiter__()
    try:
        while True:
            step = asyncio.ensure_future(iterator.__anext__())
            await asyncio.wait([step, stop], return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                return True
            try:
                piece = step.result()
            except StopAsyncIteration:
                return False
            await out.piece(piece)
            while turn._unsent:
                message = turn._unsent.pop(0)
                await out.piece(chunks.SteeringMessage(id=message.id, parts=message.parts))
    finally:
        stop.cancel()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _watch(port: SessionPort, turn: Turn, after: int, skip: set[int], inject: bool) -> None:
    """Read `.in` past `after` while the turn streams, without consuming it:
    a stop stops the turn; with `inject`, a user message is offered to
    `Turn.take_pending` (otherwise the run's next `.wait()` answers it).
    `skip`: seqs earlier turns took (a stop seen by the turn it stopped must
    not stop the next one)."""
    async for seq, value in port.watch_input(after):
        record = _wire.decode_input(seq, value)
        if record is None or seq in skip:
            continue
        if record.kind == "stop":
            turn._stops.append(seq)
            turn.stopped.set()
            return
        payload = record.payload
        if (
            inject
            and payload is not None
            and payload.trigger == "submit-message"
            and payload.message is not None
            and payload.message.role == "user"
        ):
            turn._pending.append((seq, payload.message))
