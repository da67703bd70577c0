"""The OpenAPI document, finished where FastAPI's own falls short.

- Links: a trigger returns a run id; every operation on one run takes it as
  `run_id`, and a batch trigger's `batchId` is what the batch subscription
  takes. Links say so, for generated clients and for stateful API testing
  (tests/test_fuzz_api.py follows them: trigger → run, streams, inputs, cancel).
- Errors are JSON (`ErrorBody`) on every operation, also where the success
  is text (FastAPI documents them in the route's own media type).
- A `HEAD` answer has no body (FastAPI documents a JSON one).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

TRIGGER = ("/api/v1/tasks/{task_id}/trigger", "post")
BATCH = ("/api/v1/tasks/{task_id}/batch", "post")


def _links(schema: dict[str, Any], param: str, expression: str) -> dict[str, Any]:
    links: dict[str, Any] = {}
    for path, operations in schema.get("paths", {}).items():
        if "{" + param + "}" not in path:
            continue
        for operation in operations.values():
            op_id = operation.get("operationId")
            if op_id:
                links[op_id] = {"operationId": op_id, "parameters": {param: expression}}
    return links


ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def _fix_responses(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.get("responses", {})
            for status in ("4XX", "5XX"):
                if status in responses:
                    responses[status]["content"] = ERROR_CONTENT
            if method == "head" and "200" in responses:
                responses["200"].pop("content", None)


def finish(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with links from the trigger and batch answers, errors as
    JSON and bodiless HEADs (in place)."""
    _fix_responses(schema)
    paths = schema.get("paths", {})
    trigger = paths.get(TRIGGER[0], {}).get(TRIGGER[1])
    if trigger is not None:
        trigger["responses"]["200"]["links"] = _links(schema, "run_id", "$response.body#/id")
    batch = paths.get(BATCH[0], {}).get(BATCH[1])
    if batch is not None:
        batch["responses"]["200"]["links"] = {
            **_links(schema, "run_id", "$response.body#/runs/0/id"),
            **_links(schema, "batch_id", "$response.body#/batchId"),
        }
    return schema


def install(app: FastAPI) -> None:
    """Serve the document with its links (built once, on first request)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
