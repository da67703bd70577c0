"""The `rayflow` command, each subcommand run as a subprocess the way a user runs it.

One `rayflow dev` (its own Ray, store and HTTP API on a free loopback port)
serves the module; every other command joins it through its data directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _browser_fixtures import ROOT, DevServer, dev_env, free_port, start_dev_server

from rayflow import _tokens

TASKS = """
import asyncio

from rayflow import streams, task

text = streams.define("text", str)
progress = streams.define("progress", dict)
events = streams.define("events", dict)
reply = streams.input("reply", dict)


@task(id="cli-demo")
async def cli_demo(payload: dict) -> dict:
    for i in range(payload.get("n", 5)):
        await text.append(f"word{i} ")
        await progress.append({"percent": (i + 1) * 20, "step": f"s{i}"})
        await events.append({"i": i})
    return {"done": payload.get("n", 5)}


@task(id="cli-wait")
async def cli_wait(payload: dict) -> dict:
    await text.append("waiting for a reply\\n")
    r = await reply.once(timeout_s=120)
    return {"got": r.unwrap()}
"""


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    home = tmp_path_factory.mktemp("rayflow-cli")
    tasks = home / "cli_tasks.py"
    tasks.write_text(textwrap.dedent(TASKS))
    with start_dev_server(str(tasks), home / "data") as server:
        yield server
    # stopped with SIGINT (Ctrl-C): a clean exit that leaves no dev file behind
    assert server.proc.returncode == 0, server.output()[-2000:]
    assert not (server.data_dir / "dev.json").exists()


def rayflow(
    dev: DevServer | None, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -m rayflow.cli ARGS` against `dev` (or with `env`)."""
    return subprocess.run(
        [sys.executable, "-m", "rayflow.cli", *args],
        cwd=ROOT,
        env=env if env is not None else (dev.env if dev else None),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def run_json(dev: DevServer, run_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"{dev.url}/api/v3/runs/{run_id}",
        headers={"Authorization": f"Bearer {dev.secret_key}"},
        timeout=10,
    )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def wait_finished(dev: DevServer, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        run = run_json(dev, run_id)
        if run["status"] in ("COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT"):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout_s} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def finished_run(dev: DevServer) -> str:
    """A completed cli-demo run with 5 chunks in each of its streams."""
    out = ok(rayflow(dev, "trigger", "cli-demo", "--payload", '{"n": 5}', "--wait", "--json"))
    doc = json.loads(out)
    assert doc["status"] == "COMPLETED" and doc["output"] == {"done": 5}, doc
    run_id: str = doc["id"]
    return run_id


def test_dev_prints_the_dashboard_url_and_secret_key(dev: DevServer) -> None:
    log = dev.output()
    assert f"Dashboard   {dev.url}/dashboard/#key={dev.secret_key}" in log, log
    assert f"Secret key  {dev.secret_key}" in log
    assert "cli-demo, cli-wait" in log
    assert httpx.get(f"{dev.url}/dashboard/", timeout=10).status_code == 200
    info = json.loads((dev.data_dir / "dev.json").read_text())
    assert info["url"] == dev.url and info["node_ip"] == "127.0.0.1", info


def test_trigger_prints_the_run_id_and_runs_lists_it(dev: DevServer) -> None:
    run_id = ok(rayflow(dev, "trigger", "cli-demo", "--payload", '{"n": 2}')).strip()
    assert run_id.startswith("run_"), run_id
    assert wait_finished(dev, run_id)["output"] == {"done": 2}

    table = ok(rayflow(dev, "runs"))
    assert run_id in table and "cli-demo" in table and "COMPLETED" in table
    listed = json.loads(ok(rayflow(dev, "runs", "--json", "--task", "cli-demo")))
    assert run_id in [r["id"] for r in listed]


def test_runs_watch_refreshes_until_its_time_is_up(dev: DevServer, finished_run: str) -> None:
    started = time.monotonic()
    out = ok(rayflow(dev, "runs", "--watch", "--watch-for", "2.5"))
    assert time.monotonic() - started < 60
    assert out.count("STATUS") >= 2, out  # not a terminal: one table per refresh
    assert finished_run in out


def test_tail_prints_a_text_stream_as_text(dev: DevServer, finished_run: str) -> None:
    out = ok(rayflow(dev, "tail", finished_run, "text"))
    assert out == "word0 word1 word2 word3 word4 \n"


def test_tail_draws_a_progress_bar_for_percent_chunks(dev: DevServer, finished_run: str) -> None:
    lines = ok(rayflow(dev, "tail", finished_run, "progress")).splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("[######------------------------]  20.0%"), lines[0]
    assert lines[-1].startswith("[##############################] 100.0%"), lines[-1]
    assert "step: s4" in lines[-1]


def test_tail_from_an_index_as_json(dev: DevServer, finished_run: str) -> None:
    out = ok(rayflow(dev, "tail", finished_run, "events", "--start-index", "3", "--json"))
    assert [json.loads(line) for line in out.splitlines()] == [
        {"index": 3, "data": {"i": 3}},
        {"index": 4, "data": {"i": 4}},
    ]
    rows = ok(rayflow(dev, "tail", finished_run, "events", "-s", "4")).splitlines()
    assert rows == ['{"i": 4}']


def test_tail_without_a_key_names_the_streams_to_choose_from(
    dev: DevServer, finished_run: str
) -> None:
    assert_one_line_error(rayflow(dev, "tail", finished_run), "events", "progress", "text")


def test_tail_follows_a_live_run_and_send_reaches_it(dev: DevServer) -> None:
    run_id = ok(rayflow(dev, "trigger", "cli-wait", "--payload", "{}")).strip()
    tail = subprocess.Popen(
        [sys.executable, "-m", "rayflow.cli", "tail", run_id, "text"],
        cwd=ROOT,
        env=dev.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proc = rayflow(dev, "send", run_id, "reply", '{"answer": 42}')
        ok(proc)
        assert f"sent to {run_id} / reply" in proc.stderr
        run = wait_finished(dev, run_id)
        assert run["status"] == "COMPLETED" and run["output"] == {"got": {"answer": 42}}, run
        out, errs = tail.communicate(timeout=60)  # ends by itself: the run finished
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0, errs
    assert out == "waiting for a reply\n"


def test_token_is_a_jwt_for_that_run_only(dev: DevServer, finished_run: str) -> None:
    token = ok(rayflow(dev, "token", finished_run)).strip()
    claims = _tokens.decode_token(dev.secret_key, token)
    assert claims["scopes"] == _tokens.run_scopes(finished_run)
    headers = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{dev.url}/api/v3/runs/{finished_run}", headers=headers, timeout=10)
    assert r.status_code == 200 and r.json()["id"] == finished_run
    read_only = ok(rayflow(dev, "token", finished_run, "--read-only", "--ttl", "60")).strip()
    claims = _tokens.decode_token(dev.secret_key, read_only)
    assert claims["scopes"] == [f"read:runs:{finished_run}"]
    assert claims["exp"] - claims["iat"] == 60


def test_errors_are_one_line_and_exit_non_zero(dev: DevServer, finished_run: str) -> None:
    assert_one_line_error(rayflow(dev, "trigger", "no-such-task"), "TaskNotFound", "no-such-task")
    assert_one_line_error(rayflow(dev, "trigger", "cli-demo", "--payload", "{oops"), "--payload")
    assert_one_line_error(rayflow(dev, "tail", "run_missing", "text"), "RunNotFound")
    assert_one_line_error(rayflow(dev, "token", "run_missing"), "RunNotFound")
    assert_one_line_error(rayflow(dev, "send", "run_missing", "reply", "{}"), "RunNotFound")
    assert_one_line_error(rayflow(dev, "send", finished_run, "reply", "{}"), "RunFinished")
    assert_one_line_error(rayflow(dev, "send", finished_run, "reply", "nope"), "not valid JSON")


def test_commands_without_a_running_dev_say_how_to_start_one(tmp_path: Path) -> None:
    env = dev_env(tmp_path / "empty", free_port(), "sk_unused")
    assert_one_line_error(rayflow(None, "runs", env=env), "no rayflow is running", "rayflow dev")


def test_dev_refuses_a_busy_port_and_a_second_dev_on_one_data_dir(
    dev: DevServer, tmp_path: Path
) -> None:
    port = dev.url.rsplit(":", 1)[1]
    other = dev_env(tmp_path / "other", int(port), "sk_other")
    assert_one_line_error(rayflow(None, "dev", "--port", port, env=other), f"port {port}")
    same = dict(dev.env, RAYFLOW_HTTP_PORT=str(free_port()))
    assert_one_line_error(rayflow(None, "dev", env=same), "already running")
    free = dict(other, RAYFLOW_HTTP_PORT=str(free_port()))
    assert_one_line_error(
        rayflow(None, "dev", "no/such/file.py", env=free), "no such file: no/such/file.py"
    )


def test_the_rayflow_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "rayflow"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("dev", "trigger", "runs", "tail", "send", "token"):
        assert command in out.stdout


RELOADED = """
from rayflow import task


@task(id="cli-reload")
async def cli_reload(payload: dict) -> dict:
    return {"version": VERSION}
"""


def test_dev_reload_serves_the_edited_task_then_stops_quietly_leaving_its_port_free(
    tmp_path: Path,
) -> None:
    """One dev server for both (each start of `rayflow dev` costs a Ray)."""
    from rayflow.cli.commands import _port_free

    module = tmp_path / "reload_tasks.py"
    module.write_text("VERSION = 1\n" + textwrap.dedent(RELOADED))
    with start_dev_server(str(module), tmp_path / "data", extra_args=("--reload",)) as server:

        def run_version() -> Any:
            out = ok(rayflow(server, "trigger", "cli-reload", "-p", "{}", "--wait", "--json"))
            return json.loads(out)["output"]["version"]

        assert run_version() == 1
        module.write_text("VERSION = 2\n" + textwrap.dedent(RELOADED))
        stat = module.stat()
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        deadline = time.monotonic() + 30
        while "reloaded reload_tasks.py: cli-reload" not in server.output():
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        assert run_version() == 2

        port = int(server.url.rsplit(":", 1)[1])
        os.killpg(server.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole group
        server.proc.wait(timeout=60)
        free = _port_free("127.0.0.1", port)  # a user starting it again right away
    out = server.output()
    assert server.proc.returncode == 0, out[-2000:]
    # nothing alarming (Serve's "graceful_shutdown failed ... killed by ray.kill")
    assert out[out.index("stopping") :].splitlines() == ["stopping (SIGINT)…", "stopped"], out
    assert free, f"port {port} is still taken after rayflow dev stopped"
