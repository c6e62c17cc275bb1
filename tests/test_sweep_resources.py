"""Per-trial resources checked against the Ray cluster before a sweep starts (issue 3 bad input; issue 5's
autoscaling cluster whose head has 0 CPUs and no worker is up yet)."""

from __future__ import annotations

import pytest

from helpers import SHARED_RAY_CPUS
from sweep.options import UsageError
from sweep.resources import GPU_SHARE, check_resources, default_gpus

AUTOSCALER = """
head_node_type: head
max_workers: 4
available_node_types:
  head: {resources: {CPU: 0, GPU: 0}, node_config: {}}
  gpu_worker: {min_workers: 0, max_workers: 4, resources: %s, node_config: {}}
"""


pytestmark = pytest.mark.usefixtures("ray_session")  # the session's local Ray: 2 CPUs, no GPU (conftest.py)


def bootstrap(tmp_path, resources: str) -> str:
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(AUTOSCALER % resources)
    return str(path)


def test_local_machine_without_gpu_rejects_a_gpu_per_trial():
    check_resources(1, 0, local=True)
    with pytest.raises(UsageError) as err:
        check_resources(1, 1, local=True)
    assert err.value.option == "--gpus-per-trial" and "--gpus-per-trial 0" in str(err.value)
    with pytest.raises(UsageError) as err:
        check_resources(SHARED_RAY_CPUS + 1, 0, local=True)
    assert err.value.option == "--cpus-per-trial" and f"has {SHARED_RAY_CPUS}" in str(err.value)


def test_cluster_accepts_what_an_autoscalable_node_type_declares(tmp_path):
    path = bootstrap(tmp_path, "{CPU: 4, GPU: 1}")
    check_resources(2, 0.5, local=False, autoscaler_config=path)  # no alive node has a GPU: not an error
    with pytest.raises(UsageError) as err:
        check_resources(2, 2, local=False, autoscaler_config=path)
    assert err.value.option == "--gpus-per-trial" and "autoscalable" in str(err.value)
    with pytest.raises(UsageError):  # --local never counts on an autoscaler
        check_resources(2, 0.5, local=True, autoscaler_config=path)


def test_cluster_trusts_node_types_whose_resources_are_detected_at_start(tmp_path):
    check_resources(1, 1, local=False, autoscaler_config=bootstrap(tmp_path, "{}"))
    with pytest.raises(UsageError):  # no launcher config at all: only alive nodes count
        check_resources(1, 1, local=False, autoscaler_config=str(tmp_path / "missing.yaml"))


def test_cli_impossible_gpus_exits_2_and_creates_nothing(tmp_path, sweep_main):
    code, _, stderr = sweep_main("run", "--local", "--gpus-per-trial", "3", "--storage", str(tmp_path), "--name", "x")
    assert code == 2 and "--gpus-per-trial" in stderr.splitlines()[-1], stderr[-2000:]
    assert not (tmp_path / "x").exists()


def test_default_gpu_share_follows_what_the_cluster_has(tmp_path):
    assert default_gpus(True) == 0.0  # this Ray has no GPU: CPU trials
    gpu_type = bootstrap(tmp_path, "{CPU: 4, GPU: 1}")
    assert default_gpus(False, gpu_type) == GPU_SHARE == 0.25  # GPU workers the autoscaler will start
    assert default_gpus(True, gpu_type) == 0.0  # --local never counts on an autoscaler
    (tmp_path / "cpu").mkdir()
    assert default_gpus(False, bootstrap(tmp_path / "cpu", "{CPU: 8}")) == 0.0
