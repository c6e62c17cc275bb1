"""sweep.reachability.check_storage on real file systems and real multi-node Ray clusters (one machine).

A node that cannot see the driver's folder is made honestly: a real Ray worker node started with
`ray start` inside its own mount namespace (util-linux `unshare`, needs root or CAP_SYS_ADMIN), where a
fresh tmpfs covers the folder, exactly as a second machine's disk would not hold the driver's files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pyarrow.fs as pafs
import pytest
import ray
from ray.cluster_utils import Cluster

from sweep.reachability import PROBE_PREFIX, StorageError, check_storage, mount_fs_type, normalise_storage


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no trials (0 CPUs, like cluster.yaml's head) and nothing else yet."""
    ray.shutdown()  # this module's own cluster, not the session's shared Ray (conftest.py)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"])


def wait_alive(count: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while alive_nodes() != count:
        assert time.time() < deadline, f"expected {count} alive nodes, have {alive_nodes()}"
        time.sleep(0.5)


def probes_left(folder) -> list[str]:
    return [p for p in os.listdir(folder) if p.startswith(PROBE_PREFIX)]


# --- no cluster needed -----------------------------------------------------------------------------


def test_normalise_makes_paths_absolute_and_keeps_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise_storage("exp") == str(tmp_path / "exp")
    assert normalise_storage(f"file://{tmp_path}/x") == f"{tmp_path}/x"
    assert normalise_storage("~/sweeps") == os.path.expanduser("~/sweeps")
    assert normalise_storage("gs://bucket/prefix/") == "gs://bucket/prefix"


@pytest.mark.parametrize("bad", ["s4://bucket/x", "http://example.com/x", "ftp://host/x"])
def test_bad_uri_scheme_is_refused_with_the_remedy(bad):
    with pytest.raises(StorageError) as err:
        normalise_storage(bad)
    assert bad in str(err.value) and "s3://" in str(err.value) and "shared file system" in str(err.value)


def test_empty_storage_is_refused():
    with pytest.raises(StorageError, match="empty"):
        normalise_storage("  ")


def test_mount_fs_type_picks_the_longest_mount_point(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("overlay / overlay rw 0 0\nserver:/x /mnt/shared nfs4 rw 0 0\n"
                      "tmpfs /mnt/sharedx tmpfs rw 0 0\n")
    assert mount_fs_type("/mnt/shared/sweeps/a", str(mounts)) == "nfs4"
    assert mount_fs_type("/mnt/sharedx/a", str(mounts)) == "tmpfs"
    assert mount_fs_type("/home/u", str(mounts)) == "overlay"


# --- one-node Ray (the driver's node runs no trials) ------------------------------------------------


def test_unwritable_local_paths_are_refused(cluster, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    # root ignores permission bits, so use places no one can write: below a regular file, and procfs
    for bad in (str(a_file / "sweeps"), "/proc/prunesweep-sweeps"):
        with pytest.raises(StorageError) as err:
            check_storage(bad)
        assert "cannot write" in str(err.value) and bad in str(err.value)


@pytest.mark.slow
def test_unreachable_object_store_is_refused(cluster):
    # A real S3 client against a closed port: what a wrong endpoint or an offline machine looks like.
    uri = "s3://bucket/sweeps?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"
    with pytest.raises(StorageError, match="the driver cannot write there"):
        check_storage(uri)


def test_local_folder_refused_when_only_a_trial_less_head_is_up(cluster, tmp_path):
    wait_alive(1)
    with pytest.raises(StorageError) as err:
        check_storage(str(tmp_path / "exp"))
    assert "runs no trials" in str(err.value) and "s3://" in str(err.value)
    assert probes_left(tmp_path / "exp") == []


# --- three nodes on one machine: a local folder is shared, so it is accepted --------------------------


def test_local_folder_accepted_when_every_node_sees_it(cluster, tmp_path):
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        wait_alive(3)
        root = check_storage(str(tmp_path / "exp"))
        assert root == str(tmp_path / "exp")
        assert os.path.isdir(root) and probes_left(root) == []
    finally:
        for node in workers:
            cluster.remove_node(node)
        wait_alive(1)


# --- a node in its own mount namespace: the folder is not there ----------------------------------------


def can_unshare_mounts() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow  # ~30 s: a node started with `ray start` in its own mount namespace, and stopped
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs util-linux unshare with CAP_SYS_ADMIN (root)")
def test_local_folder_refused_when_another_node_cannot_see_it(cluster, tmp_path):
    private = tmp_path / "private"  # the new node gets an empty tmpfs here: its own "disk"
    shared = tmp_path / "shared"  # not covered: the new node sees the driver's files
    private.mkdir()
    shared.mkdir()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    script = (f"mount -t tmpfs tmpfs {private} && exec {ray_bin} start --address={cluster.address} "
              f"--num-cpus=1 --block")
    node = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_alive(2, timeout=90)
        with pytest.raises(StorageError) as err:
            check_storage(str(private / "exp"))
        message = str(err.value)
        assert "cannot see the driver's files" in message and "s3://" in message and "shared file" in message
        assert probes_left(private / "exp") == []
        # the same two-node cluster accepts a folder both nodes see
        assert check_storage(str(shared / f"exp-{uuid.uuid4().hex[:6]}")).startswith(str(shared))
    finally:
        os.killpg(node.pid, 15)  # our own `ray start --block` session: it stops its raylet on SIGTERM
        node.wait(timeout=60)
        wait_alive(1, timeout=90)


# --- an object store (a real S3 API server, moto, on loopback) seen from every node ----------------


@pytest.fixture
def s3_bucket(monkeypatch):
    """A real S3 endpoint on 127.0.0.1 with one bucket; its URI options and test credentials."""
    from moto.server import ThreadedMotoServer  # dev extra: a real S3 API implementation

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)  # before worker nodes start: their processes inherit it
    options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                           access_key="testing", secret_key="testing", allow_bucket_creation=True)
    fs.create_dir("sweeps")
    yield options, fs
    server.stop()


def test_object_store_uri_accepted_when_every_node_writes_it(cluster, s3_bucket):
    options, fs = s3_bucket
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        wait_alive(3)
        uri = f"s3://sweeps/exp/?{options}"
        assert check_storage(uri) == f"s3://sweeps/exp?{options}"
        left = fs.get_file_info(pafs.FileSelector("sweeps/exp", allow_not_found=True))
        assert [i.path for i in left if PROBE_PREFIX in i.path] == []  # every node cleaned up its probe
    finally:
        for node in workers:
            cluster.remove_node(node)
        wait_alive(1)


def test_uri_join_keeps_query_options_at_the_end():
    from results.files import join, parent

    assert join("s3://b/sweeps?endpoint_override=h:1&scheme=http", "exp", "optuna.journal") == \
        "s3://b/sweeps/exp/optuna.journal?endpoint_override=h:1&scheme=http"
    assert parent("s3://b/sweeps/exp/optuna.journal?x=1") == "s3://b/sweeps/exp?x=1"
    assert join("/data/sweeps/", "exp") == "/data/sweeps/exp" and parent("/data/sweeps/exp") == "/data/sweeps"


def test_optuna_journal_on_an_object_store_survives_a_new_driver(s3_bucket, tmp_path, monkeypatch):
    """The searcher writes its journal through a local copy and uploads it after each change, so a new head
    node (another temp dir, nothing local) resumes the studies from the bucket alone."""
    import functools

    from optuna.trial import TrialState

    from sweep import spaces as sp
    from sweep.searcher import MultiStudySearcher, StudySpec
    from results.files import join

    options, fs = s3_bucket
    journal = join(f"s3://sweeps/exp?{options}", "optuna.journal")
    space = sp.Space("t", "test", ("admm",), {"lr": sp.Dist("float", 1e-3, 1e-2, True)})
    spec = StudySpec("mobilenet_v2-admm", {"arch": "mobilenet_v2", "method": "admm"},
                     functools.partial(sp.suggest, space=space, method="admm"), ("final_val_acc",))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "head1"))
    (tmp_path / "head1").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR: the first head's local disk
    first = MultiStudySearcher(journal, [spec], trials=3)
    a, b = first.suggest("ray-a"), first.suggest("ray-b")
    first.on_trial_complete("ray-a", {"trial_done": True, "status": "ok", "final_val_acc": 0.75})
    assert fs.get_file_info("sweeps/exp/optuna.journal").size > 0
    (tmp_path / "head2").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "head2"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # a new head: empty local disk
    second = MultiStudySearcher(journal, [spec], trials=3)
    trials = second.studies["mobilenet_v2-admm"].get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert trials[0].value == 0.75 and trials[0].params["lr"] == a["lr"] and trials[1].params["lr"] == b["lr"]
    assert second.live == {"ray-b": ("mobilenet_v2-admm", 1, 0)}  # the running seed is still expected


