"""Every example in examples/ runs as a user would run it: `python examples/X.py`,
each starting its own embedded rayflow (local Ray on 127.0.0.1 + SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _embedded import run_script

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
    "chat_agent.py": "result: COMPLETED {'turns': 2, 'ended': 'closed'}",
    "child_tasks.py": "result: COMPLETED",
    "fastapi_pipe.py": "result: COMPLETED",
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_to_completion(script: str, tmp_path: Path) -> None:
    stdout = run_script(EXAMPLES / script, tmp_path)
    assert EXPECTED[script] in stdout, stdout[-2000:]
