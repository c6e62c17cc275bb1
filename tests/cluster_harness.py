"""A real `ray up` of cluster.yaml on this machine, sealed off from everything else running here.

The launcher is driven exactly as a user drives it (`ray get-auth-token --generate`, `ray up`, `ray exec`,
`ray job submit`, `ray down`) against a config derived from cluster.yaml whose provider is Ray's `local`
one at 127.0.0.1: same file mounts, setup commands and start commands. An OpenSSH server listens on the
loopback interface and the "nodes" are this machine reached over SSH as root.

Why the namespaces (util-linux `unshare`, root): the launcher's start commands run `ray stop`, which kills
every Ray process it can see, and `ray start --head` takes fixed ports (6379, 8265, 8076). A private PID
namespace limits `ray stop` to the sandbox's own processes, a private network namespace gives it its own
loopback and ports, and private mounts give it its own /tmp (Ray's session files), its own home for root (the SSH
keys, the synced tree, the token file) and a copy-on-write view of the project's virtual environment (the
setup commands' `pip install` write there, never into the real one). Nothing outside is touched.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_HOME = "/mnt/home"  # root's home inside the sandbox (its own /etc/passwd; /root stays: pyenv lives there)
SSH_KEY = f"{SANDBOX_HOME}/.ssh/id_ed25519"
CONFIG = f"{SANDBOX_HOME}/cluster-local.yaml"
DASHBOARD = "http://127.0.0.1:8265"


def missing_tools() -> list[str]:
    """System programs the sandbox needs that are not installed (empty when it can run)."""
    tools = ["unshare", "ip", "ssh", "ssh-keygen", "rsync", "/usr/sbin/sshd"]
    missing = [t for t in tools if shutil.which(t) is None and not os.path.exists(t)]
    if not missing and subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "true"],
                                      capture_output=True).returncode != 0:
        missing.append("unshare permission (root or CAP_SYS_ADMIN)")
    return missing


def derive_local_config(cluster: dict) -> dict:
    """cluster.yaml with Ray's `local` provider at 127.0.0.1 and root over SSH; the same file mounts,
    rsync filters, setup and start commands. The local provider has one node type, so
    available_node_types/head_node_type go (Ray rejects them for `local`)."""
    local = copy.deepcopy(cluster)
    for key in ("available_node_types", "head_node_type"):
        local.pop(key)
    local["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    local["auth"] = {"ssh_user": "root", "ssh_private_key": SSH_KEY}
    local["max_workers"] = 0
    return local


def second_node_command(cluster: dict) -> str:
    """The worker start command from cluster.yaml, run on the head's machine as a second Ray node.

    Two changes, both because the two nodes share one IP: no `ray stop` (it would stop the head), and
    no fixed --object-manager-port (the head already holds it).
    """
    (start,) = [c for c in cluster["worker_start_ray_commands"] if "ray start" in c]
    start = start.replace("--object-manager-port=8076", "")
    return f"export RAY_HEAD_IP=127.0.0.1; {start}"


SSHD_CONFIG = f"""\
ListenAddress 127.0.0.1
Port 22
HostKey {SANDBOX_HOME}/ssh_host_ed25519_key
PidFile {SANDBOX_HOME}/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile {SANDBOX_HOME}/.ssh/authorized_keys
StrictModes no
UsePAM no
"""


# HTTP status of a dashboard API request sent without the token (401 when token auth is enforced).
UNAUTHENTICATED_STATUS = f"""\
import urllib.error, urllib.request
try:
    urllib.request.urlopen("{DASHBOARD}/api/jobs/", timeout=30)
    print(200)
except urllib.error.HTTPError as err:
    print(err.code)
"""


# Ray daemons alive in the sandbox's PID namespace, read from /proc (no psutil or procps needed).
COUNT_RAY_PROCESSES = """\
import os
names = (b"raylet", b"gcs_server", b"dashboard.py", b"monitor.py", b"log_monitor.py")
count = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            count += any(n in f.read() for n in names)
    except OSError:
        pass
