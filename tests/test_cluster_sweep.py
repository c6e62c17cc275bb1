"""Sweeps on a real multi-node Ray cluster on one machine (ray.cluster_utils.Cluster): a head that runs no
trials (0 CPUs, like cluster.yaml's head) and two 1-CPU worker nodes.

Which node ran what comes from Ray's own actor table (GCS): every Tune trial runs in an actor whose
record keeps its node id, also after the actor died.
"""

from __future__ import annotations

import glob
import json
import threading
import time

import pandas as pd
import pytest
import ray
from ray._private.state import actors as actor_table
from ray.cluster_utils import Cluster

pytestmark = pytest.mark.slow

TRIALS = 2  # two 1-CPU workers: the two concurrent trials necessarily run one on each


@pytest.fixture
def cluster():
    ray.shutdown()  # this test's own cluster, not the session's shared Ray (conftest.py)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address)
    yield c, workers
    ray.shutdown()
    c.shutdown()


def run_tiny_sweep(storage: str, name: str, *, trials: int = TRIALS, sparsify_epochs: int = 1,
                   finetune_epochs: int = 1) -> str:
    """The sweep's Python API (issue 3) with ray already initialised on the cluster; returns the
    experiment folder. The smallest real sweep: synthetic data, width 0.1, 1 dense epoch."""
    from sweep import run_sweep  # issue 3's public API

    return run_sweep([
        "run", "--space", "admm", "--dataset", "synthetic", "--arch", "mobilenet_v2",
        "--trials", str(trials), "--width", "0.1", "--dense-epochs", "1",
        "--sparsify-epochs", str(sparsify_epochs), "--finetune-epochs", str(finetune_epochs),
        "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--max-concurrent", "2",
        "--set", "synthetic_train=256", "--set", "synthetic_test=64", "--set", "batch_size=64",
        "--storage", storage, "--name", name,
    ])


def trial_actor_nodes() -> dict[str, list[str]]:
    """Node id -> states of every trial actor Ray ever placed there (Tune's trainables)."""
    nodes: dict[str, list[str]] = {}
    for record in actor_table().values():
        # the class name is qualified while the actor lives ("wrap_function.<locals>.ImplicitFunc")
        name = record["ActorClassName"].rsplit(".", 1)[-1]
        if name in ("ImplicitFunc", "_Inner") or "trainable" in name.lower():
            nodes.setdefault(record["Address"]["NodeID"], []).append(record["State"])
    return nodes


def read_table(experiment: str, table: str) -> pd.DataFrame:
    return pd.read_parquet(f"{experiment}/results/{table}")


def check_rows_once(experiment: str, epochs_per_trial: int, trials_expected: int = TRIALS) -> pd.DataFrame:
    trials = read_table(experiment, "trials")
    assert len(trials) == trials_expected and trials["trial_id"].is_unique, trials[["trial_id", "status"]]
    assert set(trials["status"]) <= {"ok", "diverged"}, trials[["trial_id", "status", "error"]]
    epochs = read_table(experiment, "epochs")
    assert not epochs.duplicated(["trial_id", "epoch"]).any(), "an epoch row was written twice"
    counts = epochs.groupby("trial_id").size()
    ok = trials.loc[trials["status"] == "ok", "trial_id"]
    assert (counts.loc[ok] == epochs_per_trial).all(), counts
    return trials


def test_trials_run_on_both_workers_and_land_in_one_folder(cluster, tmp_path):
    c, workers = cluster
    experiment = run_tiny_sweep(str(tmp_path / "sweeps"), "multi")
    assert experiment.startswith(str(tmp_path / "sweeps"))
    check_rows_once(experiment, epochs_per_trial=3)
    nodes = trial_actor_nodes()
    head = c.head_node.node_id
    assert head not in nodes, "a trial ran on the head"
    assert {w.node_id for w in workers} <= set(nodes), f"trials ran only on {sorted(nodes)}"


def remove_node_after_first_checkpoint(c: Cluster, node, experiment_glob: str, removed: threading.Event,
                                       running_then: dict):
    deadline = time.time() + 300
    while not glob.glob(experiment_glob) and time.time() < deadline:
        time.sleep(0.2)
    running_then.update(trial_actor_nodes())  # what ran where at the moment of the loss
    c.remove_node(node, allow_graceful=False)  # a lost machine says no goodbye
    removed.set()


def test_worker_lost_mid_sweep_completes_with_every_row_once(cluster, tmp_path):
    c, workers = cluster
    lost = workers[1]
    removed = threading.Event()
    running_then: dict[str, list[str]] = {}
    # Tune writes each trial's per-epoch checkpoints under <storage>/<name>/<trial dir>/checkpoint_*:
    # once one exists, trials are mid-flight (2 concurrent, one per worker).
    killer = threading.Thread(target=remove_node_after_first_checkpoint, daemon=True, args=(
        c, lost, str(tmp_path / "sweeps" / "loss" / "*" / "checkpoint_000000"), removed, running_then))
    killer.start()
    # 4 trials: the lost node is still running one when the first checkpoint appears, whichever finishes first
    experiment = run_tiny_sweep(str(tmp_path / "sweeps"), "loss", trials=4, sparsify_epochs=2, finetune_epochs=2)
    killer.join(timeout=10)
    assert removed.is_set(), "the worker was never removed: no checkpoint appeared"
    check_rows_once(experiment, epochs_per_trial=5, trials_expected=4)
    assert "ALIVE" in running_then.get(lost.node_id, []), f"no trial was running on the lost node: {running_then}"
    assert tune_failures(experiment) >= 1, "no trial was interrupted: the test did not test node loss"


def tune_failures(experiment: str) -> int:
    """Trial failures Tune recorded (each one retried from the trial's last checkpoint)."""
    latest = sorted(glob.glob(f"{experiment}/experiment_state-*.json"))[-1]
    with open(latest) as f:
        trial_data = json.load(f)["trial_data"]
    return sum(json.loads(run_metadata)["num_failures"] for _, run_metadata in trial_data)
