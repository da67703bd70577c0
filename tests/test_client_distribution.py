"""`rayflow-client` (clients/python): the HTTP client as its own small
distribution, installed into a fresh venv that has no Ray, driving a real
server through a trigger -> read -> send -> wait round trip.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import pytest
from _http_fixtures import *  # noqa: F403
from _http_fixtures import HttpApi

from rayflow import streams, task

pytestmark = [pytest.mark.parametrize("rf", ["sqlite"], indirect=True), pytest.mark.timeout(600)]

CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "python"

greeting = streams.define("greeting", dict)
reply = streams.input("reply", dict)


@task(id="client-roundtrip")
async def client_roundtrip(payload: dict) -> dict:  # type: ignore[type-arg]
    """Greet on "greeting", wait for one message on "reply", return it."""
    await greeting.append({"hello": payload["name"]})
    message = await reply.once(timeout_s=60)
    return {"reply": message.unwrap()}


ROUND_TRIP = """
import asyncio, json, sys, time
started = time.perf_counter()
from rayflow.client import Client
import_s = time.perf_counter() - started
# pydantic's machinery loads when a Run is first built, not with the client
deferred = [m for m in ("pydantic", "pydantic_core") if m not in sys.modules]

async def main():
    client = Client(sys.argv[1], sys.argv[2])
    run = await client.trigger("client-roundtrip", {"name": "Ada"})
    async for chunk in client.streams.read(run.id, "greeting"):
        first = chunk
        break
    await client.streams.send(run.id, "reply", {"text": "hi Ada"})
    done = await client.runs.wait(run.id)
    ray_loaded = "ray" in sys.modules
    print(json.dumps({"import_s": import_s, "first": first, "status": done.status.value,
                      "output": done.output, "ray_loaded": ray_loaded,
                      "deferred": deferred}))

asyncio.run(main())
"""


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_rayflow_client_installs_without_ray_and_round_trips(
    http_api: HttpApi, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(CLIENT_DIR), "--no-deps", "-w", str(wheels)])
    (wheel,) = wheels.glob("rayflow_client-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    started = time.perf_counter()
    _run([python, "-m", "pip", "install", "-q", str(wheel)])
    install_s = time.perf_counter() - started
    no_ray = "import importlib.util as u; print(u.find_spec('ray'))"
    assert _run([python, "-c", no_ray], cwd=tmp_path).stdout.strip() == "None"
    # from a directory holding no rayflow: the wheel's, not this checkout's
    out = _run([python, "-c", ROUND_TRIP, http_api.url, http_api.secret_key], cwd=tmp_path).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["first"] == {"hello": "Ada"}
    assert result["status"] == "COMPLETED" and result["output"] == {"reply": {"text": "hi Ada"}}
    assert not result["ray_loaded"]
    assert result["deferred"] == ["pydantic", "pydantic_core"]
    # the goals are 10 s and 0.3 s; bounds here leave room for a loaded CI box
    print(f"rayflow-client: install {install_s:.2f} s, import {result['import_s']:.3f} s")
    assert result["import_s"] < 1.0
    assert install_s < 60
