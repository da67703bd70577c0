"""Joining a running rayflow from the CLI: the dev file `rayflow dev` writes,
RAYFLOW_ADDRESS, Ray's auth mode and loopback setting, and quiet Ray/Serve logs.

Ray reads some settings only when first imported or first initialised, so a
few of these reach into Ray's private modules; each says why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from rayflow._config import Settings
from rayflow._logging import ray_log_level, serve_logging_config
from rayflow.cli._failure import CLIError

#: in the data directory: where the running `rayflow dev` is (pid, Ray address, store)
DEV_FILE = "dev.json"


def settings_for(data_dir: Path | None) -> Settings:
    s = Settings()
    if data_dir is not None:
        s = s.model_copy(update={"data_dir": data_dir})
    return s.model_copy(update={"data_dir": s.data_dir.resolve()})


def read_dev_file(settings: Settings) -> dict[str, Any] | None:
    path = settings.data_dir / DEV_FILE
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None  # that `rayflow dev` is gone
    return info


def loopback_ray() -> None:
    """Keep the Ray this command starts or joins on 127.0.0.1 (docs/scaling.md), unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER says otherwise. Ray reads that variable when it is
    imported, which has happened by now: set it for the processes Ray starts and apply
    it to the imported Ray (nothing is changed at import time)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def quiet_ray_logs(settings: Settings) -> None:
    """Ray's and Serve's loggers at RAYFLOW_LOG_LEVEL (rayflow/_logging.py)."""
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(ray_log_level(settings))


def _use_ray_auth(mode: str | None) -> None:
    """Ray turns token auth on by default for a local cluster, but a driver joining
    by explicit address must be told (~/.ray/auth_token holds the token)."""
    if not mode or os.environ.get("RAY_AUTH_MODE"):
        return
    os.environ["RAY_AUTH_MODE"] = mode
    with contextlib.suppress(ImportError):  # Ray reads the mode again only when told to
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")


def connect(data_dir: Path | None) -> dict[str, Any]:
    """Join the running deployment: RAYFLOW_ADDRESS, else the `rayflow dev` of the data dir.
    Returns the dev file's contents (empty when joining by address)."""
    import ray

    import rayflow

    settings = settings_for(data_dir)
    quiet_ray_logs(settings)
    loopback_ray()
    if settings.address:
        ray.init(
            address=settings.address,
            namespace=settings.namespace,
            log_to_driver=False,
            logging_level=ray_log_level(settings),
        )
        rayflow.init(address=settings.address, data_dir=settings.data_dir)
        return {}
    info = read_dev_file(settings)
    if info is None:
        raise CLIError(
            f"no rayflow is running for {settings.data_dir}: start one with `rayflow dev`"
            " (or set RAYFLOW_ADDRESS / RAYFLOW_DATA_DIR)"
        )
    _use_ray_auth(info.get("ray_auth_mode"))
    ray.init(
        address=info["ray_address"],
        namespace=info["namespace"],
        _node_ip_address=info.get("node_ip", "127.0.0.1"),
        log_to_driver=False,
        logging_level=ray_log_level(settings),
    )
    rayflow.init(
        address=info["ray_address"],
        store=info["store"],
        data_dir=settings.data_dir,
        namespace=info["namespace"],
    )
    return info


def start_quiet_serve(host: str, port: int, settings: Settings) -> None:
    """Start Serve at RAYFLOW_LOG_LEVEL (by default without its per-request access
    log), so the terminal shows the banner and the tasks' own output; serve/app.py
    then deploys onto it."""
    from ray import serve

    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": host, "port": port},
        logging_config=serve_logging_config(settings),
    )