print(count)
"""


# A job's final status through Ray's job SDK (sends the token: RAY_AUTH_MODE=token is exported).
JOB_STATUS = f"""\
import sys
from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient("{DASHBOARD}").get_job_status(sys.argv[1]).value)
"""


@dataclass
class Job:
    """One `ray job submit`: the entrypoint and the submission id to check its status by."""

    submission_id: str
    entrypoint: str


@dataclass
class SandboxRun:
    returncode: int
    output: str
    home: Path  # the sandbox's /root, readable from outside after the run

    def job_status(self, job: Job) -> str:
        marker = f"JOB_STATUS {job.submission_id} "
        lines = [ln for ln in self.output.splitlines() if ln.startswith(marker)]
        return lines[-1][len(marker):].strip() if lines else "MISSING"

    def value(self, key: str) -> str:
        lines = [ln for ln in self.output.splitlines() if ln.startswith(key + " ")]
        return lines[-1][len(key) + 1:].strip() if lines else ""


def prepare(work: Path, cluster: dict) -> None:
    """Lay out the sandbox's home and /tmp under ``work``: SSH keys, sshd config, derived config, the
    image's Python (a link to this virtual environment, as a machine image would ship one)."""
    home, tmp = work / "home", work / "tmp"
    for d in (home / ".ssh", tmp, work / "ov" / "up", work / "ov" / "wk"):
        d.mkdir(parents=True, exist_ok=True)
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run(keygen + ["-f", str(home / ".ssh" / "id_ed25519")], check=True)
    subprocess.run(keygen + ["-f", str(home / "ssh_host_ed25519_key")], check=True)
    shutil.copy(home / ".ssh" / "id_ed25519.pub", home / ".ssh" / "authorized_keys")
    (home / "sshd_config").write_text(SSHD_CONFIG)
    (home / "cluster-local.yaml").write_text(yaml.safe_dump(derive_local_config(cluster), sort_keys=False))
    # cluster.yaml's first setup command keeps an existing ~/venv: this one is the project's own.
    (home / "venv").symlink_to(Path(sys.prefix))
    (home / "unauthenticated_status.py").write_text(UNAUTHENTICATED_STATUS)
    (home / "count_ray_processes.py").write_text(COUNT_RAY_PROCESSES)
    (home / "job_status.py").write_text(JOB_STATUS)
    (home / ".bashrc").write_text("")  # a fresh image's empty one; setup commands append to it
    # inside there is no network: pip installs from the wheelhouse the outer part fills
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {SANDBOX_HOME}/wheels\n")
    (work / "passwd").write_text(passwd_with_root_home(Path("/etc/passwd").read_text(), SANDBOX_HOME))


def passwd_with_root_home(passwd: str, home: str) -> str:
    """/etc/passwd text with root's home directory replaced (sshd takes the session's HOME from it)."""
    out = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == "root":
            fields[5] = home
        out.append(":".join(fields))
    return "\n".join(out) + "\n"


def keep_under_tmp(paths: list[Path], work: Path) -> list[str]:
    """Mount the sandbox's own /tmp, keeping visible the checkout and the venv when they live under /tmp
    (a clone in /tmp, say): each is parked under /mnt first, then bound back at its path (recursively, so
    the venv's overlay comes along)."""
    q = shlex.quote
    lines, moved = [], []
    for i, path in enumerate(p for p in paths if p.resolve().is_relative_to("/tmp")):
        lines.append(f"mkdir -p /mnt/keep{i} && mount --rbind {q(str(path))} /mnt/keep{i}")
        moved.append(f"mkdir -p {q(str(path))} && mount --rbind /mnt/keep{i} {q(str(path))}")
    return [*lines, f"mount --bind {q(str(work / 'tmp'))} /tmp", *moved]


def outer_script(work: Path, cluster: dict) -> str:
    """Private mounts, with the network: the venv's copy-on-write layer gets the packages the setup
    commands install (as a machine image would already hold them), then the offline inner part runs."""
    venv, q = shlex.quote(sys.prefix), shlex.quote
    (install,) = [c for c in cluster["setup_commands"] if "pip install" in c and "ray[" in c]
    return "\n".join([
        "set -euo pipefail",
        f"mount -t overlay overlay -o lowerdir={venv},upperdir={q(str(work / 'ov/up'))},"
        f"workdir={q(str(work / 'ov/wk'))} {venv}",
        f"export PATH={venv}/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"echo '== image packages'; {install}",
        # the build backend `pip install -e` fetches: served from a local wheelhouse inside (no network)
        f"python -m pip download -q --no-deps -d {q(str(work / 'home/wheels'))} 'setuptools>=68'",
        f"mount -t tmpfs tmpfs /mnt && mkdir -p {SANDBOX_HOME}",
        f"mount --bind {q(str(work / 'home'))} {SANDBOX_HOME}",
        f"mount --bind {q(str(work / 'passwd'))} /etc/passwd",
        "mount -t tmpfs tmpfs /run && mkdir -p /run/sshd",
        *keep_under_tmp([ROOT, Path(sys.prefix)], work),
        f"exec unshare --net --pid --fork --mount-proc --kill-child bash {SANDBOX_HOME}/inner.sh",
    ]) + "\n"


