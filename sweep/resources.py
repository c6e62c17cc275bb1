"""Starting or joining Ray, and checking that the per-trial resources and the storage can be had."""

from __future__ import annotations

import logging
import os

from .options import UsageError

__all__ = ["init_ray", "check_resources", "autoscaler_node_types", "default_gpus", "check_storage_here",
           "check_storage", "GPU_SHARE", "AUTOSCALER_CONFIG"]

log = logging.getLogger(__name__)


# -- Ray ---------------------------------------------------------------------------------------------
def init_ray(local: bool) -> None:
    import ray

    from . import console

    console.claim()  # Ray's import installed its own log handler: the quiet console's file takes it back

    if ray.is_initialized():
        return
    if local:
        # address="local": always a new instance here; plain ray.init() may join another Ray on this machine
        ray.init(address="local")
        return
    try:
        ray.init(address="auto")
    except ConnectionError:
        raise UsageError("--local", "no running Ray cluster to join: pass --local to start Ray on this "
                                    "machine, or start a cluster (ray up cluster.yaml / ray start --head)") from None

AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"  # where Ray's cluster launcher leaves it on the head


def check_resources(cpus: float, gpus: float, *, local: bool = True,
                    autoscaler_config: str = AUTOSCALER_CONFIG) -> None:
    """Impossible per-trial resources -> UsageError.

    Possible means: an alive node has them, or (on a cluster, not --local) a node type the autoscaler may
    start declares them. An autoscaling cluster at rest is a head with 0 CPUs and no workers, so alive
    nodes alone would reject every sweep. A node type without declared resources (Ray detects them when the
    node starts) is given the benefit of the doubt, with a warning.
    """
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    types = {} if local else autoscaler_node_types(os.path.expanduser(autoscaler_config))
    undeclared = [name for name, r in types.items() if r is None]
    if any(r is not None and r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in types.values()):
        log.warning("no node has %g CPU / %g GPU now: trials wait for the autoscaler to start one", cpus, gpus)
        return
    if undeclared:
        log.warning("no alive node has %g CPU / %g GPU; trusting the autoscaler's node types %s (resources "
                    "detected at start)", cpus, gpus, ", ".join(undeclared))
        return
    sizes = [*nodes, *(r for r in types.values() if r)]
    max_cpu = max((r.get("CPU", 0) for r in sizes), default=0)
    max_gpu = max((r.get("GPU", 0) for r in sizes), default=0)
    where = "the biggest node" + (" (alive or autoscalable)" if types else "")
    if cpus > max_cpu:
        raise UsageError("--cpus-per-trial", f"{cpus:g} CPUs per trial but {where} has {max_cpu:g}")
    raise UsageError("--gpus-per-trial", f"{gpus:g} GPUs per trial but {where} has {max_gpu:g}"
                     + (" (CPU only: pass --gpus-per-trial 0)" if max_gpu == 0 else ""))


def autoscaler_node_types(path: str) -> dict[str, dict | None]:
    """Node types the autoscaler may start (max_workers > 0): name -> declared resources, or None when the
    type declares none (detected at start). Empty when this is not a launcher-started head."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except OSError:
        return {}
    out: dict[str, dict | None] = {}
    for name, spec in (config.get("available_node_types") or {}).items():
        max_workers = int(spec.get("max_workers", config.get("max_workers", 0)) or 0)
        if name == config.get("head_node_type") or max_workers <= 0:
            continue
        out[name] = dict(spec["resources"]) if spec.get("resources") else None
    return out

GPU_SHARE = 0.25  # a CIFAR MobileNet trial uses a fraction of a modern GPU: pack 4 per GPU by default


def default_gpus(local: bool, autoscaler_config: str = AUTOSCALER_CONFIG) -> float:
    """--gpus-per-trial when not given: a quarter GPU where GPUs exist (alive, or an autoscalable GPU type
    on a launcher-started cluster), else 0 (CPU trials)."""
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0:
        return GPU_SHARE
    if not local and any((r or {}).get("GPU", 0) > 0
                         for r in autoscaler_node_types(os.path.expanduser(autoscaler_config)).values()):
        return GPU_SHARE
    return 0.0


def check_storage_here(storage: str) -> str:
    """--storage made absolute (a path) or kept (a URI), after the driver wrote and deleted a probe there:
    before Ray starts and before anything is written, so an unreachable or read-only storage is a
    UsageError at once. Leaves nothing behind (a folder it had to make included). No Ray here; every node's
    access is checked by :func:`check_storage` once Ray runs."""
    from results.files import check_writable

    root = storage if "://" in storage else os.path.abspath(storage)
    if not storage.strip():
        raise UsageError("--storage", "empty value: a folder or an s3:// gs:// URI")
    try:
        check_writable(root)
    except (OSError, ValueError) as e:  # pyarrow: OSError (network, permission), ArrowInvalid (a bad URI)
        raise UsageError("--storage", f"{storage} cannot be written from here: {e}") from None
    return root


def check_storage(storage: str) -> str:
    from .reachability import StorageError, check_storage as check

    try:
        return check(storage)
    except StorageError as e:
        raise UsageError("--storage", str(e)) from None
