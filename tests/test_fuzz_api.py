"""API fuzzing (issue 11): schemathesis drives the live HTTP API from its own
OpenAPI document, stateless (every operation, valid and invalid data) and
stateful (the schema's links: trigger → run → streams, inputs, cancel,
tokens), with every kind of credential a caller can hold.

Properties, checked on every response:
- no 5xx;
- every error is a JSON body `{"ok": false, "error", "code", "status"}` whose
  `code` is one docs/wire.md documents and whose `status` is the response's;
- a rejected write (any 4xx to a POST/PUT) stored nothing: no new run, no
  input message, no output chunk (the Store is read before and after);
- a 2xx is what the schema says (schemathesis' own conformance checks).

The bounded run is in the default suite (derandomized: the same cases every
time); `-m slow` runs the long one. Figures: docs/fuzzing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import jwt
import pytest
import schemathesis
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi, trigger
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition, Unsatisfiable
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import Failure, FailureGroup

import rayflow
from rayflow import errors as rf_errors
from rayflow import task
from rayflow._runtime.connection import current
from rayflow._tokens import mint_token, run_scopes, token_claims

pytestmark = pytest.mark.parametrize("rf", ["sqlite"], indirect=True)

#: error codes docs/wire.md documents ("Errors and permissions")
DOCUMENTED_CODES = {
    name
    for name, cls in vars(rf_errors).items()
    if isinstance(cls, type) and issubclass(cls, rf_errors.RayflowError)
} | {"BadRequest", "InternalError", "NotFound", "MethodNotAllowed", "session_closed"}
#: a status per code where the class fixes it (RouteError keeps the cause's name)
CODE_STATUS = {
    name: cls.http_status
    for name, cls in vars(rf_errors).items()
    if isinstance(cls, type) and issubclass(cls, rf_errors.RayflowError) and name != "RayflowError"
} | {"BadRequest": 400, "NotFound": 404, "MethodNotAllowed": 405}

#: requests that may answer by streaming or long-polling are cut short: a
#: live SSE body or a `live=true` shape poll ends only with its run
REQUEST_TIMEOUT_S = 2.0


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """The v1 writer's body: the fuzzed text as it is (lines of anything), or
    a list as one JSON value per line."""
    if isinstance(value, list):
        return b"".join(json.dumps(v).encode() + b"\n" for v in value)
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


@task(id="fuzz-echo")
async def fuzz_echo(payload: Any) -> dict:  # type: ignore[type-arg]
    """Finish at once, writing nothing (a run the fuzzer may trigger freely)."""
    return {"ok": True}


@dataclass
class Figures:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    operations: set[str] = field(default_factory=set)
    timeouts: int = 0
    stateful_requests: int = 0
    #: scenarios that ended early on a cut-off long poll or an uneven replay
    cut_scenarios: int = 0
    rejected_writes: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.requests} requests ({self.stateful_requests} in stateful scenarios), "
            f"{len(self.operations)} operations, {self.rejected_writes} rejected writes checked,"
            f" {len(self.failures)} failures, {self.cut_scenarios} scenarios cut short, "
            f"{self.timeouts} cut-off long polls, statuses {dict(sorted(self.statuses.items()))}"
        )


@dataclass
class World:
    """The live server, the runs the fuzzer may name, and the credentials."""

    api: HttpApi
    runs: dict[str, str]  # role -> run id
    created: set[str] = field(default_factory=set)  # runs created by accepted triggers
    figures: Figures = field(default_factory=Figures)

    def credentials(self) -> dict[str, str | None]:
        key = self.api.secret_key
        live = self.runs["live"]
        waiting = self.runs["waiting"]
        expired = dict(token_claims(["admin"], 60), exp=int(time.time()) - 10)
        not_public = dict(token_claims(["admin"], 60), pub=False)
        return {
            "secret": key,
            "admin-token": mint_token(key, ["admin"]),
            "run-token-live": mint_token(key, run_scopes(live)),
            "run-token-waiting": mint_token(key, run_scopes(waiting)),
            "read-all": mint_token(key, ["read:runs"]),
            "trigger-token": mint_token(key, ["trigger:tasks:fuzz-echo"]),
            "no-scopes": mint_token(key, []),
            "expired": jwt.encode(expired, key, algorithm="HS256"),
            "not-public": jwt.encode(not_public, key, algorithm="HS256"),
            "wrong-key": mint_token("not-the-secret-key", ["admin"]),
            "garbage": "x.y.z",
            "none": None,
        }

    def fingerprint(self) -> tuple[Any, ...]:
        """What a write could have stored: the newest run, and per known run
        its input messages and output stream lengths."""
        store = current().store
        newest = [r.id for r in store.list_runs(limit=1)]
        parts: list[Any] = [(newest[0] if newest else None)]
        for run_id in sorted({*self.runs.values(), *self.created}):
            inbox = store.inbox_usage(run_id)
            outputs = sorted((s.key, s.length) for s in store.list_streams(run_id))
            parts.append((run_id, sorted(inbox.items()), outputs))
        return tuple(parts)


#: schemathesis' own checks: the response is what the OpenAPI document says
CONFORMANCE = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def check_conformance(world: World, case: Any, response: Any) -> None:
    what = f"{case.operation.method.upper()} {case.formatted_path} -> {response.status_code}"
    try:
        case.validate_response(response, checks=CONFORMANCE)
    except (Failure, FailureGroup) as e:
        world.figures.failures.append(f"{what}: {str(e)[:600]}")


def check_response(world: World, case: Any, status: int, headers: Any, body: bytes) -> None:
    """The properties every response must hold (module docstring)."""
    what = f"{case.operation.method.upper()} {case.formatted_path} -> {status}"
    if status >= 500:
        world.figures.failures.append(f"{what}: server error {body[:300]!r}")
        return
    if status < 400 or case.operation.method.upper() == "HEAD":
        return
    try:
        data = json.loads(body)
    except ValueError:
        world.figures.failures.append(f"{what}: error body is not JSON: {body[:200]!r}")
        return
    if not (
        isinstance(data, dict)
        and data.get("ok") is False
        and isinstance(data.get("error"), str)
        and data.get("status") == status
    ):
        world.figures.failures.append(f"{what}: error body not in the documented shape: {data}")
        return
    code = data.get("code")
    if code not in DOCUMENTED_CODES:
        world.figures.failures.append(f"{what}: undocumented error code {code!r}: {data}")
    elif CODE_STATUS.get(code, status) != status and "detail" not in data:
        world.figures.failures.append(f"{what}: code {code} is documented as {CODE_STATUS[code]}")
    if "Traceback" in body.decode(errors="replace") or "ray::" in body.decode(errors="replace"):
        world.figures.failures.append(f"{what}: a traceback reached the client: {data}")


#: parameters the server parses numbers or durations out of
NUMERIC_STRINGS = {
    "last-event-id",
    "x-resume-from-chunk",
    "timeout-seconds",
    "page[after]",
    "createdat",
    "offset",
}
EDGE_VALUES = ["9" * 30, "9" * 30 + ":run_x", "9" * 30 + "d", "-1", "0", "NaN", "1e999"]


def prepare(world: World, case: Any, data: st.DataObject, auth: str | None) -> dict[str, str]:
    """Point some cases at real runs/tasks/streams (random ids only reach
    404s) and pick the caller's credential."""
    runs = list(world.runs.values())
    if case.operation.path.endswith("/cancel"):
        # the live and waiting runs stay so: cancel the fuzzer's own runs
        runs = [world.runs["done"], *sorted(world.created)[:3]]
    params = case.path_parameters or {}
    if "run_id" in params:
        params["run_id"] = data.draw(st.sampled_from([*runs, params["run_id"]]), "run_id")
    if "task_id" in params:
        params["task_id"] = data.draw(
            st.sampled_from(["fuzz-echo", "http-approve", params["task_id"]]), "task_id"
        )
    if "stream_id" in params:
        params["stream_id"] = data.draw(
            st.sampled_from(["approval", "notes", params["stream_id"]]), "stream_id"
        )
    if "target" in params:
        params["target"] = data.draw(
            st.sampled_from(["self", "parent", "root", *runs, params["target"]]), "target"
        )
    # the document types these as free strings; the server reads numbers and
    # durations out of them, so try the values that break number parsing
    for where in (case.headers, case.query):
        for name in list(where or {}):
            if name.lower() in NUMERIC_STRINGS:
                where[name] = data.draw(st.sampled_from([where[name], *EDGE_VALUES]), name)
    headers: dict[str, str] = {}
    token = world.credentials()[auth] if auth else None
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def call(world: World, case: Any, headers: dict[str, str]) -> None:
    """Send one case, check it, and check a rejected write stored nothing."""
    method = case.operation.method.upper()
    write = method in ("POST", "PUT") and not case.operation.path.endswith("/cancel")
    before = world.fingerprint() if write else None
    world.figures.requests += 1
    world.figures.operations.add(f"{method} {case.operation.path}")
    try:
        response = case.call(base_url=world.api.url, headers=headers, timeout=REQUEST_TIMEOUT_S)
    except Exception as e:  # requests' ReadTimeout: a live stream or long poll
        if "timed out" in str(e).lower() or "timeout" in type(e).__name__.lower():
            world.figures.timeouts += 1
            return
        raise
    status = response.status_code
    world.figures.statuses[status] += 1
    if getattr(response, "stream_cut_short", False):
        world.figures.timeouts += 1
    check_response(world, case, status, response.headers, response.content)
    if status < 500 and not getattr(response, "stream_cut_short", False):
        check_conformance(world, case, response)
    if 200 <= status < 300 and "/tasks/" in case.operation.path:
        body = response.json()
        ids = [body["id"]] if "id" in body else [r["id"] for r in body.get("runs", [])]
        world.created.update(ids)
    if before is not None and 400 <= status < 500:
        world.figures.rejected_writes += 1
        after = world.fingerprint()
        if after != before:
            world.figures.failures.append(
                f"{method} {case.formatted_path} -> {status} stored something: {before} -> {after}"
            )


