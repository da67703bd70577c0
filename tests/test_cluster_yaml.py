"""cluster.yaml is a valid Ray cluster-launcher config that deploys rayflow."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return loaded


def test_cluster_yaml_matches_rays_own_schema(config: dict[str, Any]) -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


def test_ray_up_accepts_cluster_yaml_after_filling_in_its_defaults(
    config: dict[str, Any],
) -> None:
    # what `ray up` does before it launches anything
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] == "rayflow.head"
    assert prepared["available_node_types"]["rayflow.worker"]["max_workers"] >= 1


def test_runs_go_to_workers_and_the_control_plane_to_the_head(config: dict[str, Any]) -> None:
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t.get("min_workers", 0) >= 1 for t in workers)
    head_cmds = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head_cmds
    assert "rayflow.init(address='auto')" in head_cmds and "serve.app.start(" in head_cmds
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])


def test_every_node_gets_the_store_from_rayflow_env_and_installs_rayflow(
    config: dict[str, Any],
) -> None:
    assert config["file_mounts"]["~/rayflow.env"] == "./rayflow.env"
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(config["setup_commands"])
    assert ". ~/rayflow.env" in setup and "RAYFLOW_STORE" in setup
    assert "rayflow[postgres]" in setup
    # every command that starts Ray or rayflow sees the RAYFLOW_* settings
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if cmd.strip() != "ray stop":
            assert ". ~/rayflow.env" in cmd and "RAY_AUTH_MODE=token" in cmd, cmd
    # the dashboard (which can run code) is not exposed
    assert "--dashboard-host=0.0.0.0" not in " ".join(config["head_start_ray_commands"])


def test_the_nodes_run_the_ray_version_of_this_environment(config: dict[str, Any]) -> None:
    import ray

    match = re.fullmatch(r"rayproject/ray:([\d.]+)-py(\d)(\d+)-cpu", config["docker"]["image"])
    assert match, config["docker"]["image"]
    assert match.group(1) == ray.__version__
    assert (int(match.group(2)), int(match.group(3))) == sys.version_info[:2]


def test_every_command_is_valid_shell(config: dict[str, Any]) -> None:
    for key in COMMAND_LISTS:
        for cmd in config.get(key) or []:
            proc = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert proc.returncode == 0, f"{key}: {cmd!r}: {proc.stderr}"


def test_the_head_command_is_valid_python(config: dict[str, Any]) -> None:
    [start_rayflow] = [c for c in config["head_start_ray_commands"] if "python -c" in c]
    code = re.search(r'python -c "(.*)"', start_rayflow, re.S)
    assert code is not None
    compile(code.group(1), "<head_start_ray_commands>", "exec")
