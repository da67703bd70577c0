"""Wait tokens through the public API (`rayflow.wait`), on real Ray, on both
stores: a run suspends on a token holding no process and resumes with the
data it was completed with; completion is once; timeouts; idempotency."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import ray
from conftest import eventually
from pydantic import BaseModel

import rayflow
from rayflow import errors, step, streams, task, wait
from rayflow._runtime import connection

pytestmark = pytest.mark.usefixtures("rf")

tokens_out = streams.define("tokens", str)


class Decision(BaseModel):
    approved: bool
    by: str


def mark(path: str) -> int:
    with open(path, "a") as f:
        f.write("x\n")
    return len(Path(path).read_text().splitlines())


@task(id="token-approver")
async def token_approver(payload: dict) -> dict:  # type: ignore[type-arg]
    token = await wait.create_token(
        timeout=payload.get("timeout"), tags=["flow:approve"], idempotency_key=payload.get("key")
    )
    await step("announce", mark, payload["marks"])
    await tokens_out.append(token.id)
    result = await wait.for_token(token, type=Decision)
    if not result.ok:
        return {"token": token.id, "timed_out": isinstance(result.error, errors.WaitTimeout)}
    assert result.output is not None
    return {"token": token.id, "approved": result.output.approved, "by": result.output.by}


@task(id="token-waiter")
async def token_waiter(payload: dict) -> dict:  # type: ignore[type-arg]
    """Wait on a token created elsewhere."""
    result = await wait.for_token(payload["token"])
    return {"ok": result.ok, "output": result.output}


def token_of(run_id: str) -> str:
    found = eventually(
        lambda: list(tokens_out.read(run_id, timeout_s=0.2)), what="the token id on the stream"
    )
    return str(found[0])


def status(run_id: str) -> str:
    return str(rayflow.runs.retrieve(run_id).result().status)


def test_for_token_suspends_holding_no_actor_and_resumes_with_the_data(tmp_path: Path) -> None:
    marks = str(tmp_path / "marks")
    handle = token_approver.trigger({"marks": marks}).result()
    token_id = token_of(handle.id)
    eventually(lambda: status(handle.id) == "WAITING", what="the run to suspend on the token")
    record = connection.current().store.get_run(handle.id)
    assert record is not None and record.actor_name is None
    assert handle.id not in ray.get(connection.current().controller.live_runs.remote())
    info = wait.retrieve_token(token_id).result()
    assert info.status == wait.WaitTokenStatus.WAITING and info.tags == ["flow:approve"]
    assert info.output is None and info.error is None

    wait.complete_token(token_id, {"approved": True, "by": "alice"}).result()
    run = rayflow.runs.wait(handle.id).result()
    # the revived run replayed create_token: the same token, not a second one
    assert run.output == {"token": token_id, "approved": True, "by": "alice"}
    assert Path(marks).read_text().count("x") == 1  # the step ran once
    assert list(tokens_out.read(handle.id, timeout_s=0.2)) == [token_id]

    # a second completion changes nothing: the first stands
    wait.complete_token(token_id, {"approved": False, "by": "mallory"}).result()
    info = wait.retrieve_token(token_id).result()
    assert info.status == wait.WaitTokenStatus.COMPLETED
    assert info.output == {"approved": True, "by": "alice"}
    assert info.completed_at is not None


def test_a_token_completed_before_the_wait_returns_at_once() -> None:
    token = wait.create_token().result()
    wait.complete_token(token, [1, 2, 3]).result()
    handle = token_waiter.trigger({"token": token.id}).result()
    run = rayflow.runs.wait(handle.id).result()
    assert run.output == {"ok": True, "output": [1, 2, 3]}


def test_a_token_timeout_revives_the_run_with_ok_false_and_a_late_completion_is_ignored(
    tmp_path: Path,
) -> None:
    handle = token_approver.trigger({"marks": str(tmp_path / "m"), "timeout": "1s"}).result()
    token_id = token_of(handle.id)
    run = rayflow.runs.wait(handle.id).result(timeout_s=60)
    assert run.output == {"token": token_id, "timed_out": True}
    wait.complete_token(token_id, {"approved": True, "by": "late"}).result()
    info = wait.retrieve_token(token_id).result()
    assert info.status == wait.WaitTokenStatus.TIMED_OUT
    assert isinstance(info.error, errors.WaitTimeout) and info.output is None


def test_a_token_nobody_waits_on_times_out_on_its_own() -> None:
    token = wait.create_token(timeout=0.3).result()
    eventually(
        lambda: wait.retrieve_token(token).result().status == wait.WaitTokenStatus.TIMED_OUT,
        what="the token to time out",
    )


def test_idempotent_creation_converges_on_one_token() -> None:
    async def create_many() -> list[wait.WaitToken]:
        return list(
            await asyncio.gather(
                *(wait.create_token(idempotency_key="same-key", tags=["idem"]) for _ in range(8))
            )
        )

    made = asyncio.run(create_many())
    assert len({t.id for t in made}) == 1
    assert sum(not t.is_cached for t in made) == 1
    again = wait.create_token(idempotency_key="same-key").result()
    assert again.id == made[0].id and again.is_cached
    # an idempotency key that expired names a new token
    short = wait.create_token(idempotency_key="short-key", idempotency_key_ttl=0).result()
    fresh = wait.create_token(idempotency_key="short-key").result()
    assert fresh.id != short.id and not fresh.is_cached


def test_list_tokens_filters_by_status_and_tags() -> None:
    a = wait.create_token(tags=["list:a", "team:x"]).result()
    b = wait.create_token(tags=["list:b", "team:x"]).result()
    wait.complete_token(a, "done").result()
    team = wait.list_tokens(tags="team:x").result()
    assert {t.id for t in team} == {a.id, b.id}
    # newest first (tokens made in one millisecond: by id)
    assert [(t.created_at, t.id) for t in team] == sorted(
        ((t.created_at, t.id) for t in team), reverse=True
    )
    assert [t.id for t in wait.list_tokens(tags=["team:x", "list:a"]).result()] == [a.id]
    completed = wait.list_tokens(status="COMPLETED", tags="team:x").result()
    assert [(t.id, t.output) for t in completed] == [(a.id, "done")]


def test_runs_completed_while_they_suspend_lose_no_wake_up() -> None:
    """Completions racing the suspension of their waiters: every run ends."""

    async def race() -> list[rayflow.Run]:
        tokens = [await wait.create_token() for _ in range(12)]
        handles = [await token_waiter.trigger({"token": t.id}) for t in tokens]
        for i, t in enumerate(tokens):
            await asyncio.sleep(0.02 * (i % 4))
            await wait.complete_token(t, i)
        return [await rayflow.runs.wait(h.id) for h in handles]

    runs = asyncio.run(race())
    assert [r.output for r in runs] == [{"ok": True, "output": i} for i in range(12)]


def test_bad_token_input_is_refused_precisely() -> None:
    with pytest.raises(errors.WaitTokenNotFound):
        wait.complete_token("waitpoint_nope", 1).result()
    with pytest.raises(errors.WaitTokenNotFound):
        wait.retrieve_token("waitpoint_nope").result()
    with pytest.raises(errors.InvalidArgument):
        wait.create_token(tags=[f"t{i}" for i in range(11)])
    with pytest.raises(errors.InvalidArgument):
        wait.create_token(tags=["x" * 128])
    with pytest.raises(errors.InvalidArgument):
        wait.create_token(timeout="soon")
    with pytest.raises(errors.ValidationError):
        wait.complete_token("waitpoint_x", object())
    with pytest.raises(errors.OutsideTask):
        asyncio.run(wait.for_token("waitpoint_x"))
    stored = connection.current().store.list_wait_tokens(tags=[json.dumps("never")])
    assert stored == []
