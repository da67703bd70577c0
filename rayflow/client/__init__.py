"""A Python HTTP client for backends outside the Ray cluster (a Django or
FastAPI service, a notebook on a laptop): the in-cluster API's names and
semantics over rayflow's HTTP API.

    from rayflow.client import Client

    client = Client("http://127.0.0.1:8000", token=SECRET_KEY)
    handle = client.trigger("publish-post", {"post_id": "p1"}).result()
    for chunk in client.streams.read(handle.id, "progress"):
        print(chunk)
    client.send(handle.id, "approval", {"approved": True, "reviewer": "a"}).result()
    print(client.runs.wait(handle.id).result().output)

Every call returns a `Response`: `await` it in async code or call
`.result()` in blocking code, as with `rayflow.runs`. Errors are the
`rayflow.errors` classes the in-cluster API raises (the server names them).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from rayflow import errors
from rayflow._handles import RunHandle
from rayflow._response import Response
from rayflow.client._runs import Runs, RunSubscription
from rayflow.client._sessions import (
    SessionChannel,
    SessionHandle,
    SessionInfo,
    Sessions,
    SessionStreamReader,
)
from rayflow.client._streams import HttpStreamReader
from rayflow.client._transport import Transport, jsonable
from rayflow.client._wait import Wait


class Streams:
    """`client.streams`: read, append and send, like `rayflow.streams`."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def read(
        self, run_id: str, key: str = "default", *, start_index: int = 0, timeout_s: float = 60
    ) -> HttpStreamReader:
        """Chunks of the run's stream from `start_index`, then live ones,
        until it closes or `timeout_s` passes without one. Reconnects by
        itself (`Last-Event-ID`) and yields each chunk exactly once;
        `.next_index` says where a later read would resume. The server
        counts the idle timeout in whole seconds from 1 to 600: a shorter
        one waits 1 s, a longer one (or none) raises `InvalidArgument`."""
        return HttpStreamReader(self._t, run_id, key, start_index, timeout_s)

    def append(self, run_id: str, key: str, value: Any) -> Response[None]:
        """Append one JSON value to the run's stream `key` (secret key only).
        Resolves once it is durable. Raises `RunFinished`, `RunNotFound`."""
        line = json.dumps(jsonable(value)) + "\n"
        # the server's v1 writer: chunk 0 of a writer id used once, so a
        # retried request is stored once
        headers = {
            "Content-Type": "application/x-ndjson",
            "X-Client-Id": f"rayflow-client-{uuid.uuid4().hex}",
            "X-Resume-From-Chunk": "0",
        }

        async def go() -> None:
            await self._t.request(
                "POST",
                f"/realtime/v1/streams/{run_id}/self/{key}",
                content=line.encode(),
                headers=headers,
            )

        return Response(go)

    def send(
        self, run_id: str, stream_id: str, data: Any, *, idempotency_key: str | None = None
    ) -> Response[None]:
        """Send `data` to the run's input stream; resolves once it is durable.
        With `idempotency_key`, a send retried after a lost answer (a cut
        connection, a restarted server) is stored once. Raises
        `ValidationError` (wrong type: nothing stored), `RunFinished`,
        `RunNotFound`, `PayloadTooLarge`."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None

        async def go() -> None:
            await self._t.request(
                "POST",
                f"/realtime/v1/streams/{run_id}/input/{stream_id}",
                json={"data": jsonable(data)},
                headers=headers,
            )

        return Response(go)


class Auth:
    """`client.auth`: public access tokens for browsers (secret key only)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create_public_token(
        self,
        run_id: str | None = None,
        *,
        scopes: list[str] | None = None,
        ttl_s: int | None = None,
    ) -> Response[str]:
        """A token that reads the run and writes its input streams (or carries
        `scopes`), like `rayflow.auth.create_public_token`."""

        async def go() -> str:
            if run_id is not None and scopes is None:
                body: dict[str, Any] = {"ttlSeconds": ttl_s} if ttl_s else {}
                r = await self._t.request("POST", f"/rayflow/v1/runs/{run_id}/tokens", json=body)
            else:
                if not scopes:
                    raise errors.InvalidArgument(
                        "pass a run_id, or the scopes the token should carry"
                    )
                body = {"scopes": scopes}
                if ttl_s:
                    body["expirationTime"] = f"{ttl_s}s"
                r = await self._t.request("POST", "/api/v1/auth/public-tokens", json=body)
            token: str = r.json()["token"]
            return token

        return Response(go)


