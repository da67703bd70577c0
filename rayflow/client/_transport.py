"""HTTP plumbing of the client: one httpx.AsyncClient per event loop, and
every error status turned into the `rayflow.errors` class the server named.

The server's error body is `{"ok": false, "error", "code": <error class>,
"status", "detail"?}` (serve/errors.py); `code` names the same class the
in-cluster API raises, so a caller catches `RunNotFound` whichever API it
used. A status without a known code maps by status alone.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import httpx

from rayflow import errors

#: status -> error class when the body names none we know
_BY_STATUS: dict[int, type[errors.RayflowError]] = {
    400: errors.ValidationError,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.RunNotFound,
    408: errors.WaitTimeout,
    413: errors.PayloadTooLarge,
    422: errors.ValidationError,
    503: errors.Unavailable,
}


def jsonable(value: Any) -> Any:
    """`value` as JSON-ready data (pydantic models, dataclasses, datetimes…);
    pydantic_core is imported on the first call, not with the client."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)


def error_for(response: httpx.Response) -> errors.RayflowError:
    """The rayflow error an error response stands for."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("detail") or body.get("error") or response.text[:500])
    cls = getattr(errors, str(body.get("code", "")), None)
    if (
        not (isinstance(cls, type) and issubclass(cls, errors.RayflowError))
        or cls is errors.RunFailed
    ):
        cls = _BY_STATUS.get(response.status_code, errors.RayflowError)
    error = cls(f"{message} (HTTP {response.status_code} from {response.request.url.path})")
    error.run_id = body.get("runId") if isinstance(body.get("runId"), str) else None
    error.stream = body.get("stream") if isinstance(body.get("stream"), str) else None
    return error


class Transport:
    """Base URL, token and the per-loop httpx clients."""

    def __init__(self, base_url: str, token: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def client(self) -> httpx.AsyncClient:
        """This event loop's client (an httpx client is bound to its loop)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.timeout_s,
            )
            self._clients[loop] = client
        return client

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise the matching rayflow error for a 4xx/5xx."""
        try:
            response = await self.client().request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise errors.Unavailable(f"rayflow at {self.base_url} is unreachable: {e}") from e
        if response.status_code >= 400:
            raise error_for(response)
        return response

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await client.aclose()
