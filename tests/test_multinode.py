"""rayflow on a multi-node Ray cluster: placement, node loss, Controller restart.

Each store backend gets one `ray.cluster_utils.Cluster` (a head node and
worker nodes, all on 127.0.0.1), started in a subprocess by
tests/cluster_scenarios.py — this session already holds a Ray connection —
which runs every scenario in order and reports each one; the tests below
read those reports. Node losses kill the node's raylet and every process on
it, and the scenarios count every chunk and message.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).with_name("cluster_scenarios.py")
#: a cluster of three to four nodes and six scenarios take ~60 s on 2 cores
BUDGET_S = 240

SCENARIOS = [
    "placement",
    "stream_across_nodes",
    "revive_on_another_node",
    "worker_node_lost_mid_run",
    "inbox_node_lost",
    "controller_restart",
    "loopback_only",
]


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def cluster_report(
    request: pytest.FixtureRequest,
    session_store_url_for: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """Run every scenario on a fresh cluster and store; {scenario: "ok" | why}."""
    backend: str = request.param
    tmp = tmp_path_factory.mktemp(f"multinode-{backend}")
    result = tmp / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    with open(tmp / "output.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), session_store_url_for(backend), str(result)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            proc.wait(timeout=BUDGET_S)
        except subprocess.TimeoutExpired:
            # the scenarios not reported fail below with the log's path; the
            # cluster's processes (GCS, raylets, workers) go with the script
            family = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            for child in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            proc.wait()
    report: dict[str, str] = json.loads(result.read_text()) if result.exists() else {}
    report["_log"] = str(tmp / "output.log")
    return report


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_multinode_scenario(cluster_report: dict[str, str], scenario: str) -> None:
    outcome = cluster_report.get(scenario)
    if outcome is None:
        pytest.fail(f"{scenario} did not run (timed out or crashed); see {cluster_report['_log']}")
    assert outcome == "ok", f"{scenario} failed:\n{outcome}\n(log: {cluster_report['_log']})"
