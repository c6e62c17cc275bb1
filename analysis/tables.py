"""Pure table functions: DataFrame in, DataFrame out. No I/O.

Selection uses the validation split only and reporting uses the test split only (DESIGN rule 5); every
table says which split each number comes from in its column names (``*_val_*`` / ``*_test_*``).
Diverged and failed trials are never scored (not as zero, not dropped silently): they are counted in
``accounting`` and listed by ``diverged_trials`` (DESIGN rule 8).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

# The hyperparameters that identify one configuration; seeds of the same configuration share all of them.
CONFIG_COLUMNS = ("sparsity_set", "schedule", "target_sparsity", "lr", "rho", "rho_growth", "admm_interval",
                  "optimizer", "dense_epochs", "sparsify_epochs", "finetune_epochs")
GROUP = ("arch", "method")
STAGES = ("dense", "pre_prune", "post_prune", "post_prune_stale_bn", "final")
SPARSITY_TOL = 1e-6  # target sparsities are typed fractions; compare with a tolerance, not ==


def _config_key(trials: pd.DataFrame) -> pd.Series:
    """A string naming each row's configuration (NaN-safe, unlike groupby on float columns with NaN)."""
    cols = [c for c in CONFIG_COLUMNS if c in trials]
    if trials.empty:  # agg(axis=1) of an empty frame is a frame, not a series
        return pd.Series([], index=trials.index, dtype=object)
    return trials[cols].map(str).agg("|".join, axis=1)


def ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that finished with status ok."""
    return trials[trials["status"] == "ok"]


def at_sparsity(trials: pd.DataFrame, sparsity: float) -> pd.DataFrame:
    """Rows whose target sparsity equals ``sparsity`` (a fraction in [0, 1))."""
    return trials[(trials["target_sparsity"] - sparsity).abs() <= SPARSITY_TOL]


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def config_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, method, configuration) of ok trials: mean val/test final accuracy, n seeds, ids."""
    ok = ok_trials(trials).assign(config=lambda t: _config_key(t))
    if ok.empty:
        return pd.DataFrame(columns=[*GROUP, "config", *CONFIG_COLUMNS, "n_seeds", "final_val_acc_mean",
                                     "final_test_acc_mean", "trial_ids"])
    grouped = ok.groupby([*GROUP, "config"], sort=True)
    out = grouped.agg(n_seeds=("seed", "nunique"), final_val_acc_mean=("final_val_acc", "mean"),
                      final_test_acc_mean=("final_test_acc", "mean"),
                      trial_ids=("trial_id", lambda s: ",".join(sorted(s)))).reset_index()
    firsts = grouped[[c for c in CONFIG_COLUMNS if c in ok]].first().reset_index()
    return out.merge(firsts, on=[*GROUP, "config"])


