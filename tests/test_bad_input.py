"""Bad input that used to cost a whole training or end in a traceback (issue 15): each is refused with exit 2
and a message naming the option, before any work starts, and leaves nothing behind. In-process through the
CLIs' main(argv) (conftest's trainables_main / sweep_main fixtures).

The sweep tests that would reach Ray if the refusal regressed also pass an empty --data-dir: a tripwire that
an unfixed CLI trips (exit 2 naming --data-dir, asserted against) before it could start Ray.
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import TINY, train_args

UNREACHABLE_S3 = "s3://bucket/x?endpoint_override=127.0.0.1:1&scheme=http"


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1] if err.strip() else ""


# -- trainables train: the folders it writes -----------------------------------------------------------
@pytest.mark.parametrize("option, field, below_file", [
    ("--out", "out", True),                        # used to train the whole trial, then NotADirectoryError
    ("--checkpoint-dir", "checkpoint_dir", True),  # used to train the dense phase, then fail at the report
    ("--dense-cache", "dense_cache", False),       # a file named as the cache: FileExistsError traceback
])
def test_unwritable_folder_is_refused_before_training(option, field, below_file, tmp_path, trainables_main):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "sub" if below_file else blocker
    code, _, err = trainables_main("train", *train_args(TINY), option, str(target))
    assert code == 2, err
    assert _last_line(err).startswith(f"error: {field}:") and "not a folder" in err, err
    assert "epoch" not in err  # nothing trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_folder_is_refused(tmp_path, trainables_main):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = trainables_main("train", *train_args(TINY), "--out", str(locked / "results"))
    finally:
        locked.chmod(0o755)
    assert code == 2 and _last_line(err).startswith("error: out:"), err
    assert list(locked.iterdir()) == []


def test_the_writability_check_leaves_no_folder_behind(tmp_path, trainables_main):
    """The folders are made to be probed, then removed when the run is refused later (here: --resume)."""
    code, _, err = trainables_main("train", *train_args(TINY), "--out", str(tmp_path / "new" / "deeper"),
                                   "--checkpoint-dir", str(tmp_path / "ck" / "pt"), "--resume", str(tmp_path / "nope"))
    assert code == 2 and _last_line(err).startswith("error: resume_from:"), err
    assert list(tmp_path.iterdir()) == []


# -- trainables train --resume ----------------------------------------------------------------------------
# the shortest run that leaves a checkpoint: the one after sparsify epoch 1 (the last epoch keeps none)
CKPT_RUN = {**TINY, "dense_epochs": 0, "sparsify_epochs": 1, "sparsity": 0.7, "eval_test": False,
            "max_threads": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from trainables.__main__ import main

    folder = tmp_path_factory.mktemp("resume") / "ckpt"
    assert main(["train", *train_args(CKPT_RUN), "--checkpoint-dir", str(folder), "-q"]) == 0
    assert (folder / "checkpoint.pt").is_file()
    return str(folder)


@pytest.mark.slow  # the checkpoint costs a short training
@pytest.mark.parametrize("change, flag", [
    ({"method": "magnitude"}, "--method"),  # used to die with KeyError 'masks'
    ({"sparsity": 0.9}, "--sparsity"),      # used to exit 0 with a row labelled 0.9 built on the 0.7 run
])
def test_resume_with_another_configuration_is_refused(change, flag, checkpoint, trainables_main):
    code, _, err = trainables_main("train", *train_args({**CKPT_RUN, **change}), "--resume", checkpoint)
    assert code == 2, err
    last = _last_line(err)
    assert last.startswith("error: resume_from:") and flag in last, err
    assert "epoch" not in err.split("error:")[0]  # refused before any training


@pytest.mark.slow
def test_resume_reads_the_configuration_from_the_checkpoint(checkpoint, trainables_main):
    """Only run options given: the rest is the checkpoint's (before, the defaults: another arch, refused)."""
    code, out, err = trainables_main("train", "--resume", checkpoint, "--device", "cpu", "--max-threads", "1",
                                     "-q", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["arch"] == "mobilenet_v3_small" and summary["sparsity"] == 0.7
    assert summary["achieved_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert summary["epochs_run"] == CKPT_RUN["sparsify_epochs"] + CKPT_RUN["finetune_epochs"]


def test_unreadable_checkpoint_is_refused(tmp_path, trainables_main):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = trainables_main("train", *train_args(TINY), "--resume", str(tmp_path))
    assert code == 2 and _last_line(err).startswith("error: resume_from:") and "cannot read" in err, err
    code, _, err = trainables_main("train", *train_args(TINY), "--resume", str(tmp_path / "missing"))
    assert code == 2 and _last_line(err).startswith("error: resume_from:"), err


# -- sweep -------------------------------------------------------------------------------------------------
@pytest.fixture
def tripwire(tmp_path):
    folder = tmp_path / "empty-cifar"
    folder.mkdir()
    return ["--data-dir", str(folder)]


@pytest.mark.slow  # pyarrow retries the connection for ~12 s
@pytest.mark.parametrize("command", [["run", "--local", "--name", "x"], ["resume", "x"]])
def test_unreachable_storage_is_refused_before_ray(command, sweep_main, tripwire):
    code, _, err = sweep_main(*command, "--storage", UNREACHABLE_S3, *(tripwire if command[0] == "run" else []))
    assert code == 2 and err.startswith("error: --storage:"), err
    assert "Traceback" not in err


def test_storage_under_a_file_is_refused(tmp_path, sweep_main, tripwire):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = sweep_main("run", "--local", "--storage", str(blocker / "exp"), "--name", "x", *tripwire)
    assert code == 2 and err.startswith("error: --storage:") and "not a folder" in err, err


@pytest.mark.parametrize("option", ["--cpus-per-trial", "--gpus-per-trial"])
def test_resume_refuses_negative_resources(option, tmp_path, sweep_main):
    code, _, err = sweep_main("resume", "x", "--storage", str(tmp_path), option, "-1")
    assert code == 2 and err.startswith(f"error: {option}:"), err
    assert list(tmp_path.iterdir()) == []


NM_SPACE = 'methods = ["magnitude"]\n[params]\nsparsity_set = "nm"\n' \
           'sparsity = {type = "categorical", choices = [0.5, 0.7]}\n'


def test_nm_space_that_searches_sparsity_is_refused(tmp_path, sweep_main, tripwire):
    space = tmp_path / "nm.toml"
    space.write_text(NM_SPACE)
    code, _, err = sweep_main("run", "--local", "--space", str(space), "--storage", str(tmp_path), "--name", "x",
                              *tripwire)
    assert code == 2 and err.startswith("error: --space: sparsity:") and "nm" in err, err
    code, _, err = sweep_main("run", "--local", "--space", "admm", "--set", "sparsity_set=nm",
                              "--storage", str(tmp_path), "--name", "x", *tripwire)
    assert code == 2 and err.startswith("error: --space: sparsity:") and "--set" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-cifar", "nm.toml"]


def test_fixing_sparsity_by_set_makes_the_space_acceptable(tmp_path, sweep_main, tripwire):
    """--set sparsity fixes what the space searched: nm is then fine, and so is asha (one objective)."""
    for extra in (["--set", "sparsity_set=nm"], ["--scheduler", "asha"]):
        code, _, err = sweep_main("run", "--local", "--space", "admm", "--set", "sparsity=0.5", *extra,
                                  "--storage", str(tmp_path / "exp"), "--name", "x", *tripwire)
        assert code == 2 and err.startswith("error: --data-dir:"), err  # the tripwire: every check before passed
