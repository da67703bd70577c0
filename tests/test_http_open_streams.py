"""Long-lived requests a public token can hold (issue 20, item 18): at most
`max_streams_per_token` SSE bodies and live subscriptions per token and
replica (429 past it, freed when one ends)."""

from __future__ import annotations

import httpx
import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import STREAMS_PER_TOKEN, HttpApi, trigger
from conftest import eventually_async

import rayflow


@pytest.mark.parametrize("rf", ["sqlite"], indirect=True)
async def test_a_token_holds_a_bounded_number_of_streams(http_tasks: HttpApi) -> None:
    limit = STREAMS_PER_TOKEN
    run_id, token = await trigger(http_tasks, "http-hold", {"hold_s": 120})
    sse = {"Accept": "text/event-stream", "Timeout-Seconds": "60"}
    limits = httpx.Limits(max_connections=limit + 10)
    async with httpx.AsyncClient(base_url=http_tasks.url, timeout=30, limits=limits) as c:

        async def open_one(n: str, auth: str = token) -> httpx.Response:
            request = c.build_request(
                "GET",
                f"/realtime/v1/streams/{run_id}/open-{n}",
                headers={**sse, **http_tasks.headers(auth)},
            )
            return await c.send(request, stream=True)

        held = [await open_one(str(i)) for i in range(limit)]
        try:
            assert all(r.status_code == 200 for r in held)
            over = await open_one("over")
            await over.aread()
            assert over.status_code == 429, over.text
            assert over.json()["code"] == "TooManyRequests"
            assert "RAYFLOW_MAX_STREAMS_PER_TOKEN" in over.json()["error"]
            # a live run subscription counts too
            shape = await c.get(
                f"/realtime/v1/runs/{run_id}",
                headers=http_tasks.headers(token),
                params={"offset": "1_1", "live": "true"},
            )
            assert shape.status_code == 429, shape.text
            # the secret key is not limited
            backend = await open_one("backend", http_tasks.secret_key)
            assert backend.status_code == 200
            await backend.aclose()
            # one ends: the token may open another
            await held.pop().aclose()

            async def reopened() -> bool:
                again = await open_one("again")
                if again.status_code == 200:
                    held.append(again)
                    return True
                await again.aclose()
                return False

            await eventually_async(reopened, timeout_s=30, what="a freed slot")
        finally:
            for r in held:
                await r.aclose()
    await rayflow.runs.cancel(run_id)
