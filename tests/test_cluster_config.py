"""cluster.yaml: valid for the installed Ray's launcher, and the safety rules of issue 5 hold in the file."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict:
    return yaml.safe_load(text)


def start_commands(config) -> list[str]:
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


def ray_start_lines(commands: list[str]) -> list[str]:
    return [c for c in commands if "ray start" in c]


def test_valid_for_the_installed_ray_launcher(config):
    prepared = prepare_config(copy.deepcopy(config))  # merges Ray's AWS defaults, as `ray up` does
    validate_config(prepared)  # Ray's own JSON schema plus its cross-field checks
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # our commands, not Ray's defaults (whose head start command binds the dashboard to 0.0.0.0)
    assert prepared["head_start_ray_commands"] == config["head_start_ray_commands"]


def test_head_runs_no_trials(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    (head_start,) = ray_start_lines(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start and "--num-gpus=0" in head_start


def test_one_autoscaling_gpu_worker_type_on_spot(config):
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith(("g4dn", "g5", "g6", "p3", "p4", "p5"))
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert 0 < config["idle_timeout_minutes"] <= 30


def test_dashboard_bound_to_loopback_and_nothing_to_all_interfaces(config, text):
    (head_start,) = ray_start_lines(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in text
    assert "--ray-client-server-host" not in text  # would bind the client server elsewhere


def test_security_group_opens_only_ssh(config):
    group = config["provider"]["security_group"]
    # Ray adds exactly two default rules to the group it creates: intra-cluster traffic and TCP 22.
    for rule in group.get("IpPermissions", []):
        assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), rule
    for node_type in config["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"], "a foreign group may open other ports"


def test_token_auth_on_every_node(config):
    for line in ray_start_lines(start_commands(config)):
        assert re.search(r"(^|[;\s])RAY_AUTH_MODE=token\s+ray start", line), line
    # every SSH session (ray exec, ray attach, job drivers started from a shell) gets it too
    assert any("export RAY_AUTH_MODE=token" in c for c in config["setup_commands"])


def test_token_shipped_from_outside_the_repo(config):
    mounts = config["file_mounts"]
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    local = Path(os.path.expanduser(mounts["~/.ray/auth_token"])).resolve()
    assert ROOT not in local.parents, "the token file must not live in the repository"


def test_working_tree_synced_and_installed_on_every_node(config):
    assert config["file_mounts"]["~/prunesweep"] == "."
    assert ".gitignore" in config["rsync_filter"] and ".venv" in config["rsync_exclude"]
    assert any("pip install" in c and "-e ~/prunesweep" in c for c in config["setup_commands"])
    assert not config["head_setup_commands"] and not config["worker_setup_commands"]  # same code everywhere


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key": r"(?i)aws_secret_access_key|secret[_-]?key\s*[:=]",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "inline token": r"(?i)RAY_AUTH_TOKEN\s*=",
    "long hex/base64 string": r"\b[0-9a-fA-F]{32,}\b|[A-Za-z0-9+/]{40,}={0,2}",
    "password": r"(?i)password\s*[:=]",
}


@pytest.mark.parametrize("kind", sorted(SECRET_PATTERNS))
def test_no_credentials_in_the_file(text, kind):
    assert not re.search(SECRET_PATTERNS[kind], text), kind


def test_no_ssh_key_named(config):
    assert "ssh_private_key" not in config.get("auth", {})  # Ray creates a key pair per cluster