AUTHS = [
    "secret",
    "admin-token",
    "run-token-live",
    "run-token-waiting",
    "read-all",
    "trigger-token",
    "no-scopes",
    "expired",
    "not-public",
    "wrong-key",
    "garbage",
    "none",
]

SETTINGS = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "suppress_health_check": list(HealthCheck),
    "phases": [Phase.explicit, Phase.generate],
}


def fuzz_stateless(world: World, schema: Any, examples: int) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(max_examples=examples, **SETTINGS)
            @given(case=strategy, data=st.data())
            def one(case: Any, data: st.DataObject) -> None:
                auth = data.draw(st.sampled_from(AUTHS), "auth")
                call(world, case, prepare(world, case, data, auth))

            # Unsatisfiable: no invalid request exists for this operation in this mode
            with contextlib.suppress(Unsatisfiable):
                one()


def fuzz_stateful(world: World, schema: Any, steps: int, examples: int) -> None:
    base = schema.as_state_machine()

    class Workflow(base):  # type: ignore[valid-type,misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": world.api.url, "timeout": REQUEST_TIMEOUT_S}

        def before_call(self, case: Any) -> None:
            # most steps as the secret key's holder (so links lead somewhere),
            # a quarter with another credential
            auths = ["secret", "secret", "secret", "run-token-live", "trigger-token", "garbage"]
            auth = auths[world.figures.requests % len(auths)]
            token = world.credentials()[auth]
            case.headers = {**(case.headers or {})}
            if token is not None:
                case.headers["Authorization"] = f"Bearer {token}"

        def call(self, case: Any, **kwargs: Any) -> Any:
            world.figures.requests += 1
            world.figures.stateful_requests += 1
            world.figures.operations.add(f"{case.operation.method.upper()} {case.operation.path}")
            try:
                response = case.call(**self.get_call_kwargs(case))
            except Exception as e:
                if "timeout" in type(e).__name__.lower():
                    world.figures.timeouts += 1
                    # the machine needs a response to go on: a stand-in 200
                    raise _Skip() from e
                raise
            world.figures.statuses[response.status_code] += 1
            check_response(world, case, response.status_code, response.headers, response.content)
            if response.status_code < 500 and not getattr(response, "stream_cut_short", False):
                check_conformance(world, case, response)
            return response

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            return None  # our properties are checked in `call`

    # One scenario per Hypothesis run, each with its own seed: a scenario's
    # steps depend on the server's answers (which runs exist, which finished),
    # so two runs of one Hypothesis test would not draw alike
    # (FlakyStrategyDefinition); seeded runs still repeat from one seed list.
    one = {**SETTINGS, "derandomize": False}
    for scenario in range(examples):
        seeded = hypothesis.seed(scenario)(type("Scenario", (Workflow,), {}))
        try:
            run_state_machine_as_test(
                seeded, settings=settings(max_examples=1, stateful_step_count=steps, **one)
            )
        except (_Skip, FlakyStrategyDefinition):
            world.figures.cut_scenarios += 1


