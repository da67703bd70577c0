"""How loud Ray and Ray Serve are in the processes rayflow starts.

`RAYFLOW_LOG_LEVEL` (Settings.log_level) is the level of Ray's and Ray
Serve's own logs: the driver's Ray logger, Serve's controller and proxy, and
the HTTP API's replicas. The default, ERROR, keeps a terminal to rayflow's
output and the tasks' own prints — no Ray notices (such as the one about
token authentication) and no Serve access-log line per request. INFO or
DEBUG bring everything back, the access log included. rayflow's own
loggers (`rayflow`, `rayflow.serve`) are not affected.
"""

from __future__ import annotations

import logging
from typing import Any

from rayflow._config import Settings

LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


def ray_log_level(settings: Settings) -> int:
    """The `logging_level` for `ray.init`."""
    return LEVELS[settings.log_level]


def serve_logging_config(settings: Settings) -> dict[str, Any]:
    """Ray Serve's `logging_config` for `serve.start` and the deployment."""
    return {
        "log_level": settings.log_level,
        "enable_access_log": ray_log_level(settings) <= logging.INFO,
    }
