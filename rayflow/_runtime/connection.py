"""This process's link to a rayflow deployment: settings, Store, Controller.

A driver gets it from `rayflow.init()`; the Controller and every RunActor
build it from the settings the driver passed down, so task code can call the
same public API (trigger, send, read) as a script.
"""

from __future__ import annotations

import gc
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from rayflow._config import Settings
from rayflow.errors import NotInitialized
from rayflow.store import Store, open_store

CONTROLLER_NAME = "rayflow-controller"


@dataclass
class Connection:
    settings: Settings
    store: Store
    secret_key: str
    _controller: Any = None

    @property
    def controller(self) -> Any:
        if self._controller is None:
            self._controller = ray.get_actor(CONTROLLER_NAME, namespace=self.settings.namespace)
        return self._controller


_current: Connection | None = None
_lock = threading.Lock()


def current() -> Connection:
    if _current is None:
        raise NotInitialized(
            "rayflow is not initialised in this process; call rayflow.init() first"
        )
    return _current


def is_connected() -> bool:
    return _current is not None


def secret_key_for(settings: Settings) -> str:
    """The configured secret key, or one generated once and kept in data_dir."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "rf_sk_" + secrets.token_urlsafe(24)
    # written whole to a file only its owner can read (mkstemp: 0600), then
    # linked into place: the key is never readable by others, not even for a
    # moment, and two processes starting at once agree on one key
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        os.unlink(tmp)
    return key


def connect(settings: Settings, controller: Any = None, *, run_actor: bool = False) -> Connection:
    """Open this process's connection (idempotent for the same store). A
    RunActor's Store pool is small and lazy (`run_actor_store_connections`,
    none held while idle): ~100 of them share one PostgreSQL server."""
    global _current
    with _lock:
        if _current is not None and _current.store.url == open_url(settings):
            if controller is not None:
                _current._controller = controller
            return _current
        store = open_store(
            open_url(settings),
            sqlite_synchronous=settings.sqlite_synchronous,
            pool_min_size=0 if run_actor else 1,
            pool_max_size=(
                settings.run_actor_store_connections if run_actor else settings.store_connections
            ),
        )
        from rayflow._runtime import named_signals
        from rayflow._runtime.run_events import Notifier

        store.on_run_change = notifier = Notifier(settings.namespace)
        store.on_named_change = named_signals.hook(notifier)
        settings = settings.model_copy(update={"secret_key": secret_key_for(settings)})
        assert settings.secret_key is not None
        _current = Connection(settings, store, settings.secret_key, controller)
        # what this process holds so far (Ray, its modules, the Store) lives
        # as long as the process: out of the cyclic collector's full passes.
        # A stream writer allocates a few objects per chunk; with Ray's heap
        # in every full pass, the collector took half a writer's CPU
        # (benchmarks/README.md, "Issue 10, session 5")
        gc.freeze()
        return _current


def open_url(settings: Settings) -> str:
    return settings.store_url()


def disconnect() -> None:
    global _current
    with _lock:
        if _current is not None:
            _current.store.close()
        _current = None
