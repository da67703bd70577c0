"""The floor under any Python HTTP server on this box: uvicorn (httptools,
uvloop) serving a raw ASGI app that reads each request's body and answers
204 — no framework, no Store, no Serve. benchmarks/ds_producers.py runs it
beside rayflow and the reference server with the same load.

    python benchmarks/_noop_http.py <port>
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
