"""Figures, split as in Optuna's visualization: pure ``*_data`` functions that extract what to draw
(DataFrames in, DataFrames out) and ``plot_*`` renderers that take that data and return a matplotlib
Figure. Renderers never save or show; the CLI does that. The Agg backend is forced because reports are
built headless (CI, clusters)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from . import tables as T  # noqa: E402

METHOD_COLORS = {"admm": "tab:blue", "magnitude": "tab:orange", "dense": "black"}


def _color(method: str) -> str:
    return METHOD_COLORS.get(method, "tab:gray")


def _grid(n: int, rows: int = 1, width: float = 4.2, height: float = 3.2):
    fig, axes = plt.subplots(rows, max(n, 1), figsize=(width * max(n, 1), height * rows), squeeze=False)
    return fig, axes


def _empty(fig, ax, message: str):
    fig.set_size_inches(6, 1)  # a message, not a plot: keep it short in the report
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


# --- training curves -------------------------------------------------------------------------------------

def best_trial_ids(trials: pd.DataFrame, sparsity: float | None = None) -> dict[tuple[str, str], list[str]]:
    """Trial ids (all seeds) of the best configuration per (arch, method), chosen on validation: at sparsity
    level ``sparsity`` (tables.comparison_level) where that (arch, method) has finished trials there, else at
    any level (so the figures still show every method of a sweep that never ran the requested level)."""
    picked = {(r.arch, r.method): r.trial_ids.split(",") for r in T.best_configs(trials).itertuples()}
    if sparsity is not None:
        picked.update({(r.arch, r.method): r.trial_ids.split(",")
                       for r in T.best_configs(trials, sparsity).itertuples()})
    return picked


def curves_data(trials: pd.DataFrame, epochs: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """Per (arch, method, epoch): mean, min and max over seeds of objective and val_acc of the best config."""
    ids = best_trial_ids(trials, sparsity)
    parts = []
    for (arch, method), tids in ids.items():
        rows = epochs[epochs["trial_id"].isin(tids) & (epochs["arch"] == arch) & (epochs["method"] == method)]
        if rows.empty:
            continue
        agg = rows.groupby("epoch").agg(
            phase=("phase", "first"), objective_mean=("objective", "mean"), objective_min=("objective", "min"),
            objective_max=("objective", "max"), val_acc_mean=("val_acc", "mean"), val_acc_min=("val_acc", "min"),
            val_acc_max=("val_acc", "max"), n_seeds=("trial_id", "nunique")).reset_index()
        parts.append(agg.assign(arch=arch, method=method))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_curves(data: pd.DataFrame):
    """Objective (top) and validation accuracy (bottom) per epoch, both methods, one column per arch."""
    archs = sorted(data["arch"].unique()) if not data.empty else []
    fig, axes = _grid(len(archs), rows=2)
    if not archs:
        return _empty(fig, axes[0, 0], "no epochs of finished trials")
    for col, arch in enumerate(archs):
        for method, rows in data[data["arch"] == arch].groupby("method"):
            for row, metric in enumerate(("objective", "val_acc")):
                ax = axes[row, col]
                label = f"{method} (n={int(rows['n_seeds'].max())})"
                ax.plot(rows["epoch"], rows[f"{metric}_mean"], color=_color(method), label=label, marker=".")
                ax.fill_between(rows["epoch"], rows[f"{metric}_min"], rows[f"{metric}_max"],
                                color=_color(method), alpha=0.2, linewidth=0)
        axes[0, col].set_title(arch)
        axes[0, col].set_ylabel("train objective")
        axes[1, col].set_ylabel("val accuracy")
        axes[1, col].set_xlabel("epoch (all phases)")
        axes[0, col].legend(fontsize=8)
    fig.suptitle("Best configuration per method: mean over seeds, band = min..max")
    fig.tight_layout()
    return fig


# --- weight distributions --------------------------------------------------------------------------------

def weights_data(trials: pd.DataFrame, weights: pd.DataFrame, sparsity: float | None = None,
                 stages: tuple[str, ...] = ("dense", "pre_prune", "final")) -> pd.DataFrame:
    """Histogram counts summed over the seeds of the best config per (arch, method, stage, bin).

    The exact-zero row (bin_lo == bin_hi == 0) is kept as its own bin, flagged ``is_zero``.
    """
    ids = best_trial_ids(trials, sparsity)
    parts = []
    for (arch, method), tids in ids.items():
        rows = weights[weights["trial_id"].isin(tids) & (weights["arch"] == arch) & (weights["method"] == method)
                       & weights["stage"].isin(stages)]
        if rows.empty:
            continue
        agg = rows.groupby(["stage", "bin_lo", "bin_hi"])["count"].sum().reset_index()
        parts.append(agg.assign(arch=arch, method=method))
    if not parts:
        return pd.DataFrame(columns=["arch", "method", "stage", "bin_lo", "bin_hi", "count", "is_zero"])
    data = pd.concat(parts, ignore_index=True)
    return data.assign(is_zero=(data["bin_lo"] == 0) & (data["bin_hi"] == 0))


def plot_weights(data: pd.DataFrame):
    """Rows: arch; columns: method; one step histogram per stage, log counts; exact zeros as a marker at 0."""
    archs = sorted(data["arch"].unique()) if not data.empty else []
    methods = sorted(data["method"].unique()) if not data.empty else []
    fig, axes = plt.subplots(max(len(archs), 1), max(len(methods), 1), figsize=(5 * max(len(methods), 1),
                             3.2 * max(len(archs), 1)), squeeze=False)
    if not archs:
        return _empty(fig, axes[0, 0], "no weight histograms of finished trials")
    styles = {"dense": ":", "pre_prune": "-", "post_prune": "--", "final": "-"}
    stage_colors = {"dense": "gray", "pre_prune": "tab:green", "post_prune": "tab:purple", "final": "tab:red"}
    for r, arch in enumerate(archs):
        for c, method in enumerate(methods):
            ax = axes[r, c]
            sel = data[(data["arch"] == arch) & (data["method"] == method)]
            for stage, rows in sel.groupby("stage", sort=False):
                bins = rows[~rows["is_zero"]].sort_values("bin_lo")
                zeros = int(rows.loc[rows["is_zero"], "count"].sum())
                color = stage_colors.get(stage, "black")
                ax.step(bins["bin_lo"], bins["count"].clip(lower=0.5), where="post", color=color,
                        linestyle=styles.get(stage, "-"), label=f"{stage} (exact zeros: {zeros})")
                if zeros:
                    ax.plot([0], [zeros], marker="v", color=color, linestyle="none")
            ax.set_yscale("log")
            ax.set_xlim(-0.5, 0.5)
            ax.set_title(f"{arch} / {method}")
            ax.set_xlabel("weight value")
            ax.set_ylabel("count (log)")
            ax.legend(fontsize=7)
    fig.suptitle("Prunable weights before and after pruning (best config, seeds summed); ▼ = exact zeros")
    fig.tight_layout()
    return fig


# --- accuracy vs sparsity --------------------------------------------------------------------------------

def sparsity_data(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every configuration's mean point with its mean achieved sparsity, Pareto front rows incl. the dense
    control rows) for the sparsity plot."""
    summary = T.config_summary(trials).rename(columns={"achieved_sparsity_mean": "achieved_sparsity"})
    return summary, T.pareto_front(trials)


