"""`WaitToken` and `WaitTokenInfo`: a wait token as a user sees it
(`rayflow.wait`, the HTTP client's `client.wait`).

No Ray here: the HTTP client (`rayflow.client`, the `rayflow-client`
distribution) imports it without the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rayflow._status import WaitTokenStatus
from rayflow.errors import RayflowError


@dataclass(frozen=True)
class WaitToken:
    """A created token: its id, the `url` a webhook may POST its data to,
    and a public access token that can complete it (only it) from a browser."""

    id: str
    url: str
    public_access_token: str
    #: True when the idempotency key named a token created earlier
    is_cached: bool = False


@dataclass(frozen=True)
class WaitTokenInfo:
    """A token as `retrieve_token` and `list_tokens` see it; `output` is the
    data it was completed with, `error` a `WaitTimeout` when it timed out."""

    id: str
    url: str
    status: WaitTokenStatus
    tags: list[str]
    created_at: datetime
    completed_at: datetime | None = None
    timeout_at: datetime | None = None
    idempotency_key: str | None = None
    idempotency_key_expires_at: datetime | None = None
    output: Any = None
    error: RayflowError | None = None
