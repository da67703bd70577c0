"""The registered tasks' stream types for frontends: TypeScript and JSON Schema
(see rayflow/typescript.py; `rayflow types` writes the same files)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from rayflow import typescript
from rayflow._runtime.serving import current
from serve.deps import Caller

router = APIRouter(tags=["types"])


@router.get("/rayflow/v1/types.ts", response_class=PlainTextResponse)
async def typescript_types(who: Caller) -> PlainTextResponse:
    """`export type <Stream> = …` for every output and input stream of the
    registered tasks (any valid key or token)."""
    streams = await asyncio.to_thread(typescript.registered_streams, current().store)
    return PlainTextResponse(typescript.typescript(streams), media_type="text/plain")


@router.get("/rayflow/v1/schemas.json")
async def json_schemas(who: Caller) -> dict[str, Any]:
    """The JSON Schema of every output and input stream of the registered tasks."""
    streams = await asyncio.to_thread(typescript.registered_streams, current().store)
    return typescript.json_schemas(streams)
