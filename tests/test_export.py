"""python -m analysis export: the chosen configuration's model as a standalone file (issue 18). The exported
program (normalisation inside, images in [0, 1]) scores the chosen trial's recorded accuracy; ONNX Runtime
agrees with PyTorch; bad input exits 2 naming the option and writes nothing."""

from __future__ import annotations

import pytest
import torch

from analysis.__main__ import main
from helpers import TINY
from results import schema
from vocabulary.config import TrialConfig
from trainables.data import load_splits
from trainables.model_file import load_model, with_normalization
from trainables.trial import run_trial

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Two magnitude configurations (lr 1e-3, lr 3e-2) at sparsity 0.7, one seed each, with their models."""
    root = tmp_path_factory.mktemp("exp")
    cfg = {**TINY, "method": "magnitude", "sparsity": 0.7, "finetune_epochs": 1, "sparsify_epochs": 1}
    data = load_splits(TrialConfig.from_dict(cfg).data)
    results = {}
    for i, lr in enumerate((1e-3, 3e-2)):
        tid = f"t{i}"
        results[tid] = run_trial({**cfg, "lr": lr}, data=data, trial_id=tid)
        results[tid].write(str(root), trial_id=tid, experiment="exp")
    return root, data, results


def _chosen(results):
    return max(results, key=lambda t: (results[t].summary["final_val_acc"], t == "t0"))


def _args(root, out, *extra):
    return ["export", str(root), "--arch", TINY["arch"], "--method", "magnitude", "--sparsity", "0.7",
            "--out", str(out), *extra]


def test_the_exported_program_is_the_chosen_model_and_scores_its_accuracy(experiment, tmp_path, capsys):
    root, data, results = experiment
    out = tmp_path / "chosen.pt2"
    assert main(_args(root, out)) == 0
    chosen = _chosen(results)
    assert f"trial {chosen}" in capsys.readouterr().out
    program = torch.export.load(str(out)).module()
    model, meta = load_model(results[chosen].model)
    x = torch.rand(7, 3, 32, 32)
    assert torch.allclose(program(x), with_normalization(model, meta["mean"], meta["std"])(x), atol=1e-5)
    # raw images in [0, 1] in, the chosen trial's recorded final validation accuracy out
    with torch.no_grad():
        pred = program(data.val_x.float() / 255).argmax(1)
    assert float((pred == data.val_y).float().mean()) == pytest.approx(results[chosen].summary["final_val_acc"])


@pytest.mark.parametrize("extra, option", [
    (["--arch", "mobilenet_v2"], "--arch"),
    (["--method", "admm"], "--method"),
    (["--sparsity", "0.5"], "--sparsity"),
    (["--seed", "3"], "--seed"),
])
def test_bad_input_exits_2_naming_the_option_and_writes_nothing(experiment, tmp_path, capsys, extra, option):
    root, _, _ = experiment
    out = tmp_path / "x.pt2"
    args = _args(root, out)
    for i in range(0, len(extra), 2):  # the later value of an option wins in argparse
        args += [extra[i], extra[i + 1]]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"error: {option}:")
    assert not out.exists()


def test_no_such_experiment_and_no_kept_model_exit_2(experiment, tmp_path, capsys):
    root, _, results = experiment
    assert main(_args(tmp_path / "nope", tmp_path / "x.pt2")) == 2
    assert "nope" in capsys.readouterr().err
    chosen = _chosen(results)
    path = root / schema.model_path(arch=TINY["arch"], method="magnitude", trial_id=chosen)
    kept = path.read_bytes()
    path.unlink()
    try:
        assert main(_args(root, tmp_path / "x.pt2")) == 2
        assert "no model kept" in capsys.readouterr().err and not (tmp_path / "x.pt2").exists()
    finally:
        path.write_bytes(kept)


@pytest.mark.slow  # torch's ONNX exporter takes ~20 s
def test_onnx_export_runs_in_onnx_runtime_with_pytorchs_outputs(experiment, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    root, _, results = experiment
    out = tmp_path / "chosen.onnx"
    assert main([*_args(root, out), "--format", "onnx"]) == 0
    model, meta = load_model(results[_chosen(results)].model)
    x = torch.rand(5, 3, 32, 32)
    session = ort.InferenceSession(str(out))
    got = session.run(["logits"], {"images": x.numpy()})[0]
    want = with_normalization(model, meta["mean"], meta["std"])(x).detach().numpy()
    assert abs(got - want).max() < 1e-4


def test_keep_models_chosen_deletes_all_but_the_chosen_configurations_models(experiment, tmp_path):
    import shutil

    from sweep.keep import keep_chosen_models

    root, _, results = experiment
    copy = tmp_path / "exp"
    shutil.copytree(root, copy)
    assert keep_chosen_models(str(copy)) == (1, 1)
    left = sorted(p.stem for p in (copy / "results" / "models").rglob("*.pt"))
    assert left == [_chosen(results)]
    assert keep_chosen_models(str(copy)) == (1, 0)  # idempotent: a resumed sweep ends the same way
