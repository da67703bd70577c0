"""Telling RunActors of rows committed outside them (`run_appender`'s
second half): per process, one daemon thread with an event loop of its own
(`telling`) and one `_Teller` per RunActor, so that the runs an actor
executes are told together, one `RunActor.published` call in flight, and
under a flood calls at least `TELL_GAP_S` apart. Which actor: the one last
seen executing the run (`locations`), else the one the run's row named in
the commit, else the Controller's answer; an actor that answers a run as
not its own, or a dead one, means locate again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import ray

from rayflow._runtime import connection, locations, push_outbox
from rayflow._runtime.calls import PerProcess, call, shared_task
from rayflow._runtime.stream_rows import Row

__all__ = ["TELL_GAP_S", "TELL_TRIES", "telling"]

log = logging.getLogger("rayflow")

#: under a flood (commits to its runs came while a call was out) calls
#: telling one RunActor begin at least this far apart: a call costs the
#: actor ~0.6 ms of CPU whatever it carries (Ray's machinery; measured at
#: 2,000 HTTP appends/s, benchmarks/README.md), so a flood's commits are
#: told together (a flood lasts until no commit came for TELL_GAP_S after
#: a call began). Otherwise a commit while no call is out is told at once. Readers
#: that take pushes (a Serve replica's SSE) do not wait for it; those
#: following the RunActor (`streams.read`) may, under a flood only.
TELL_GAP_S = 0.02
#: how often telling a RunActor is tried when the run keeps moving
TELL_TRIES = 10


class _Telling:
    """The process's tellers, on a daemon thread's event loop of their own:
    telling outlives the event loop whose commit it follows. One teller per
    RunActor: the runs it executes are told together, in one call."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        #: per RunActor (its actor id), the teller of its runs' rows
        self._tellers: dict[Any, _Teller] = {}
        #: per run whose RunActor is being located, the rows waiting for it
        self._locating: dict[str, dict[str, list[Row]]] = {}
        #: the RunActor names being looked up (`locations.named`)
        self._naming: dict[str, asyncio.Future[Any]] = {}
        threading.Thread(target=self._loop.run_forever, name="rayflow-tell", daemon=True).start()

    def tell(
        self, news: dict[str, list[tuple[str, list[Row]]]], actors: dict[str, str] | None = None
    ) -> None:
        """Tell each run's RunActor of its committed rows (from any thread);
        `actors`: per run, the name of the actor its row says executes it."""
        self._loop.call_soon_threadsafe(self._add, news, actors or {})

    def _add(self, news: dict[str, list[tuple[str, list[Row]]]], actors: dict[str, str]) -> None:
        for run_id, run_news in news.items():
            self.route(run_id, run_news, 0, actors.get(run_id))

    def route(
        self, run_id: str, news: list[tuple[str, list[Row]]], tries: int, name: str | None = None
    ) -> None:
        """To the teller of the RunActor last seen executing the run, or
        (unknown here) the actor named `name` — the run's row named it in the
        commit, so a process's first write to a run is told without asking
        the Controller — or else once the Controller says which it is. A
        name is a hint: an actor that no longer executes the run answers so,
        and the run is located again (`tries` > 0 takes no hint)."""
        actor = locations.cached(run_id)
        if actor is None and name is not None and tries == 0:
            # already looked up here: no thread hop
            actor = locations.named_now(name)
            if actor is not None:
                locations.remember(run_id, actor)
        if actor is not None:
            key = actor._actor_id
            teller = self._tellers.get(key)
            if teller is None:
                teller = self._tellers[key] = _Teller(actor, key, self)
            teller.add(run_id, news, tries)
            return
        waiting = self._locating.get(run_id)
        if waiting is None:
            waiting = self._locating[run_id] = {}
            shared_task(self._locate(run_id, tries, name if tries == 0 else None))
        for key_, rows in news:
            waiting.setdefault(key_, []).extend(rows)

    async def _locate(self, run_id: str, tries: int, name: str | None) -> None:
        actor = None
        if name is not None:
            actor = await self._by_name(name)
            if actor is not None:
                locations.remember(run_id, actor)
        try:
            if actor is None:
                _, actor = await locations.locate(run_id)
        except Exception:  # e.g. the Controller is restarting: readers find the Store
            log.debug("rayflow: could not locate run %s to tell it of new chunks", run_id)
            actor = None
        news = self._locating.pop(run_id, {})
        if actor is not None and news:
            # not live: whoever executes it next loads its streams from the Store
            self.route(run_id, list(news.items()), tries)

    async def _by_name(self, name: str) -> Any:
        """The RunActor named `name` (`locations.named`: one Ray lookup per
        actor and process, shared by the runs waiting for it), or None when
        Ray knows none."""
        looking = self._naming.get(name)
        if looking is None:
            looking = self._naming[name] = asyncio.ensure_future(self._look_up(name))
            looking.add_done_callback(lambda _: self._naming.pop(name, None))
        return await asyncio.shield(looking)

    async def _look_up(self, name: str) -> Any:
        try:
            namespace = connection.current().settings.namespace
            found = await asyncio.to_thread(locations.named, [name], namespace)
        except Exception as e:  # GCS trouble: the Controller knows where the run is
            log.debug("rayflow: no RunActor named %s: %s", name, e)
            return None
        return found.get(name)

    def done(self, teller: _Teller) -> None:
        if self._tellers.get(teller.key) is teller:
            del self._tellers[teller.key]


