"""`python -m analysis report` reads an experiment where it lies on an object store (s3://, a real S3 API
server: moto on loopback), merges it with a local experiment, and writes nothing to either.

Results are written with the project's own writer (results.schema.write_trial_table, which takes the
same URI), the Optuna journal and sweep.json are uploaded as the sweep uploads them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from result_rows import ARCH, write_trial
from results import files


@pytest.fixture
def s3_experiment(monkeypatch, tmp_path):
    """A bucket on a real local S3 endpoint holding one experiment: 2 methods x 2 seeds, a diverged trial,
    sweep.json and an Optuna journal with 12 complete trials. Yields (uri, filesystem)."""
    from moto.server import ThreadedMotoServer  # dev extra: a real S3 API implementation

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)  # the CLI subprocess inherits them
    fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                           access_key="testing", secret_key="testing", allow_bucket_creation=True)
    fs.create_dir("sweeps")
    uri = f"s3://sweeps/remote-exp?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    for seed in (0, 1):
        write_trial(uri, f"s3a{seed}", "admm", seed, 0.5, 1e-3)
        write_trial(uri, f"s3m{seed}", "magnitude", seed, 0.5, 1e-3)
    write_trial(uri, "s3div", "admm", 0, 0.5, 10.0, status="diverged")
    files.write_bytes(uri, "sweep.json", json.dumps({"sampler": "tpe", "optuna_storage": "optuna.journal"}).encode())
    files.write_bytes(uri, "optuna.journal", _journal_bytes(tmp_path))
    yield uri, fs
    server.stop()


def _journal_bytes(tmp_path) -> bytes:
    """An Optuna journal with one study of 12 complete trials whose objective depends on lr only."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "optuna.journal"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name=f"{ARCH}-admm", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: math.log10(t.suggest_float("lr", 1e-4, 1e-2, log=True))
                   + 0.0 * t.suggest_float("rho", 0, 1), n_trials=12)
    return path.read_bytes()


def _objects(fs) -> dict[str, int]:
    infos = fs.get_file_info(pafs.FileSelector("sweeps", recursive=True))
    return {i.path: i.size for i in infos if i.type == pafs.FileType.File}


def test_load_tables_reads_an_object_store_experiment(s3_experiment):
    from analysis import find_optuna_storage, load_tables, read_sweep_options

    uri, _ = s3_experiment
    tables = load_tables(uri)
    assert len(tables.trials) == 5 and tables.skipped == []
    assert set(tables.trials["method"]) == {"admm", "magnitude"}
    assert set(tables.trials["experiment_dir"]) == {"s3://sweeps/remote-exp"}  # no endpoint options shown
    assert len(tables.layers) == 5 and not tables.epochs.empty
    assert read_sweep_options(uri)["sampler"] == "tpe"
    assert find_optuna_storage(uri).startswith("s3://sweeps/remote-exp/optuna.journal?endpoint_override=")


def test_report_merges_an_s3_experiment_with_a_local_one(s3_experiment, tmp_path):
    uri, fs = s3_experiment
    local = tmp_path / "local-exp"
    write_trial(local, "la2", "admm", 2, 0.5, 1e-3)
    write_trial(local, "lm2", "magnitude", 2, 0.5, 1e-3)
    before = _objects(fs)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", uri, str(local), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _objects(fs) == before  # the bucket is only read
    assert "(7 trials, 0 files skipped)" in proc.stdout
    paired = (out / "tables" / "paired.csv").read_text().splitlines()
    assert paired[1].split(",")[6] == "3"  # n_pairs: seeds 0 and 1 from the bucket, seed 2 from the folder
    html = (out / "report.html").read_text()
    assert "s3://sweeps/remote-exp" in html and "endpoint_override" not in html
    assert (out / "figures" / "importance.png").exists()  # the journal was read from the bucket
    assert "s3div" in (out / "report.md").read_text()


def test_default_out_is_named_after_the_object_store_experiment(s3_experiment, tmp_path):
    uri, _ = s3_experiment
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", uri, "--no-importance"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "reports" / "remote-exp" / "report.html").exists()


def test_missing_object_store_experiment_exits_2(s3_experiment, tmp_path):
    uri, _ = s3_experiment
    missing = uri.replace("remote-exp", "no-such-exp")
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", missing, "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "s3://sweeps/no-such-exp" in proc.stderr
    assert "endpoint_override" not in proc.stderr and not (tmp_path / "r").exists()
