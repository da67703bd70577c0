"""Every example in examples/ runs as a user would run it: `python examples/X.py`,
each starting its own embedded rayflow (local Ray on 127.0.0.1 + SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = [
    "research_agent.py",
    "approval.py",
    "cancellable_stream.py",
    "http_tour.py",
    "chat_agent.py",
    "child_tasks.py",
    "fastapi_pipe.py",
]


EXPECTED = {
    "research_agent.py": "result: COMPLETED",
    "approval.py": "result: COMPLETED",
    "cancellable_stream.py": "'canceled': True",
    "http_tour.py": "run: COMPLETED",
    "chat_agent.py": "result: COMPLETED {'turns': 2}",
    "child_tasks.py": "result: COMPLETED",
    "fastapi_pipe.py": "result: COMPLETED",
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_to_completion(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "RAYFLOW_DATA_DIR": str(tmp_path / ".rayflow")}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, f"{script} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert EXPECTED[script] in out.stdout, out.stdout[-2000:]