#: the process's telling thread (started on first use)
telling = PerProcess(_Telling)


class _Teller:
    """Tells one RunActor about this process's commits to the runs it
    executes: one call in flight; what commits meanwhile, to any of its
    runs, goes in the next call together, which under a flood begins
    `TELL_GAP_S` after the last (a flood costs the actor one call per
    `TELL_GAP_S`, not one per commit, stream or run)."""

    def __init__(self, actor: Any, key: Any, telling: _Telling) -> None:
        self.actor, self.key, self._telling = actor, key, telling
        #: per run: (per key, its rows), how often the run was told before
        self._news: dict[str, tuple[dict[str, list[Row]], int]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, run_id: str, news: list[tuple[str, list[Row]]], tries: int) -> None:
        pending = self._news.get(run_id)
        if pending is None:
            pending = self._news[run_id] = ({}, tries)
        for key, rows in news:
            pending[0].setdefault(key, []).extend(rows)
        if self._task is None or self._task.done():
            self._task = shared_task(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        flood = False
        try:
            while self._news:
                began = loop.time()
                batch, self._news = self._news, {}
                await self._tell(batch)
                # commits came while the call was out (a flood), or came
                # during one earlier and the flood may go on (the next
                # commit can land just after the call returned): what
                # commits until TELL_GAP_S after it began goes in the next
                flood = flood or bool(self._news)
                if flood:
                    wait = began + TELL_GAP_S - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
        finally:
            if not self._news:
                self._telling.done(self)

    async def _tell(self, batch: dict[str, tuple[dict[str, list[Row]], int]]) -> None:
        news = [(run_id, list(keys.items())) for run_id, (keys, _) in batch.items()]
        try:
            moved, followers = await call(self.actor.published.remote(news))
        except ray.exceptions.RayActorError:
            moved = list(batch)  # the actor is gone: where do its runs execute now?
            locations.dead(self.actor)
        except Exception as e:
            log.warning("rayflow: telling runs %s of new chunks failed: %s", list(batch), e)
            return
        else:
            push_outbox.learn(followers)  # the next commits go there straight
        for run_id in moved:
            push_outbox.forget(run_id)
            locations.forget(run_id, self.actor)  # it left that actor: look again
            keys, tries = batch[run_id]
            if tries + 1 >= TELL_TRIES:
                log.warning(
                    "rayflow: run %s kept moving; its followers read new chunks later", run_id
                )
                continue
            self._telling.route(run_id, list(keys.items()), tries + 1)
