"""A RunActor's event loop, watched: how late it runs a periodic timer, and
which run holds it when it stops.

The runs of an `async def` task share their actor's event loop, so a run
that blocks it (CPU work or a blocking call without `asyncio.to_thread`)
delays every run there. Two measures:
- lag: a timer due every `TICK_S` records how late it fires; the pool asks
  for the worst since its last look (`RunActor.loop_lag`) and places no new
  run on an actor past `loop_lag_s` until it is back under half that;
- the culprit: a daemon thread looks at the loop while it has not ticked
  for a while; the asyncio task it finds running at every look belongs to
  one run (`whose`: the run's own task or one its code created). A hold of `loop_lag_s` or more is
  reported when the loop runs again (`report(run_id, task_id,
  seconds)`: a warning, and a mark on the run).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

#: how often the loop's timer is due
TICK_S = 0.05
#: how often the watching thread looks while the loop is late (and, on
#: time, every TICK_S: it takes the GIL only that often)
LOOK_S = 0.01

#: (run id, task id, seconds the run held the loop)
Report = Callable[[str, str, float], None]
#: the (run id, task id) an asyncio task belongs to, if any (called on the
#: watching thread: it must only read)
Whose = Callable[[Any], tuple[str, str] | None]


class LoopWatch:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, threshold_s: float, whose: Whose, report: Report
    ) -> None:
        self.loop, self.threshold_s, self.whose, self.report = loop, threshold_s, whose, report
        #: the most a tick was late since `take_lag`
        self.worst = 0.0
        self._due = loop.time() + TICK_S
        self._beat = time.monotonic()
        #: the task seen running at every look since this stall began, and when
        self._holder: tuple[Any, float] | None = None
        #: (run id, task id, since) of the run found holding the loop
        self._culprit: tuple[str, str, float] | None = None
        loop.call_at(self._due, self._tick)
        threading.Thread(target=self._look, name="rayflow-loop-watch", daemon=True).start()

    def take_lag(self) -> float:
        """The most the timer was late since the last call (seconds)."""
        worst, self.worst = self.worst, 0.0
        # a stall still in progress counts too
        return max(worst, time.monotonic() - self._beat - TICK_S)

    def _tick(self) -> None:
        now = self.loop.time()
        late = max(0.0, now - self._due)
        self.worst = max(self.worst, late)
        culprit, self._culprit, self._holder = self._culprit, None, None
        self._beat = time.monotonic()
        self._due = now + TICK_S
        self.loop.call_at(self._due, self._tick)
        if culprit is not None:
            held = max(late, time.monotonic() - culprit[2])
            if held >= self.threshold_s:
                self.report(culprit[0], culprit[1], held)

    def _look(self) -> None:
        pause = TICK_S
        while True:
            time.sleep(pause)
            beat = self._beat
            stalled = time.monotonic() - beat - TICK_S
            pause = LOOK_S if stalled >= 0 else TICK_S
            if stalled < LOOK_S:
                continue
            task = asyncio.current_task(self.loop)
            holder = self._holder
            if task is None or holder is None or holder[0] is not task:
                self._holder = (task, time.monotonic()) if task is not None else None
                continue
            if self._culprit is None and time.monotonic() - holder[1] >= self.threshold_s / 2:
                run = self.whose(task)
                if run is not None and self._beat == beat:
                    self._culprit = (run[0], run[1], holder[1])
