"""A real `ray up` of cluster.yaml (Ray's local provider over SSH on loopback), jobs submitted with
`ray job submit`, and `ray down`. See tests/cluster_harness.py for how the sandbox stays sealed off.

Needs root, util-linux `unshare`, OpenSSH server and client, rsync and iproute2 (CI installs them:
.ci/run), and the network once (the setup commands' packages are fetched into a private layer).
"""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from cluster_harness import ROOT, Job, missing_tools, run_sandbox

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_tools()), reason=f"cluster sandbox needs: {', '.join(missing_tools())}"),
]

TRIALS = 2
PROBE = Job("probe", "python tests/cluster_harness.py")
# The smallest real sweep: no --local, so it joins the cluster it was submitted to.
SWEEP = Job("sweep", (
    f"python -m sweep run --space admm --dataset synthetic --arch mobilenet_v2 --trials {TRIALS} "
    "--width 0.1 --dense-epochs 1 --sparsify-epochs 1 --finetune-epochs 1 --cpus-per-trial 1 "
    "--gpus-per-trial 0 --set synthetic_train=256 --set synthetic_test=64 --set batch_size=64 "
    "--storage /mnt/home/sweeps --name launcher"))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    return run_sandbox(tmp_path_factory.mktemp("launcher"), [PROBE, SWEEP],
                       job_env={"OMP_NUM_THREADS": "1"})


def test_ray_up_and_ray_down_succeed(launched):
    assert launched.returncode == 0, launched.output[-5000:]
    assert "== ray down" in launched.output
    assert launched.value("RAY_PROCESSES_LEFT") == "0", "ray down left Ray processes running"


def test_same_code_synced_to_the_node(launched):
    synced = launched.home / "prunesweep"
    for name in ("cluster.yaml", "sweep/reachability.py", "vocabulary/config.py"):
        assert (synced / name).read_bytes() == (ROOT / name).read_bytes(), name
    assert not (synced / ".venv").exists() and not (synced / ".git").exists()


def test_token_auth_enforced(launched):
    assert launched.value("UNAUTHENTICATED_STATUS") == "401"  # the dashboard API refuses a tokenless call
    token = launched.home / ".ray" / "auth_token"
    assert token.stat().st_size > 0 and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert launched.value("PROBE_AUTH_MODE") == "token"  # job drivers run with token auth on


def test_jobs_run_on_the_worker_never_the_head(launched):
    assert launched.job_status(PROBE) == "SUCCEEDED", launched.output[-5000:]
    assert launched.value("PROBE_ALIVE_NODES") == "2"
    assert launched.value("PROBE_TASK_ON_HEAD") == "False"


def test_tiny_sweep_on_the_cluster(launched):
    assert launched.job_status(SWEEP) == "SUCCEEDED", launched.output[-8000:]
    experiment = launched.home / "sweeps" / "launcher"
    trials = pd.read_parquet(experiment / "results" / "trials")
    assert len(trials) == TRIALS and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"ok", "diverged"}
    assert os.path.exists(experiment / "sweep.json")
