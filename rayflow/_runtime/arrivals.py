"""What a RunActor keeps of runs it does not execute: ones on their way
here, and ones that left lately.

A new run's row names its actor from its INSERT on (the Controller placed
it as it created it), so a send, an outside write, a cancel or a reader's
poll may reach the actor before the Controller's `execute_many` does. What
came is kept for the run (`came`, taken by its fresh start: `take`); a
reader's poll of a run never seen here waits a little for it (`expected`),
while a poll of a run that left lately is sent to the Store at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

#: how long what came for a run the actor does not know is kept for it: its
#: `execute_many` follows the Controller's placement within milliseconds
EARLY_KEEP_S = 60.0
#: how long a reader's poll of a run never seen here waits for the run to
#: arrive before it is told to read the Store
EXPECT_S = 2.0
#: how many runs that left are remembered
LEFT_KEPT = 10_000

#: per run: when something came first, (input streams poked, output streams
#: written from outside) and whether a cancel came
Early = tuple[float, set[str], set[str], bool]


class Arrivals:
    def __init__(self) -> None:
        #: oldest first
        self.early: dict[str, Early] = {}
        self.left: OrderedDict[str, None] = OrderedDict()

    def came(
        self,
        run_id: str,
        inputs: tuple[str, ...] = (),
        outputs: tuple[str, ...] = (),
        canceled: bool = False,
    ) -> None:
        """Something came for a run the actor does not know (yet): kept
        EARLY_KEEP_S for its fresh start."""
        now = time.monotonic()
        early = self.early
        while early:
            oldest = next(iter(early))
            if now - early[oldest][0] < EARLY_KEEP_S:
                break
            del early[oldest]
        at, ins, outs, was = early.get(run_id) or (now, set(), set(), False)
        early[run_id] = (at, ins | set(inputs), outs | set(outputs), was or canceled)

    def take(self, run_id: str) -> Early | None:
        """What came for the run before it got here (once)."""
        return self.early.pop(run_id, None)

    def gone(self, run_id: str) -> None:
        """The run left the actor."""
        self.left[run_id] = None
        if len(self.left) > LEFT_KEPT:
            self.left.popitem(last=False)

    def expected(self, run_id: str, look_at: Callable[[str], None]) -> bool:
        """Whether a reader's poll of a run the actor does not know should
        wait for it: it did not leave lately and was first looked for less
        than EXPECT_S ago. The first time, `look_at(run_id)` is called
        EXPECT_S later (the poll then answers `from_store` if it has not come)."""
        if run_id in self.left:
            return False
        early = self.early.get(run_id)
        if early is None:
            self.came(run_id)
            asyncio.get_running_loop().call_later(EXPECT_S, look_at, run_id)
            return True
        return time.monotonic() - early[0] < EXPECT_S
