"""`@chat.agent`: a chat agent as one async generator per turn, run as a
rayflow task bound to a session, speaking Trigger.dev's chat protocol (what
`TriggerChatTransport` and AI SDK `useChat` talk to).

The run loops over the session's `.in`: each user message is a turn — the
function is called with the conversation and what it yields is streamed to
`.out` as one assistant message, then a `turn-complete` record. Between
turns the run waits with `.wait()`: it holds no process, and the next
message revives it. A revival replays the loop from the top; each turn is
a journaled step, so a replay gets the recorded answer back without calling
the model again. A session whose run ended (idle timeout, crash, cancel)
starts a fresh run on its next message; that run rebuilds the conversation
from the snapshot the last turn saved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rayflow import durable
from rayflow._runtime.durations import parse_duration
from rayflow.chat import _wire
from rayflow.chat._port import SessionPort, TurnWriter
from rayflow.chat._turn import Turn, TurnFunction, run_turn
from rayflow.chat.messages import UIMessage, overlay_tool_states
from rayflow.task import Task, task

#: `on_action(action, messages)`: the new conversation (None: unchanged)
ActionHandler = Callable[[Any, list[UIMessage]], Awaitable[list[UIMessage] | None]]


def agent(
    id: str,
    *,
    idle_timeout: float | str | None = None,
    steering: bool = False,
    on_action: ActionHandler | None = None,
    **task_options: Any,
) -> Callable[[TurnFunction], Task[Any, Any]]:
    """Make `fn(turn)` (an async generator) a chat agent: the task `id`
    that `POST /api/v1/sessions` with `taskIdentifier: id` starts.

    `fn` yields strings (text, streamed as it comes) and
    `rayflow.chat.chunks` (reasoning, tool calls and results, `data(...)`
    parts); it must not call other durable operations (`step`, `.wait()`):
    the whole turn is one. `idle_timeout`: how long the run waits for the
    next message before it ends (default: the session's `idle_timeout_s`,
    else for ever — a waiting run holds no process); the session lives on,
    and its next message starts a new run. `steering=True` lets a turn take messages sent while
    it streams (`Turn.take_pending`); otherwise they are the next turns.
    `on_action(action, messages)` answers `trigger: "action"` records
    (undo, edit…): it returns the new conversation, or None.
    """
    timeout_s = parse_duration(idle_timeout)

    def wrap(fn: TurnFunction) -> Task[Any, Any]:
        async def run(payload: dict[str, Any]) -> dict[str, Any]:
            from rayflow.chat._session_port import open_port

            first = _wire.WirePayload.model_validate(payload)
            port = await open_port(first)
            loop = _Loop(port, fn, first, steering=steering, on_action=on_action)
            return await loop.run(timeout_s)

        # the task is the user's code: it names their module (so a module no
        # worker can import travels by value, like any task's) and function
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(run, attr, getattr(fn, attr, getattr(run, attr)))
        run.__rayflow_user_fn__ = fn  # type: ignore[attr-defined]  # the task's version
        return task(id=id, **task_options)(run)

    return wrap


class _Loop:
    def __init__(
        self,
        port: SessionPort,
        fn: TurnFunction,
        first: _wire.WirePayload,
        *,
        steering: bool,
        on_action: ActionHandler | None,
    ) -> None:
        self.port = port
        self.fn = fn
        self.first = first
        self.steering = steering
        self.on_action = on_action
        self.history: list[UIMessage] = []
        self.skip: set[int] = set()  # `.in` seqs a turn took as steering
        self.cursor = -1  # the last `.in` seq consumed
        self.turns = 0
        #: the seq of the last turn-complete on `.out` (the next turn trims to it)
        self.turn_complete: int | None = None

    async def run(self, timeout_s: float | None) -> dict[str, Any]:
        boot = await durable.step("chat-boot", self._boot)
        self.history = [UIMessage.model_validate(m) for m in boot["messages"]]
        first = self.first
        fresh = not first.continuation and not self.history
        if fresh and first.trigger == "submit-message" and first.message is not None:
            await self._message(_wire.InputRecord(seq=None, kind="message", payload=first))
        while True:
            got = await self.port.wait_input(timeout_s)
            if got is None:
                return {"turns": self.turns, "ended": self.port.ended}
            seq, value = got
            self.cursor = max(self.cursor, seq)
            if seq in self.skip:
                continue
            record = _wire.decode_input(seq, value)
            if record is None or record.kind == "stop":
                continue  # a stop between turns has nothing to stop
            assert record.payload is not None
            if record.payload.trigger == "close":
                return {"turns": self.turns, "ended": "close"}
            await self._message(record)

    async def _boot(self) -> dict[str, Any]:
        snapshot = await self.port.load_snapshot()
        return {"messages": [] if snapshot is None else snapshot["messages"]}

    async def _message(self, record: _wire.InputRecord) -> None:
        payload = record.payload
        assert payload is not None
        if payload.trigger == "action":
            done = await durable.step("chat-action", self._action, payload.action, record.seq)
            if done.get("turn_complete") is not None:
                self.turn_complete = done["turn_complete"]
            if done["messages"] is not None:
                self.history = [UIMessage.model_validate(m) for m in done["messages"]]
            return
        if payload.trigger == "regenerate-message":
            while self.history and self.history[-1].role == "assistant":
                self.history.pop()
        elif payload.trigger == "submit-message" and payload.message is not None:
            incoming = payload.message
            if incoming.role != "assistant" or not overlay_tool_states(self.history, incoming):
                self.history.append(incoming)
        elif payload.trigger != "submit-message":
            return  # preload, handover-prepare: nothing to answer
        outcome = await durable.step("chat-turn", self._turn, payload, record.seq)
        self.history += [UIMessage.model_validate(m) for m in outcome["steered"]]
        self.history.append(UIMessage.model_validate(outcome["message"]))
        self.skip.update(outcome["taken"] + outcome["stops"])
        if outcome.get("turn_complete") is not None:
            self.turn_complete = outcome["turn_complete"]
        self.turns += 1

    async def _turn(self, payload: _wire.WirePayload, in_seq: int | None) -> dict[str, Any]:
        turn = Turn(
            chat_id=self.port.chat_id,
            session_id=self.port.session_id,
            messages=list(self.history),
            trigger=payload.trigger,
            metadata=payload.metadata,
        )
        message_id = f"{self.port.session_id}-a{len(self.history)}-{in_seq}"
        watch_from = in_seq if in_seq is not None else self.cursor
        writer = self.port.writer(message_id)
        outcome = await run_turn(
            self.port,
            writer,
            self.fn,
            turn,
            message_id=message_id,
            in_seq=in_seq,
            watch_from=watch_from,
            skip=self.skip,
            inject=self.steering,
        )
        messages = [*turn.messages, UIMessage.model_validate(outcome["message"])]
        # the snapshot before the turn-complete: a client that saw the turn end
        # may send at once, and a run that continues the session reads it
        await writer.snapshot({"messages": [m.wire() for m in messages]})
        token = await self.port.refreshed_token()
        done_at = await writer.control(_wire.turn_complete_headers(outcome["consumed"], token))
        await self._trim(writer)
        if outcome["consumed"] is not None:
            await self.port.settle(outcome["consumed"])
        return {**outcome, "turn_complete": done_at}

    async def _trim(self, writer: TurnWriter) -> None:
        """`.out` keeps the previous turn-complete and what came after it (a
        reload resumes the last turn from there; the conversation is in the
        snapshot), as Trigger.dev's agent trims after each turn-complete."""
        if self.turn_complete is not None:
            await writer.trim(self.turn_complete)

    async def _action(self, action: Any, in_seq: int | None) -> dict[str, Any]:
        changed = None
        writer = self.port.writer(f"{self.port.session_id}-action-{in_seq}")
        if self.on_action is not None:
            changed = await self.on_action(action, list(self.history))
            if changed is not None:
                await writer.snapshot({"messages": [m.wire() for m in changed]})
        token = await self.port.refreshed_token()
        done_at = await writer.control(_wire.turn_complete_headers(in_seq, token))
        await self._trim(writer)
        if in_seq is not None:
            await self.port.settle(in_seq)
        messages = None if changed is None else [m.wire() for m in changed]
        return {"messages": messages, "turn_complete": done_at}
