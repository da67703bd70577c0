"""The one place where errors become HTTP responses.

Every `rayflow.errors.RayflowError` subclass carries its status code
(`http_status`); request-validation failures are 422; anything unexpected is
a 500 with a JSON body, sent by `serve.middleware` (the traceback goes to
the log, never to the client).
Every body is `{"ok": false, "error": <message>, "code": <error name>}` —
`error` is what Trigger.dev's clients show the user — with `runId` and
`stream` added when the error names a run or a stream.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from rayflow.errors import RayflowError

log = logging.getLogger("rayflow.serve")


class ErrorBody(BaseModel):
    """Every error response's body (docs/wire.md, "Errors and permissions")."""

    ok: bool = False
    #: what Trigger.dev's clients show
    error: str
    #: the `rayflow.errors` class (or BadRequest, NotFound, InternalError, …)
    code: str
    status: int
    #: rayflow's own message where the wire fixes `error`'s text
    detail: str | None = None
    #: the run and the stream (output key or input stream id) the error names
    runId: str | None = None
    stream: str | None = None


#: documented on every operation of the OpenAPI document
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "the request was refused; nothing was done"},
    "5XX": {"model": ErrorBody, "description": "internal error (the traceback is in the log)"},
}


class BadRequest(RayflowError):
    """The request is malformed in a way no other error names (400)."""

    http_status = 400


def plain(exc: RayflowError) -> RayflowError:
    """The rayflow error itself when Ray wrapped it on its way out of an actor
    (`RayTaskError(RunNotFound)`: its name and text carry the actor's
    traceback, which must not reach a client)."""
    import ray.exceptions

    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, RayflowError):
        return plain(cause)
    return exc


class RouteError(RayflowError):
    """An error whose wire message differs from rayflow's own (docs/wire.md fixes
    some texts, e.g. "Run not found"); the rayflow message goes in `detail`.
    `run_id` and `stream` name the request's run and stream where `cause` names none."""

    def __init__(
        self,
        status: int,
        wire_message: str,
        cause: RayflowError,
        *,
        run_id: str | None = None,
        stream: str | None = None,
    ) -> None:
        cause = plain(cause)
        super().__init__(wire_message, run_id=cause.run_id or run_id, stream=cause.stream or stream)
        self.http_status = status
        self.code = type(cause).__name__
        self.detail = str(cause)


def error_body(status: int, message: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": message, "code": code, "status": status, **extra}


#: Trigger.dev's clients retry a 409 (a lock timeout, on its servers) unless told
#: not to; every rayflow 409 is final (closed, canceled, a conflicting key)
NO_RETRY = {"x-should-retry": "false"}


def error_response(status: int, message: str, code: str, **extra: Any) -> JSONResponse:
    headers = NO_RETRY if status == 409 else None
    return JSONResponse(
        error_body(status, message, code, **extra), status_code=status, headers=headers
    )


def rayflow_error_response(exc: RayflowError) -> JSONResponse:
    exc = plain(exc)
    names = {"runId": exc.run_id, "stream": exc.stream}
    extra: dict[str, Any] = {k: v for k, v in names.items() if v is not None}
    if isinstance(exc, RouteError):
        return error_response(exc.http_status, str(exc), exc.code, detail=exc.detail, **extra)
    return error_response(exc.http_status, str(exc), type(exc).__name__, **extra)


def answer_rayflow_error(exc: RayflowError) -> JSONResponse:
    """What the app answers for `exc` (a 5xx is logged with its traceback)."""
    if exc.http_status >= 500:
        log.error("request failed: %s", exc, exc_info=exc)
    return rayflow_error_response(exc)


def answer_http_error(exc: HTTPException) -> JSONResponse:
    """What the app answers for Starlette's `exc` (e.g. a body over its limit)."""
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    code = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}
    return error_response(exc.status_code, message, code.get(exc.status_code, "HTTPError"))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into a JSON response."""

    async def on_rayflow(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RayflowError)
        return answer_rayflow_error(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, _validation_message(exc), "ValidationError")

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return answer_http_error(exc)

    app.add_exception_handler(RayflowError, on_rayflow)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
