"""``python -m analysis export EXPERIMENT --arch A --method M --sparsity S [--seed K] --out FILE [--format pt|onnx]``

Writes the CHOSEN configuration's pruned model (chosen on validation accuracy by the shared rule,
results.selection: complete configurations only) at one comparison level as a standalone file:

- ``pt`` (default): a ``torch.export`` program (``torch.export.load(FILE).module()`` runs it without this
  project), input float NCHW images in [0, 1] of 32x32 RGB, any batch size, normalisation inside;
- ``onnx``: the same through torch's ONNX exporter (input ``images``, output ``logits``, dynamic batch).

The seed is ``--seed`` or the chosen configuration's lowest seed. Needs torch (imported here only: the rest of
``analysis`` stays torch-free). Bad input raises ExperimentError naming the option, before anything is written.
"""

from __future__ import annotations

import os

import pandas as pd

from results import files, schema

from .load import ExperimentError, display_name
from .tables import SPARSITY_TOL, annotate, best_configs

FORMATS = ("pt", "onnx")


def export_command(experiment: str, trials: pd.DataFrame, *, arch: str, method: str, sparsity: float,
                   seed: int | None, out: str, fmt: str) -> dict:
    """Find the chosen model, check ``out``, write it; returns what was exported (trial id, seed, config)."""
    row = chosen_row(trials, arch=arch, method=method, sparsity=sparsity, seed=seed)
    rel = schema.model_path(arch=arch, method=method, trial_id=row["trial_id"])
    payload = files.read_bytes(experiment, rel)
    if payload is None:
        raise ExperimentError(f"--seed: no model kept for trial {row['trial_id']} (seed {row['seed']}) of the chosen "
                              f"configuration in {display_name(experiment)}: the sweep ran with --keep-models "
                              "none, or with chosen before this configuration was chosen; re-run it with "
                              "`python -m sweep confirm` or `python -m trainables train` to get its model")
    folder = os.path.dirname(os.path.abspath(out)) or "."
    if not os.path.isdir(folder):
        raise ExperimentError(f"--out: folder {folder} does not exist")
    write_model(payload, out, fmt)
    return {"trial_id": row["trial_id"], "seed": int(row["seed"]), "config": row["config"], "out": out,
            "final_val_acc": float(row["final_val_acc"]), "final_test_acc": float(row["final_test_acc"])}


def chosen_row(trials: pd.DataFrame, *, arch: str, method: str, sparsity: float, seed: int | None) -> pd.Series:
    """The trials row of the chosen configuration's model to export. Raises ExperimentError naming the option."""
    for option, column, value in (("--arch", "arch", arch), ("--method", "method", method)):
        ran = sorted(trials[column].dropna().unique())
        if value not in ran:
            raise ExperimentError(f"{option}: {value!r} did not run here (ran: {', '.join(ran)})")
    rows = annotate(trials[(trials["arch"] == arch) & (trials["method"] == method)])
    levels = sorted(rows["sparsity_level"].dropna().astype(float).unique())
    if not any(abs(level - sparsity) <= SPARSITY_TOL for level in levels):
        raise ExperimentError(f"--sparsity: {arch} {method} never ran at {sparsity} "
                              f"(levels that ran: {', '.join(f'{v:g}' for v in levels)})")
    best = best_configs(trials, sparsity)
    best = best[(best["arch"] == arch) & (best["method"] == method)]
    if best.empty:
        raise ExperimentError(f"--sparsity: no configuration of {arch} {method} at {sparsity} is complete (every "
                              "seed finished ok), so none is chosen: see the report's configuration table")
    chosen = rows[(rows["config"] == best.iloc[0]["config"]) & (rows["status"] == "ok")].sort_values("seed")
    if seed is None:
        return chosen.iloc[0]
    picked = chosen[chosen["seed"] == seed]
    if picked.empty:
        raise ExperimentError(f"--seed: {seed} is not a seed of the chosen configuration (its seeds: "
                              f"{', '.join(str(s) for s in chosen['seed'])})")
    return picked.iloc[0]


def write_model(payload: bytes, out: str, fmt: str) -> None:
    """The model file's bytes as a standalone ``fmt`` file at ``out`` (written to a temporary name, then
    renamed: an interrupted export leaves no half file)."""
    import torch

    from trainables.model_file import load_model, with_normalization

    model, meta = load_model(payload)
    wrapped = with_normalization(model, meta["mean"], meta["std"])
    example = torch.rand(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=65536)
    folder, name = os.path.split(os.path.abspath(out))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")  # same extension: torch.export checks it
    try:
        if fmt == "onnx":
            torch.onnx.export(wrapped, (example,), tmp, dynamo=True, dynamic_shapes=({0: batch},),
                              input_names=["images"], output_names=["logits"], verbose=False)
        else:
            torch.export.save(torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},)), tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export_hint(experiment: str, arch: str, method: str, sparsity: float) -> str:
    """The command that exports one chosen configuration (the report prints it per row)."""
    return (f"python -m analysis export {display_name(experiment)} --arch {arch} --method {method} "
            f"--sparsity {sparsity:g} --out {arch}-{method}-{sparsity:g}.pt2")
