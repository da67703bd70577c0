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

    async def refreshed_token(self) -> str:
        """A fresh public access token for the session (its `turn-complete`
        carries it to the client)."""
        ...

    async def settle(self, seq: int) -> None:
        """The `.in` records up to `seq` are answered (a `turn-complete` says
        so): a run that continues the session after this one fails does not
        answer them again."""
        ...

    def writer(self, key: str) -> TurnWriter:
        """The writer of one turn's records (`key`: the turn's message id)."""
        ...

    async def load_snapshot(self) -> dict[str, Any] | None:
        """The last snapshot saved by any run of the session."""
        ...


class TurnWriter(Protocol):
    async def data(self, chunk: dict[str, Any]) -> None:
        """Append one UI message chunk as a data record."""
        ...

    async def control(self, headers: list[list[str]]) -> int | None:
        """Append a control record (headers only); its seq (None: the turn
        runs again after a crash and stored it before)."""
        ...

    async def snapshot(self, snapshot: dict[str, Any]) -> None:
        """Keep the conversation for the session's next run (only the last
        snapshot is kept)."""
        ...

    async def trim(self, earliest: int) -> None:
        """Delete the `.out` records before seq `earliest` (S2's trim)."""
        ...