def _plot_controls(ax, controls: pd.DataFrame) -> None:
    """The dense control (same budget) and the dense start as horizontal lines; a missing control is said."""
    for _, row in controls.iterrows():
        budget = "" if math.isnan(row["budget_epochs"]) else f", {int(row['budget_epochs'])} epochs"
        if math.isnan(row["final_val_acc"]):
            ax.plot([], [], " ", label="dense control missing")
        else:
            ax.axhline(row["final_val_acc"], color="black", linestyle=":", label=f"dense control (val{budget})")
        if not math.isnan(row["dense_start_val_acc"]):
            epoch = "" if math.isnan(row["dense_start_epoch"]) else f", epoch {int(row['dense_start_epoch'])}"
            ax.axhline(row["dense_start_val_acc"], color="gray", linestyle="-.", linewidth=0.8,
                       label=f"dense start (val{epoch})")


def plot_sparsity(points: pd.DataFrame, front: pd.DataFrame):
    """Validation accuracy against achieved sparsity, every configuration plus each method's Pareto front,
    the dense control and the dense start."""
    archs = sorted(points["arch"].unique()) if not points.empty else []
    fig, axes = _grid(len(archs))
    if not archs:
        return _empty(fig, axes[0, 0], "no finished trials")
    for col, arch in enumerate(archs):
        ax = axes[0, col]
        for method, rows in points[points["arch"] == arch].groupby("method"):
            ax.scatter(rows["achieved_sparsity"], rows["final_val_acc_mean"], color=_color(method), alpha=0.35, s=18)
        mine = front[front["arch"] == arch]
        _plot_controls(ax, mine[mine["row"] == "control"])
        for method, rows in mine[mine["row"] == "pareto"].groupby("method"):
            ax.plot(rows["achieved_sparsity"], rows["final_val_acc"], color=_color(method), marker="o",
                    label=f"{method} Pareto front")
        ax.set_title(arch)
        ax.set_xlabel("achieved sparsity (fraction of prunable weights = 0)")
        ax.set_ylabel("final val accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- ADMM residual and rho -------------------------------------------------------------------------------

def admm_data(trials: pd.DataFrame, epochs: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """Epoch rows (sparsify phase) of the best ADMM configuration per arch: primal residual and rho."""
    ids = best_trial_ids(trials, sparsity)
    tids = [t for (arch, method), ts in ids.items() if method == "admm" for t in ts]
    rows = epochs[epochs["trial_id"].isin(tids) & (epochs["method"] == "admm") & (epochs["phase"] == "sparsify")]
    return rows[["arch", "trial_id", "seed", "epoch", "primal_residual", "dual_residual", "rho"]].sort_values(
        ["arch", "trial_id", "epoch"]).reset_index(drop=True)


def plot_admm(data: pd.DataFrame):
    """Primal residual sum ||W - Z||^2 (log) and rho per epoch, one column per arch, one line per seed."""
    archs = sorted(data["arch"].unique()) if not data.empty else []
    fig, axes = _grid(len(archs), rows=2)
    if not archs:
        return _empty(fig, axes[0, 0], "no ADMM epochs of finished trials")
    for col, arch in enumerate(archs):
        for tid, rows in data[data["arch"] == arch].groupby("trial_id"):
            label = f"seed {int(rows['seed'].iloc[0])}"
            residual = rows["primal_residual"].where(rows["primal_residual"] > 0)
            axes[0, col].plot(rows["epoch"], residual, marker="o", label=label)
            axes[1, col].plot(rows["epoch"], rows["rho"], marker="o", label=label)
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(arch)
        axes[0, col].set_ylabel("primal residual Σ‖W−Z‖²")
        axes[1, col].set_ylabel("rho")
        axes[1, col].set_xlabel("epoch")
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- hyperparameter importance ---------------------------------------------------------------------------

def plot_importance(studies: dict):
    """Horizontal bars of each study's parameter importances: ``studies`` maps a study name to an object with
    ``importances`` (name -> value) and ``label`` (the evaluator and target, for the axis), as
    analysis.report.importance_data gives them."""
    names = sorted(studies)
    fig, axes = _grid(len(names), width=4.2, height=2.8)
    if not names:
        return _empty(fig, axes[0, 0], "no Optuna study with enough complete trials")
    for col, name in enumerate(names):
        ax = axes[0, col]
        items = sorted(studies[name].importances.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(studies[name].label, fontsize=7, wrap=True)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Release a figure's memory (pyplot keeps a reference to every figure it made)."""
    plt.close(fig)