class Client:
    """rayflow over HTTP: `trigger`, `batch_trigger`, `send`, `runs.*`,
    `streams.*`, `auth.create_public_token`, `wait.*` (wait tokens),
    `sessions.*`. `token` is the secret key (or a public access token, for
    what its scopes allow)."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self._t = Transport(base_url, token, timeout_s)
        self.runs = Runs(self._t)
        self.streams = Streams(self._t)
        self.auth = Auth(self._t)
        self.wait = Wait(self._t)
        self.sessions = Sessions(self._t)

    def trigger(
        self,
        task_id: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        tags: list[str] | None = None,
        max_duration: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Response[RunHandle]:
        """Start a run of a registered task; resolves to its `RunHandle`
        (with the run's public access token). Raises `TaskNotFound`,
        `ValidationError`."""
        options = _options(idempotency_key, tags, max_duration, metadata)

        async def go() -> RunHandle:
            r = await self._t.request(
                "POST",
                f"/api/v1/tasks/{task_id}/trigger",
                json={"payload": jsonable(payload), "options": options},
            )
            body = r.json()
            return RunHandle(
                id=body["id"],
                public_access_token=r.headers.get("x-trigger-jwt", ""),
                task_id=task_id,
                is_cached=bool(body.get("isCached")),
            )

        return Response(go)

    def batch_trigger(
        self,
        task_id: str,
        payloads: list[Any],
        *,
        idempotency_keys: list[str | None] | None = None,
        tags: list[str] | None = None,
    ) -> Response[list[RunHandle]]:
        """Start one run per payload; resolves to their handles, in order.
        Their tokens are empty (ask `auth.create_public_token(run_id)`); the
        batch id is `handles[0]`'s `runs.retrieve(...).batch_id`."""
        keys = idempotency_keys or [None] * len(payloads)
        if len(keys) != len(payloads):
            raise errors.InvalidArgument(
                f"{len(payloads)} payloads but {len(keys)} idempotency keys"
            )
        items = [
            {"payload": jsonable(p), "options": _options(k, tags, None, None)}
            for p, k in zip(payloads, keys, strict=True)
        ]

        async def go() -> list[RunHandle]:
            r = await self._t.request(
                "POST", f"/api/v1/tasks/{task_id}/batch", json={"items": items}
            )
            return [
                RunHandle(
                    id=run["id"],
                    public_access_token="",
                    task_id=task_id,
                    is_cached=bool(run.get("isCached")),
                )
                for run in r.json()["runs"]
            ]

        return Response(go)

    def send(
        self, run_id: str, stream_id: str, data: Any, *, idempotency_key: str | None = None
    ) -> Response[None]:
        """Send to a run's input stream (see `Streams.send`)."""
        return self.streams.send(run_id, stream_id, data, idempotency_key=idempotency_key)

    async def aclose(self) -> None:
        """Close this event loop's connections (optional)."""
        await self._t.aclose()


def _options(
    key: str | None, tags: list[str] | None, max_duration: int | None, metadata: Any
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if key is not None:
        options["idempotencyKey"] = key
    if tags:
        options["tags"] = tags
    if max_duration is not None:
        options["maxDuration"] = max_duration
    if metadata is not None:
        options["metadata"] = jsonable(metadata)
    return options


__all__ = [
    "Auth",
    "Client",
    "HttpStreamReader",
    "RunSubscription",
    "Runs",
    "SessionChannel",
    "SessionHandle",
    "SessionInfo",
    "SessionStreamReader",
    "Sessions",
    "Streams",
]
