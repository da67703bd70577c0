"""Starting (or joining) Ray and the control plane for `rayflow.init()`."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from rayflow._config import Settings
from rayflow._logging import ray_log_level
from rayflow._runtime import connection, ingress
from rayflow._runtime.connection import CONTROLLER_NAME, Connection
from rayflow.errors import RayflowError

log = logging.getLogger("rayflow")

#: every Ray cluster's head node has this resource (a single node is its own
#: head); a tiny share of it pins an actor there without using any CPU
HEAD_NODE_RESOURCE = "node:__internal_head__"


def on_head_node() -> dict[str, Any]:
    """Actor options that place a control-plane actor (Controller, Inbox) on
    the head node: runs come and go with worker nodes, the control plane
    lives as long as the cluster (losing the head loses the GCS anyway)."""
    return {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.0001}}


def start_ray(settings: Settings, *, serve_port: int | None = None) -> None:
    """Join the cluster at settings.address, or start a local Ray on loopback.

    `serve_port`: this process will serve the HTTP API on that port with one
    replica; a local Ray is started so that the replica listens on it itself
    (rayflow's listener or Serve's direct ingress, `ingress.py`)."""
    if ray.is_initialized():
        return  # as it was started (`ingress.direct_port()` tells)
    if settings.address is None:
        ingress.configure(serve_port, settings.http_ingress)
        # keep a local Ray on 127.0.0.1 only (docs/scaling.md)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
            # Ray reads that variable once, when it is imported: a script that
            # imported Ray before rayflow would otherwise start a GCS, raylet
            # and workers listening on every interface
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        # Ray runs workers at nice 15 by default; RunActors and Serve replicas
        # are the service here, not background work (measured: p99 several
        # times worse beside nice-0 processes on a busy box)
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Serve runs a replica's app on a second event loop in a thread of
        # its own unless told otherwise: two thread hops per request, and the
        # two loops take turns at the GIL. On the replica's own loop (one of
        # Serve's "throughput optimized" settings) a request costs less:
        # measured +25-30 % requests/s on one replica (benchmarks/README.md,
        # Durable Streams). rayflow's app never blocks its loop (Store calls
        # go to threads). A value the user set wins.
        os.environ.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
        ray.init(
            # its own local Ray, not whatever `ray start` left running
            # (join that with address="auto")
            address="local",
            namespace=settings.namespace,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            logging_level=ray_log_level(settings),
            configure_logging=True,
        )
    else:
        ingress.not_started()
        ray.init(
            address=settings.address,
            namespace=settings.namespace,
            logging_level=ray_log_level(settings),
        )


def resolved(settings: Settings) -> Settings:
    """Settings every process can use as they are: absolute paths, a store
    URL and a secret key decided once here."""
    data_dir = settings.data_dir.resolve()
    fixed = settings.model_copy(update={"data_dir": data_dir})
    return fixed.model_copy(
        update={"store": fixed.store_url(), "secret_key": connection.secret_key_for(fixed)}
    )


def start_control_plane(settings: Settings) -> Connection:
    from rayflow._runtime.controller import Controller

    settings_json = settings.model_dump_json()
    controller: Any = Controller.options(  # type: ignore[attr-defined]
        name=CONTROLLER_NAME,
        namespace=settings.namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        # calls in flight when it restarts are retried (all are idempotent
        # except trigger, which opts out)
        max_task_retries=-1,
        max_concurrency=10_000,
        **on_head_node(),
    ).remote(settings_json)
    from rayflow._runtime import run_events

    run_events.start(settings.namespace, on_head_node())
    store_url = ray.get(controller.start.remote())
    if store_url != settings.store_url():
        raise RayflowError(
            f"this Ray cluster's rayflow Controller uses the store {store_url}, not"
            f" {settings.store_url()}; use the same store (or another namespace)"
        )
    return connection.connect(settings, controller)
