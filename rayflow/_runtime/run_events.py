"""Run changes, pushed: the feed behind run subscriptions (`/realtime/v1/runs`).

Every process that changes a run row (the Controller, RunActors, a Serve
replica appending) does it through the Store, which calls its
`on_run_change` hook after the commit. The hook installed here sends the run
ids, fire-and-forget, to one named actor, `RunEvents`, which numbers them.
Each Serve replica keeps one long poll on it (`wait`) and wakes the
subscriptions of the runs that changed. So a status change reaches a
subscribed client one Store commit plus two actor hops after it happened —
no polling of the Store.

The feed says only *which* runs changed; subscribers read the rows from the
Store (the truth). A lost or reordered notification therefore never shows a
client a wrong row, at worst a late one: a replica that falls behind the
feed's window (or sees the actor restart) is told "resync" and every
subscription re-reads its rows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import ray

log = logging.getLogger("rayflow")

#: not "rayflow-run-…": the Controller takes named actors with that prefix for RunActors
EVENTS_NAME = "rayflow-change-feed"
#: changes kept for replicas that poll a little late; one further behind resyncs
WINDOW = 50_000


@ray.remote
class RunEvents:
    """Numbers run-change notifications and hands them to long polls."""

    def __init__(self) -> None:
        self.seq = 0
        self.recent: deque[tuple[int, str]] = deque(maxlen=WINDOW)
        self._changed = asyncio.Event()

    async def changed(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            self.seq += 1
            self.recent.append((self.seq, run_id))
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, after: int, timeout_s: float) -> tuple[int, list[str] | None]:
        """(the latest number, the runs changed after `after`); waits up to
        `timeout_s` while nothing changed. None instead of a list when
        `after` is unknown here (too old, or from before a restart): the
        caller must treat every run as changed."""
        if after == self.seq and timeout_s > 0:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                return self.seq, []
        if after < 0 or after > self.seq:
            return self.seq, None
        if self.recent and after < self.recent[0][0] - 1:
            return self.seq, None
        return self.seq, [run_id for seq, run_id in self.recent if seq > after]


def start(namespace: str, placement: dict[str, Any]) -> Any:
    """The deployment's RunEvents actor, created when missing."""
    actor: Any = RunEvents.options(  # type: ignore[attr-defined]
        name=EVENTS_NAME,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_concurrency=10_000,
        **placement,
    ).remote()
    return actor


def handle(namespace: str) -> Any:
    """The RunEvents actor, or None when this deployment has none yet."""
    try:
        return ray.get_actor(EVENTS_NAME, namespace=namespace)
    except ValueError:
        return None


class Notifier:
    """The Store hook: forwards changed run ids to RunEvents (never blocks,
    never fails the write that caused it). Changes made within a couple of
    milliseconds of each other go in one call: a burst of thousands of runs
    changing state must not cost a Ray call each."""

    #: how long a change waits for others to share its call
    COALESCE_S = 0.002

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._actor: Any = None
        self._pending: list[str] = []
        self._wake = threading.Condition()
        self._sender: threading.Thread | None = None

    def __call__(self, run_ids: list[str]) -> None:
        with self._wake:
            self._pending.extend(run_ids)
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(
                    target=self._send_loop, name="rayflow-run-change-notifier", daemon=True
                )
                self._sender.start()
            self._wake.notify()

    def _send_loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
            time.sleep(self.COALESCE_S)
            with self._wake:
                batch, self._pending = list(dict.fromkeys(self._pending)), []
            self._send(batch)

    def _send(self, run_ids: list[str]) -> None:
        if not ray.is_initialized():
            return
        if self._actor is None:
            self._actor = handle(self.namespace)
            if self._actor is None:
                return
        try:
            self._actor.changed.remote(run_ids)
        except Exception as e:  # a subscriber sees the change on its next read
            log.warning("could not notify run subscribers of %s: %s", run_ids, e)
            self._actor = None