@pytest.mark.slow
def test_sweep_on_an_object_store_writes_every_table_there_and_resumes(s3_bucket):
    """A real sweep (CLI, local Ray) whose --storage is an S3 URI with endpoint options: Tune's state, the
    Optuna journal, the dense models and the Parquet tables all land in the bucket; a resume finds them."""
    import pyarrow.parquet as pq

    options, fs = s3_bucket
    uri = f"s3://sweeps/runs?{options}"
    tiny = ["--dataset", "synthetic", "--width", "0.1", "--dense-epochs", "1", "--sparsify-epochs", "1",
            "--finetune-epochs", "1", "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--set", "synthetic_train=256",
            "--set", "synthetic_test=64", "--set", "batch_size=64", "--set", "max_threads=1"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    for argv in (["run", "--space", "compare", "--trials", "1", "--name", "s3x", *tiny], ["resume", "s3x"]):
        r = subprocess.run([sys.executable, "-m", "sweep", *argv, "--local", "--storage", uri], capture_output=True,
                           text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        trials = pq.read_table("sweeps/runs/s3x/results/trials", filesystem=fs).to_pandas()
        assert sorted(trials["method"]) == ["admm", "magnitude"] and set(trials["status"]) == {"ok"}
        epochs = pq.read_table("sweeps/runs/s3x/results/epochs", filesystem=fs).to_pandas()
        assert len(epochs) == 6 and not epochs.duplicated(["trial_id", "epoch"]).any()
    names = {i.path.rsplit("/", 1)[-1] for i in fs.get_file_info(pafs.FileSelector("sweeps/runs/s3x"))}
    assert {"optuna.journal", "sweep.json", "tuner.pkl"} <= names
    assert any(n.startswith("experiment_state-") for n in names)
    builds = fs.open_input_stream("sweeps/runs/s3x/dense/builds.json").read()
    # one dense model and its dense control, neither rebuilt on resume
    assert json.loads(builds) == {trials["dense_key"].iloc[0]: 1, trials["control_key"].iloc[0]: 1}
