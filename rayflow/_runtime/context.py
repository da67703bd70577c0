"""The run a piece of code is executing in, if any (a context variable)."""

from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rayflow.errors import NoParentRun, OutsideTask

if TYPE_CHECKING:
    from rayflow._runtime.journal import Journal
    from rayflow._runtime.stream_buffers import StreamBuffers


@dataclass
class RunContext:
    run_id: str
    task_id: str
    attempt: int
    parent_id: str | None
    root_id: str
    journal: Journal
    buffers: StreamBuffers
    #: input-stream state of the run (set by the RunActor)
    inputs: Any = None
    #: writers created in an `.on()` handler are numbered per delivery
    #: ("on:<stream>:<seq>:"): a replay hands a message over at another
    #: point among the task's own writes, and their ids must not shift.
    #: Those created in a step, per step ("step<n>:"): a replay skips a
    #: finished step's body, and the writes after it must not take its numbers
    writer_scope: str = ""
    #: the metadata the run was triggered with (`rayflow.metadata` starts from it)
    trigger_metadata: dict[str, Any] = field(default_factory=dict)
    #: state of the attempt that its `.on()` deliveries share with the task's
    #: own code (`for_delivery` hands the same dict on): the run's metadata
    shared: dict[str, Any] = field(default_factory=dict)
    #: the session this run serves (`rayflow.sessions`), from its options:
    #: {"id", "continuation", "previous_run_id", "idle_timeout_s"}, or None
    session: dict[str, Any] | None = None
    #: the attempt's readers of session input streams (`session_inputs`), by path
    session_readers: dict[str, Any] = field(default_factory=dict)
    _writers: int = field(default=0)
    _steps: int = field(default=0)

    def next_writer_id(self, kind: str) -> str:
        """Deterministic writer ids, so a replayed write is recognised."""
        self._writers += 1
        return f"{self.run_id}:{self.attempt}:{self.writer_scope}{kind}{self._writers}"

    def for_delivery(self, stream_id: str, seq: int) -> RunContext:
        """This run's context for an `.on()` handler handling message `seq`."""
        return dataclasses.replace(
            self, writer_scope=f"on:{stream_id}:{seq}:", _writers=0, _steps=0
        )

    def for_step(self) -> RunContext:
        """This run's context for the body of its next step (steps are
        counted whether they run or are replayed)."""
        self._steps += 1
        scope = f"{self.writer_scope}step{self._steps}:"
        return dataclasses.replace(self, writer_scope=scope, _writers=0, _steps=0)

    def resolve_target(self, target: str) -> str:
        if target == "self":
            return self.run_id
        if target == "parent":
            if self.parent_id is None:
                raise NoParentRun(
                    f"run {self.run_id} has no parent run, so target='parent' names nothing;"
                    " pass target='self' or a run id",
                    run_id=self.run_id,
                )
            return self.parent_id
        if target == "root":
            return self.root_id
        return target


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "rayflow_run", default=None
)


def current_run() -> RunContext | None:
    return _current.get()


def run_of(context: contextvars.Context | None) -> RunContext | None:
    """The run `context` belongs to (the current context when None)."""
    if context is None:
        return _current.get()
    return context.get(_current)


def require_run(what: str) -> RunContext:
    ctx = _current.get()
    if ctx is None:
        raise OutsideTask(f"{what} can only be used inside a running rayflow task")
    return ctx


def set_run(ctx: RunContext | None) -> contextvars.Token[RunContext | None]:
    return _current.set(ctx)


def reset_run(token: contextvars.Token[RunContext | None]) -> None:
    _current.reset(token)


def resolve_target(target: str | None) -> str:
    """The run id a stream operation addresses; outside a task it must be one."""
    ctx = _current.get()
    if ctx is not None:
        return ctx.resolve_target(target or "self")
    if target is None or target in ("self", "parent", "root"):
        raise OutsideTask(
            f"target={target!r} needs a running task; outside a task pass the run id"
            " (target=handle.id)"
        )
    return target
