"""A bounded pool of warm RunActors, so a trigger or revival skips start-up.

Starting an actor costs ~0.4 s on these machines (DESIGN §8); an idle one
costs ~50 MB. The pool keeps `size` started actors with the default
resources; a run that asks for other resources gets a fresh actor.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from rayflow._runtime.run_actor import RunActor

log = logging.getLogger("rayflow")


def actor_options(namespace: str, resources: dict[str, Any] | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": f"rayflow-run-{uuid.uuid4().hex[:16]}",
        "namespace": namespace,
        # detached: a run outlives a Controller restart
        "lifetime": "detached",
        "max_restarts": 0,
        "max_concurrency": 10_000,
    }
    for key in ("num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy"):
        if resources and resources.get(key) is not None:
            options[key] = resources[key]
    return options


class RunActorPool:
    def __init__(self, size: int, namespace: str, settings_json: str) -> None:
        self.size, self.namespace, self.settings_json = size, namespace, settings_json
        self._warm: list[tuple[str, Any]] = []
        self._filling: asyncio.Task[None] | None = None

    def fill_soon(self) -> None:
        if self.size > 0 and (self._filling is None or self._filling.done()):
            self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        while len(self._warm) < self.size:
            name, actor = self._start(None)
            try:
                await actor.ready.remote()
            except Exception:
                log.exception("a warm RunActor failed to start")
                return
            self._warm.append((name, actor))

    def _start(self, resources: dict[str, Any] | None) -> tuple[str, Any]:
        options = actor_options(self.namespace, resources)
        actor = RunActor.options(**options).remote(self.settings_json)  # type: ignore[attr-defined]
        return options["name"], actor

    async def take(self, resources: dict[str, Any] | None) -> tuple[str, Any]:
        """A started RunActor (warm when the defaults suffice)."""
        if not resources and self._warm:
            taken = self._warm.pop()
            self.fill_soon()
            return taken
        name, actor = self._start(resources)
        self.fill_soon()
        return name, actor

    def drain(self) -> list[Any]:
        actors = [a for _, a in self._warm]
        self._warm.clear()
        return actors
