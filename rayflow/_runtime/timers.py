"""The Controller's periodic work: waitpoint deadlines, stray queued runs,
retention.

Deadlines live in the Store (`due_waitpoints`), so a restarted Controller
fires the ones it missed. Whoever resolves a waitpoint queues the run in the
same transaction and asks for a revival; the stray sweep launches any queued
run such a request never reached, so none is left behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from rayflow._runtime.admission import Admission
from rayflow._status import RunStatus, WaitpointStatus
from rayflow.store.base import Store, now_ms

log = logging.getLogger("rayflow")

#: a QUEUED run nobody launched for this long is launched by the sweep
STRAY_QUEUED_MS = 2000
#: how often finished runs past their retention are deleted
RETENTION_INTERVAL_S = 3600


async def timer_loop(
    store: Store,
    admission: Admission,
    revive: Callable[[str], Awaitable[bool]],
    interval_s: float,
) -> None:
    """Time out due waitpoints and wait tokens (and revive their runs); every
    `STRAY_QUEUED_MS`, launch stray queued runs. Runs until cancelled."""
    last_sweep = 0.0
    while True:
        try:
            for wp in await asyncio.to_thread(store.due_waitpoints, now_ms()):
                if await asyncio.to_thread(
                    store.resolve_waitpoint, wp.run_id, WaitpointStatus.TIMED_OUT, None
                ):
                    await revive(wp.run_id)
            # wait tokens past their timeout, and the runs waiting on them
            for run_id in await asyncio.to_thread(store.expire_wait_tokens, now_ms()):
                await revive(run_id)
            if time.monotonic() - last_sweep >= STRAY_QUEUED_MS / 1000:
                last_sweep = time.monotonic()
                await launch_strays(store, admission)
        except Exception:
            log.exception("waitpoint timer failed")
        await asyncio.sleep(interval_s)


async def launch_strays(store: Store, admission: Admission) -> None:
    """Launch queued runs that no revival request reached (the resolver
    died before it asked, or the request failed): none is left behind."""
    cutoff = now_ms() - STRAY_QUEUED_MS
    queued = await asyncio.to_thread(store.list_runs, statuses=[RunStatus.QUEUED], limit=10_000)
    for run in queued:
        if run.updated_at < cutoff and admission.launch(
            run.id, json.loads(run.options).get("resources"), front=True
        ):
            log.info("launching queued run %s that no revival reached", run.id)


async def retention_loop(cleanup_expired: Callable[[], Awaitable[int]]) -> None:
    """Delete finished runs past their retention, hourly. Runs until cancelled."""
    while True:
        try:
            removed = await cleanup_expired()
            if removed:
                log.info("retention removed %d finished runs", removed)
        except Exception:
            log.exception("retention clean-up failed")
        await asyncio.sleep(RETENTION_INTERVAL_S)
