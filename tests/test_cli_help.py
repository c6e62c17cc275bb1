"""Every command-line option says what it does and, where it has a fixed set, the allowed values; the trial
options' texts come from the config's field comments, so they cannot drift."""

from __future__ import annotations

import argparse
import json
import os

from vocabulary import config as C


def _options(parser: argparse.ArgumentParser, command: str) -> list[argparse.Action]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if not isinstance(a, argparse._HelpAction)]


def test_every_config_field_has_a_comment():
    helps = C.field_help()
    missing = [name for name in C.field_owners() if not helps.get(name)]
    assert not missing, f"fields without a comment in vocabulary/config.py: {missing}"


def test_trainables_train_options_all_have_help_with_allowed_values():
    from trainables.__main__ import build_parser

    helps = C.field_help()
    for action in _options(build_parser(), "train"):
        assert action.help and action.help.strip(), action.option_strings
        name = action.dest
        if name in C.CHOICES:
            assert all(v in action.help for v in C.CHOICES[name]), (name, action.help)
        if name in helps:
            assert helps[name] in action.help  # generated from the field's comment
            assert "default" in action.help


def test_sweep_run_options_all_have_help():
    from sweep.cli import build_parser

    for action in _options(build_parser(), "run"):
        assert action.help and action.help.strip(), action.option_strings
    helps = {a.dest: a.help for a in _options(build_parser(), "run")}
    assert "tpe" in helps["sampler"] and "asha" in helps["scheduler"]
    assert C.field_help()["sparsify_epochs"] in helps["sparsify_epochs"]


def test_dense_cache_reuses_the_dense_model_between_cli_runs(tmp_path, trainables_main):
    args = ["--dataset", "synthetic", "--synthetic-train", "128", "--synthetic-test", "32", "--width", "0.1",
            "--arch", "mobilenet_v3_small", "--dense-epochs", "1", "--sparsify-epochs", "1", "--finetune-epochs",
            "0", "--batch-size", "32", "--bn-recal-batches", "1", "--max-threads", "1", "--json",
            "--dense-cache", str(tmp_path / "cache")]
    runs = []
    for method in ("magnitude", "admm"):
        code, stdout, stderr = trainables_main("train", *args, "--method", method, "--admm-interval", "1",
                                               "--admm-interval-unit", "step")
        assert code == 0, stderr
        runs.append(json.loads(stdout))
        if method == "magnitude":
            stamps = {f: os.stat(tmp_path / "cache" / f).st_mtime_ns for f in os.listdir(tmp_path / "cache")}
    assert runs[0]["dense_key"] == runs[1]["dense_key"]
    assert runs[0]["dense_val_acc"] == runs[1]["dense_val_acc"]
    assert runs[0]["control_val_acc"] == runs[1]["control_val_acc"]
    payloads = {f for f in stamps if f.endswith(".pt")}
    assert len(payloads) == 2  # the dense model and the dense control, written once
    assert all(os.stat(tmp_path / "cache" / f).st_mtime_ns == stamps[f] for f in payloads)
