"""rayflow, client only (the `rayflow-client` distribution): the HTTP client
for backends that talk to a rayflow deployment without running Ray.

    from rayflow.client import Client

    client = Client("http://127.0.0.1:8000", secret_key)
    run = await client.trigger("hello", {"name": "Ada"})

Everything else of rayflow (tasks, streams, `rayflow.init`) needs the full
distribution: `pip install rayflow` (it holds this client too; install one
or the other).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    raise AttributeError(
        f"rayflow.{name} is not part of rayflow-client, which holds only the HTTP client"
        " (rayflow.client); install rayflow for tasks, streams and rayflow.init"
    )