def best_configs(trials: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """The configuration with the best mean final_val_acc per (arch, method) [at ``sparsity`` if given].

    Ties are broken by the configuration key so the choice is deterministic. Test accuracy plays no part.
    """
    pool = trials if sparsity is None else at_sparsity(trials, sparsity)
    summary = config_summary(pool)
    if summary.empty:
        return summary
    summary = summary.sort_values([*GROUP, "final_val_acc_mean", "config"], ascending=[True, True, False, True])
    return summary.groupby(list(GROUP), sort=True).head(1).reset_index(drop=True)


def comparison_table(trials: pd.DataFrame, sparsity: float = 0.5) -> pd.DataFrame:
    """The original study's table at matched ``sparsity``: per (arch, method), the configuration chosen on
    validation, its dense / pre-prune / post-prune (BN recalibrated and stale BN) / final TEST accuracy as
    mean and std over seeds, n seeds and the trial ids. Empty frame if nothing finished at that sparsity."""
    best = best_configs(trials, sparsity)
    ok = ok_trials(trials).assign(config=lambda t: _config_key(t))
    rows = []
    for _, b in best.iterrows():
        sel = ok[(ok["arch"] == b["arch"]) & (ok["method"] == b["method"]) & (ok["config"] == b["config"])]
        row = {"arch": b["arch"], "method": b["method"], "target_sparsity": sparsity,
               "selected_on": "val (mean final_val_acc)", "reported_on": "test",
               "final_val_acc_mean": b["final_val_acc_mean"]}
        for stage in STAGES:
            row[f"{stage}_test_acc_mean"], row[f"{stage}_test_acc_std"] = _mean_std(sel[f"{stage}_test_acc"])
        row["achieved_sparsity_mean"] = float(sel["achieved_sparsity"].mean())
        row["n_seeds"] = int(sel["seed"].nunique())
        row["trial_ids"] = ",".join(sorted(sel["trial_id"]))
        rows.append(row)
    return pd.DataFrame(rows)


def best_hyperparameters(trials: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """The best configuration's hyperparameters per (arch, method), chosen on mean final_val_acc."""
    best = best_configs(trials, sparsity)
    cols = [*GROUP, *[c for c in CONFIG_COLUMNS if c in best], "n_seeds", "final_val_acc_mean", "trial_ids"]
    return best[cols] if not best.empty else pd.DataFrame(columns=cols)


def _pareto_mask(sparsity: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """True where no other point has sparsity >= and accuracy >= with one of them strictly greater."""
    keep = np.ones(len(acc), dtype=bool)
    for i in range(len(acc)):
        dominated = (sparsity >= sparsity[i]) & (acc >= acc[i]) & ((sparsity > sparsity[i]) | (acc > acc[i]))
        keep[i] = not dominated.any()
    return keep


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """Accuracy-vs-sparsity Pareto front per (arch, method) over configurations (mean over seeds).

    Points are compared on validation accuracy and achieved sparsity; test accuracy sits beside. Each
    (arch) gets a ``dense`` control row (the mean dense accuracy, sparsity 0, all parameters and MACs).
    """
    ok = ok_trials(trials).assign(config=lambda t: _config_key(t))
    cols = [*GROUP, "row", "config", "target_sparsity", "achieved_sparsity", "final_val_acc", "final_test_acc",
            "nonzero_params", "total_params", "nonzero_macs", "dense_macs", "n_seeds"]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    agg = ok.groupby([*GROUP, "config"]).agg(
        target_sparsity=("target_sparsity", "first"), achieved_sparsity=("achieved_sparsity", "mean"),
        final_val_acc=("final_val_acc", "mean"), final_test_acc=("final_test_acc", "mean"),
        nonzero_params=("nonzero_params", "mean"), total_params=("total_params", "first"),
        nonzero_macs=("nonzero_macs", "mean"), dense_macs=("dense_macs", "first"),
        n_seeds=("seed", "nunique")).reset_index()
    parts = []
    for arch, arch_rows in agg.groupby("arch", sort=True):
        dense = ok[ok["arch"] == arch]
        parts.append(pd.DataFrame([{
            "arch": arch, "method": "dense", "row": "control", "config": "", "target_sparsity": 0.0,
            "achieved_sparsity": 0.0, "final_val_acc": dense["dense_val_acc"].mean(),
            "final_test_acc": dense["dense_test_acc"].mean(), "nonzero_params": dense["total_params"].max(),
            "total_params": dense["total_params"].max(), "nonzero_macs": dense["dense_macs"].max(),
            "dense_macs": dense["dense_macs"].max(), "n_seeds": dense["seed"].nunique()}]))
        for _, rows in arch_rows.groupby("method", sort=True):
            mask = _pareto_mask(rows["achieved_sparsity"].to_numpy(float), rows["final_val_acc"].to_numpy(float))
            parts.append(rows[mask].assign(row="pareto").sort_values("achieved_sparsity"))
    return pd.concat(parts, ignore_index=True)[cols]


def paired_comparison(trials: pd.DataFrame, first: str = "admm", second: str = "magnitude") -> pd.DataFrame:
    """``first`` minus ``second`` final TEST accuracy at each matched target sparsity per arch, paired by seed.

    Each method contributes its best configuration at that sparsity (chosen on validation). Reports n pairs,
    mean difference, 95% t-interval and the paired t-test p-value; with n < 2 these are NaN and ``note`` says
    "n/a (n < 2)".
    """
    ok = ok_trials(trials).assign(config=lambda t: _config_key(t))
    rows = []
    for (arch, sparsity), _ in ok.groupby(["arch", "target_sparsity"], sort=True):
        best = best_configs(ok[ok["arch"] == arch], sparsity)
        picked = {}
        for method in (first, second):
            b = best[best["method"] == method]
            if b.empty:
                continue
            sel = ok[(ok["arch"] == arch) & (ok["method"] == method) & (ok["config"] == b["config"].iloc[0])]
            picked[method] = sel.groupby("seed")["final_test_acc"].mean()
        if len(picked) < 2:
            continue
        pairs = pd.concat(picked, axis=1, join="inner").dropna()
        diff = (pairs[first] - pairs[second]).to_numpy(float)
        rows.append({"arch": arch, "target_sparsity": sparsity, "comparison": f"{first} - {second}",
                     "split": "test", "n_pairs": len(diff), "seeds": ",".join(str(s) for s in pairs.index),
                     **_paired_stats(diff)})
    cols = ["arch", "target_sparsity", "comparison", "split", "n_pairs", "seeds", "mean_diff", "ci95_lo",
            "ci95_hi", "p_value", "note"]
    return pd.DataFrame(rows, columns=cols)


def _paired_stats(diff: np.ndarray) -> dict:
    """Mean difference, 95% t-interval and two-sided paired t-test p-value (scipy) of paired differences."""
    n = len(diff)
    if n < 2:
        return {"mean_diff": float(diff.mean()) if n else math.nan, "ci95_lo": math.nan, "ci95_hi": math.nan,
                "p_value": math.nan, "note": "n/a (n < 2)"}
    mean, sem = float(diff.mean()), float(stats.sem(diff))
    if sem == 0.0:  # identical differences: the t statistic is undefined, the interval is a point
        return {"mean_diff": mean, "ci95_lo": mean, "ci95_hi": mean, "p_value": math.nan,
                "note": "zero variance of differences"}
    half = float(stats.t.ppf(0.975, n - 1)) * sem
    p = float(stats.ttest_rel(diff, np.zeros(n)).pvalue)
    return {"mean_diff": mean, "ci95_lo": mean - half, "ci95_hi": mean + half, "p_value": p, "note": ""}


def accounting(trials: pd.DataFrame) -> pd.DataFrame:
    """Sweep accounting per (arch, method): trials run, ok, diverged, failed, stopped early (ASHA), compute
    seconds (sum of wall times)."""
    if trials.empty:
        return pd.DataFrame(columns=[*GROUP, "trials", "ok", "diverged", "failed", "stopped", "compute_s"])
    out = trials.groupby(list(GROUP), sort=True).agg(
        trials=("trial_id", "nunique"), ok=("status", lambda s: int((s == "ok").sum())),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        failed=("status", lambda s: int((s == "failed").sum())),
        stopped=("status", lambda s: int((s == "stopped").sum())), compute_s=("wall_time_s", "sum"))
    return out.reset_index()


def diverged_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Every trial that did not finish ok, with its configuration and error, so none vanish silently."""
    cols = [*GROUP, "trial_id", "seed", "status", "error", "target_sparsity", "lr", "rho", "epochs_run"]
    return trials[trials["status"] != "ok"][cols].sort_values([*GROUP, "trial_id"]).reset_index(drop=True)
