"""What a chat agent needs of its session (one seam: `_session_port.py`
implements it on `rayflow.sessions`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class SessionPort(Protocol):
    session_id: str
    chat_id: str
    #: why the last `wait_input` gave nothing: "idle" (timeout) or "closed"
    ended: str

    async def wait_input(self, timeout_s: float | None) -> tuple[int, Any] | None:
        """The next `.in` record not consumed yet (seq, value), suspending the
        run while there is none (journaled: a replay gets the same record);
        None on timeout or when the session is closed (`ended` says which)."""
        ...

    def watch_input(self, after: int) -> AsyncIterator[tuple[int, Any]]:
        """`.in` records past seq `after` as they arrive, consuming nothing."""
        ...

    async def append_data(self, chunk: dict[str, Any]) -> int:
        """Append one UI message chunk as a data record; its `.out` seq."""
        ...

    async def append_control(self, headers: list[list[str]]) -> int:
        """Append a control record (headers only); its `.out` seq."""
        ...

    async def save_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Keep the conversation for the session's next run."""
        ...

    async def load_snapshot(self) -> dict[str, Any] | None:
        """The last snapshot saved by any run of the session."""
        ...