class _Skip(Exception):
    pass


async def start_world(api: HttpApi) -> World:
    await fuzz_echo.register()
    live, _ = await trigger(api, "http-hold", {"hold_s": 600})
    waiting, _ = await trigger(api, "http-approve", {"timeout_s": 600})
    done, _ = await trigger(api, "fuzz-echo", {})
    await asyncio.wait_for(rayflow.runs.wait(done), 60)
    return World(api=api, runs={"live": live, "waiting": waiting, "done": done})


def load_schema(api: HttpApi) -> Any:
    raw = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    return schemathesis.openapi.from_dict(raw)


async def run_fuzz(api: HttpApi, *, examples: int, steps: int, machines: int) -> Figures:
    world = await start_world(api)
    schema = load_schema(api)
    started = time.monotonic()
    try:
        await asyncio.to_thread(fuzz_stateless, world, schema, examples)
        await asyncio.to_thread(fuzz_stateful, world, schema, steps, machines)
    finally:
        for run_id in {*world.runs.values(), *world.created}:
            await rayflow.runs.cancel(run_id)
    print(f"fuzzing: {world.figures.summary()} in {time.monotonic() - started:.0f} s")
    return world.figures


async def test_fuzz_api_bounded(http_tasks: HttpApi) -> None:
    figures = await run_fuzz(http_tasks, examples=6, steps=8, machines=4)
    print("\n".join(figures.failures))
    assert not figures.failures, "\n".join(figures.failures[:30])
    assert len(figures.operations) >= 20, figures.operations


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_fuzz_api_long(http_tasks: HttpApi) -> None:
    examples = int(os.environ.get("RAYFLOW_FUZZ_EXAMPLES", "200"))
    figures = await run_fuzz(http_tasks, examples=examples, steps=20, machines=examples // 2)
    print("\n".join(figures.failures))
    assert not figures.failures, "\n".join(figures.failures[:30])