def inner_script(cluster: dict, jobs: list[Job], job_env: dict[str, str]) -> str:
    """Own PID and network namespace: SSH server, `ray up`, jobs, `ray down`."""
    venv, q = shlex.quote(sys.prefix), shlex.quote
    runtime_env = json.dumps({"excludes": [".git", ".venv", "experiments"], "env_vars": job_env})
    lines = [
        "set -euo pipefail",
        "ip link set lo up",
        f"export HOME={SANDBOX_HOME} PATH={venv}/bin:$PATH",
        "unset RAY_ADDRESS RAY_AUTH_MODE RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH",
        f"cd {q(str(ROOT))}",
        f"/usr/sbin/sshd -f {SANDBOX_HOME}/sshd_config -E {SANDBOX_HOME}/sshd.log",
        "echo '== token'; ray get-auth-token --generate > /dev/null",
        f"echo '== ray up'; ray up -y --no-config-cache {CONFIG}",
        f"echo '== second node'; ray exec {CONFIG} {q(second_node_command(cluster))}",
        # Token auth must be enforced: the dashboard API refuses a request without the token.
        f"echo \"UNAUTHENTICATED_STATUS $(python {SANDBOX_HOME}/unauthenticated_status.py)\"",
        "export RAY_AUTH_MODE=token",  # the client side of token auth: reads ~/.ray/auth_token
    ]
    for job in jobs:
        lines += [
            f"echo '== job {job.submission_id}'",
            f"ray job submit --address {DASHBOARD} --submission-id {job.submission_id} --working-dir . "
            f"--runtime-env-json {q(runtime_env)} -- {job.entrypoint} || true",
            f"echo \"JOB_STATUS {job.submission_id} $(python {SANDBOX_HOME}/job_status.py {job.submission_id})\"",
        ]
    lines += [
        f"echo '== ray down'; ray down -y {CONFIG}",
        # after `ray down` no Ray process may be left in the sandbox (they would hold its ports)
        f"echo \"RAY_PROCESSES_LEFT $(python {SANDBOX_HOME}/count_ray_processes.py)\"",
    ]
    return "\n".join(lines) + "\n"


def run_sandbox(work: Path, jobs: list[Job], *, job_env: dict[str, str] | None = None,
                timeout_s: float = 900) -> SandboxRun:
    """Run the whole launcher workflow in a fresh sandbox under ``work``; return its output.

    Mutates only ``work``. Raises subprocess.TimeoutExpired after ``timeout_s`` (the sandbox's PID
    namespace dies with its first process, taking every process it started along).
    """
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepare(work, cluster)
    (work / "home" / "inner.sh").write_text(inner_script(cluster, jobs, job_env or {}))
    (work / "outer.sh").write_text(outer_script(work, cluster))
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", "bash",
         str(work / "outer.sh")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    (work / "output.log").write_text(proc.stdout)  # kept for debugging a failed run
    return SandboxRun(proc.returncode, proc.stdout, work / "home")


def probe_job() -> None:
    """Entry point of a job submitted to the sandbox cluster: where do 1-CPU tasks run, with what auth."""
    import ray

    ray.init()  # the job's RAY_ADDRESS: the cluster it was submitted to
    head = ray.get_runtime_context().get_node_id()  # a job's driver runs on the head

    @ray.remote(num_cpus=1)
    def node_of_task() -> str:
        return ray.get_runtime_context().get_node_id()

    nodes = set(ray.get([node_of_task.remote() for _ in range(4)]))
    print("PROBE_TASK_ON_HEAD", head in nodes)
    print("PROBE_ALIVE_NODES", sum(1 for n in ray.nodes() if n["Alive"]))
    print("PROBE_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", ""))


if __name__ == "__main__":
    probe_job()
