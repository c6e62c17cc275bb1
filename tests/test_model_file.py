"""Every trial keeps its final model, small (issue 18): a bitmask of the kept positions plus the kept values,
written atomically beside the trial's Parquet rows; loading rebuilds the torchvision model with exact zeros
where pruned and the very accuracy the trial recorded."""

from __future__ import annotations


import pandas as pd
import pytest
import torch

from helpers import TINY
from results import schema
from trainables import model_file
from vocabulary.config import TrialConfig
from trainables.data import Loader, load_splits
from trainables.models import build_model
from trainables.sparsity import make_sparsity_set, prunable_parameters
from trainables.trial import run_trial

torch.set_num_threads(1)


def _accuracy(model, x, y, mean, std) -> float:
    loader = Loader(x, y, batch_size=256, shuffle=False, augment=False, mean=mean, std=std)
    correct = n = 0
    with torch.no_grad():
        for xb, yb in loader.batches(0):
            correct += int((model(xb).argmax(1) == yb).sum())
            n += len(yb)
    return correct / n


@pytest.mark.parametrize("method", ["admm", "magnitude"])
def test_the_kept_model_loads_with_exact_zeros_and_scores_the_recorded_accuracy(method, tmp_path):
    cfg = {**TINY, "method": method, "sparsity": 0.7}
    data = load_splits(TrialConfig.from_dict(cfg).data)
    result = run_trial(cfg, data=data, trial_id="t1")
    paths = result.write(str(tmp_path), trial_id="t1")
    assert paths["model"].endswith(schema.model_path(arch=TINY["arch"], method=method, trial_id="t1"))
    with open(paths["model"], "rb") as f:
        payload = f.read()
    assert payload == result.model
    model, meta = model_file.load_model(payload)
    assert meta["trial_id"] == "t1" and meta["config"]["sparsity"] == 0.7
    # exact zeros: the prunable nonzero count is the trial's own, pruned positions are 0.0 exactly
    params = [p for _, p in prunable_parameters(model)]
    assert sum(int(torch.count_nonzero(p)) for p in params) == result.summary["prunable_nonzero"]
    # the BN statistics the final accuracy was measured with: the loaded model scores it again
    assert _accuracy(model, data.val_x, data.val_y, data.mean, data.std) == result.summary["final_val_acc"]
    assert _accuracy(model, data.test_x, data.test_y, data.mean, data.std) == result.summary["final_test_acc"]
    row = pd.read_parquet(tmp_path / "results" / "trials").iloc[0]
    assert row["model_bytes"] == len(payload) and row["dense_bytes"] > row["model_bytes"]


def test_a_trial_that_keeps_no_model_writes_none_but_records_its_size(tmp_path):
    result = run_trial({**TINY, "method": "magnitude", "keep_model": False}, trial_id="t2")
    paths = result.write(str(tmp_path), trial_id="t2")
    assert result.model is None and "model" not in paths
    assert not list(tmp_path.rglob("*.pt"))
    assert result.summary["model_bytes"] > 0


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_at_sparsity_0_9_the_file_is_well_under_a_third_of_the_dense_file(arch):
    torch.manual_seed(0)
    model = build_model(arch, width=1.0)
    named = prunable_parameters(model)
    with torch.no_grad():
        for p, q in zip([p for _, p in named], make_sparsity_set("uniform", 0.9).project([p for _, p in named])):
            p.copy_(q)
    payload = model_file.encode(model, prunable=[n for n, _ in named], config={"arch": arch}, trial_id="x",
                                mean=(0.5,) * 3, std=(0.25,) * 3)
    ratio = len(payload) / model_file.dense_nbytes(model)
    print(f"{arch}: {len(payload)} bytes sparse / {model_file.dense_nbytes(model)} dense = {ratio:.3f}")
    assert ratio < 0.25
    state = model_file.decode(payload)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_bytes_that_are_not_a_model_file_are_refused():
    with pytest.raises(ValueError, match="not a prunesweep model file"):
        model_file.decode(b"not a model")
