"""sweep.storage.check_storage on real file systems and real multi-node Ray clusters (one machine).

A node that cannot see the driver's folder is made honestly: a real Ray worker node started with
`ray start` inside its own mount namespace (util-linux `unshare`, needs root or CAP_SYS_ADMIN), where a
fresh tmpfs covers the folder, exactly as a second machine's disk would not hold the driver's files.
"""

from __future__ import annotations

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

from sweep.storage import PROBE_PREFIX, StorageError, check_storage, mount_fs_type, normalise_storage


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no trials (0 CPUs, like cluster.yaml's head) and nothing else yet."""
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
