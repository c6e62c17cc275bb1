"""Check, before any trial starts, that every node of the Ray cluster can write the sweep's storage.

A sweep's experiment folder (Tune's state, the Optuna storage, the Parquet results) must be one folder that
every node writes: an object store URI (``s3://bucket/prefix``, ``gs://bucket/prefix``) or a file system
mounted at the same path on every node. A folder on the driver's local disk works only when every trial
runs on the driver's machine. :func:`check_storage` finds out which case it is by writing a probe object
from the driver and reading it back from a tiny Ray task pinned to each other alive node (each of which
also writes and deletes a probe of its own, which catches a node whose credentials cannot write there).

Public: :func:`check_storage`, :class:`StorageError`.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import pyarrow.fs as pafs
import ray

from results import files as result_files
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

__all__ = ["StorageError", "check_storage"]

log = logging.getLogger(__name__)

PROBE_PREFIX = ".prunesweep-storage-probe-"
# A node's probe task starts a worker process there: seconds normally, longer on a loaded node.
NODE_TIMEOUT_S = 120.0
# File systems that one machine's mount can share with others (a local folder on them is fine on a cluster).
SHARED_FS_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "glusterfs", "ceph",
                   "cephfs", "9p", "virtiofs", "fuse.")
REMEDY = ("use an object store URI such as s3://BUCKET/PREFIX or gs://BUCKET/PREFIX, or a shared file "
          "system mounted at the same path on every node")


class StorageError(ValueError):
    """The sweep storage cannot be used; the message says why and what to use instead."""


def check_storage(storage: str) -> str:
    """Return ``storage`` normalised (absolute local path, or the URI) after checking every node can use it.

    Requires Ray to be initialised (the cluster's alive nodes are probed). Creates the storage folder when
    it is missing and leaves it; writes and deletes one small probe file per node.

    Raises:
        StorageError: unknown URI scheme; the driver cannot write there; or another alive node cannot see
            the driver's probe (a local folder on a multi-node cluster) or cannot write its own; or the
            storage is a local, unshared folder while the driver's node runs no trials (an autoscaling
            head) so trials will run on nodes that cannot see it.
    """
    root = normalise_storage(storage)
    token = uuid.uuid4().hex
    probe = PROBE_PREFIX + token
    try:
        write_text(root, probe, token)
    except Exception as err:  # permission, missing bucket, credentials, network: all mean "cannot write"
        raise StorageError(f"--storage {root!r}: the driver cannot write there ({err}); {REMEDY}") from err
    try:
        check_other_nodes(root, probe, token)
    finally:
        delete_file(root, probe)
    return root


def normalise_storage(storage: str) -> str:
    """Absolute local path for a path or ``file://`` URI; other URIs unchanged but for a trailing slash.

    Raises StorageError when the value is empty or its scheme is not a file system pyarrow can open.
    """
    if not storage or not storage.strip():
        raise StorageError(f"--storage: empty value; {REMEDY}, or a local folder on a one-machine run")
    storage = storage.strip()
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    if "://" not in storage:
        return os.path.abspath(os.path.expanduser(storage))
    try:
        pafs.FileSystem.from_uri(storage)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError by scheme; the cause goes in the message
        raise StorageError(f"--storage {storage!r}: cannot open this URI ({err}); {REMEDY}") from err
    path, _, query = storage.partition("?")
    return path.rstrip("/") + (f"?{query}" if query else "")


def is_local(root: str) -> bool:
    return "://" not in root


def write_text(root: str, name: str, text: str) -> None:
    """Write ``text`` to the file ``name`` directly inside ``root``, creating ``root`` when missing."""
    result_files.write_bytes(root, name, text.encode())


def read_text(root: str, name: str) -> str | None:
    """The text of ``name`` inside ``root``, or None when it does not exist."""
    data = result_files.read_bytes(root, name)
    return None if data is None else data.decode()


def delete_file(root: str, name: str) -> None:
    try:
        result_files.delete(root, name)
    except Exception as err:  # a leftover probe is harmless: log, do not hide the real outcome
        log.warning("could not delete storage probe %s in %s: %s", name, root, err)


@ray.remote(num_cpus=0, max_retries=0)
def probe_node(root: str, probe: str, token: str) -> dict[str, Any]:
    """Runs on one node: does the driver's probe read back, and can this node write (and delete) its own?"""
    import socket

    out: dict[str, Any] = {"host": socket.gethostname(), "seen": False, "write_error": ""}
    try:
        out["seen"] = read_text(root, probe) == token
    except Exception as err:  # reported to the driver, which raises StorageError with it
        out["write_error"] = f"reading the driver's probe failed: {err}"
        return out
    own = PROBE_PREFIX + uuid.uuid4().hex
    try:
        write_text(root, own, "node")
        result_files.delete(root, own)
    except Exception as err:
        out["write_error"] = f"writing failed: {err}"
    return out


def check_other_nodes(root: str, probe: str, token: str) -> None:
    """Probe every alive node but the driver's; StorageError naming the first that fails."""
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    others = [n for n in nodes if n["NodeID"] != here]
    if not others:
        check_lone_driver_node(root, nodes, here)
        return
    refs = {n["NodeID"]: probe_node.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
    ).remote(root, probe, token) for n in others}
    for node_id, ref in refs.items():
        try:
            result = ray.get(ref, timeout=NODE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as err:
            raise StorageError(f"--storage {root!r}: node {node_id} did not answer the storage check in "
                               f"{NODE_TIMEOUT_S:.0f} s") from err
        if result["write_error"]:
            raise StorageError(f"--storage {root!r}: node {node_id} ({result['host']}) cannot use it: "
                               f"{result['write_error']}; {REMEDY}")
        if not result["seen"]:
            raise StorageError(
                f"--storage {root!r}: node {node_id} ({result['host']}) cannot see the driver's files there "
                f"(a folder on the driver's own disk is not shared with the other {len(others)} node(s)); "
                f"{REMEDY}")
    log.info("storage %s: visible and writable from all %d alive nodes", root, len(nodes))


def check_lone_driver_node(root: str, nodes: list[dict], here: str) -> None:
    """One alive node. Fine, unless trials cannot run on it (so they will run on nodes not started yet)
    and the storage is a folder on a disk no other machine can mount."""
    me = next((n for n in nodes if n["NodeID"] == here), None)
    resources = (me or {}).get("Resources", {})
    runs_trials = resources.get("CPU", 0) > 0 or resources.get("GPU", 0) > 0
    if runs_trials or not is_local(root) or mount_fs_type(root).startswith(SHARED_FS_TYPES):
        return
    raise StorageError(
        f"--storage {root!r}: this node runs no trials (0 CPUs, 0 GPUs: a cluster head) and no worker node is "
        f"up yet, so trials will run on other machines that cannot see this local "
        f"{mount_fs_type(root) or 'unknown'} folder; {REMEDY}")


def mount_fs_type(path: str, mounts_file: str = "/proc/mounts") -> str:
    """File system type of the mount holding ``path`` (longest mount-point prefix), "" if unknown."""
    try:
        with open(mounts_file) as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return ""
    best, fstype = "", ""
    real = os.path.realpath(path)
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, kind
    return fstype
