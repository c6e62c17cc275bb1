"""Figures, split as in Optuna's visualization: pure ``*_data`` functions that extract what to draw
(DataFrames in, DataFrames out) and ``plot_*`` renderers that take that data and return a matplotlib
Figure. Renderers never save or show; the CLI does that. They build ``matplotlib.figure.Figure`` objects
directly, not through pyplot: no backend is chosen and no global figure list grows, so reports build headless
(CI, clusters) and importing this module changes nothing."""

from __future__ import annotations

import math

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from vocabulary import config as vocabulary_config

from . import tables

# A method's colour is its place in the registry (vocabulary.config.METHODS, as tables.method_order), so it is
# the same in every figure and a method registered later never recolours the others; the dense control is
# black, a method the registry does not hold (older results) gray.
METHOD_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                  "tab:olive", "tab:cyan")
DENSE_COLOR, UNKNOWN_COLOR = "black", "tab:gray"


def _color(method: str) -> str:
    if method == "dense":
        return DENSE_COLOR
    registry = tuple(vocabulary_config.METHODS)
    return METHOD_PALETTE[registry.index(method) % len(METHOD_PALETTE)] if method in registry else UNKNOWN_COLOR


def _subplots(rows: int, cols: int, figsize: tuple[float, float]):
    """(a new Figure, its rows x cols array of Axes): pyplot.subplots without pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _grid(n: int, rows: int = 1, width: float = 4.2, height: float = 3.2):
    return _subplots(rows, max(n, 1), (width * max(n, 1), height * rows))


def _empty(fig, ax, message: str):
    fig.set_size_inches(6, 1)  # a message, not a plot: keep it short in the report
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


# --- shared axes helpers ---------------------------------------------------------------------------------------

FEW_POINTS = 30  # up to this many points per line, draw markers (a 1- or 2-point line is otherwise invisible)
LOG_SPAN = 10.0  # positive values spanning more than this factor get a log axis
PHASE_LABELS = {"dense": "dense", "sparsify": "sparsify", "finetune": "fine-tune"}


def _marker(n_points: int) -> str | None:
    return "o" if n_points <= FEW_POINTS else None


def _integer_ticks(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _scale_for(ax, values: pd.Series) -> None:
    """Log y where the positive values span more than LOG_SPAN, else linear with some room."""
    positive = pd.to_numeric(values, errors="coerce")
    positive = positive[positive > 0]
    if len(positive) and positive.max() / positive.min() > LOG_SPAN:
        ax.set_yscale("log")


def _legend_below(ax) -> None:
    """The legend under the axes, where it cannot hide a point."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def _rho_axis(ax, rho: pd.Series) -> None:
    """A constant rho gets an axis from 0 to twice its value and says so (matplotlib would zoom into
    rounding noise); a rho spanning orders of magnitude gets a log axis."""
    values = pd.to_numeric(rho, errors="coerce").dropna()
    if len(values) and values.max() == values.min():
        ax.set_ylim(0, 2 * values.max() if values.max() > 0 else 1)
        ax.text(0.02, 0.92, f"rho constant at {values.max():.3g}", transform=ax.transAxes, fontsize=8, va="top")
    else:
        _scale_for(ax, values)


def phase_spans(rows: pd.DataFrame) -> pd.DataFrame:
    """(phase, first, last epoch) of each phase in ``rows`` (epoch rows with ``phase`` and ``epoch``), in
    epoch order: where the phase boundaries go on a per-epoch figure."""
    if rows.empty:
        return pd.DataFrame(columns=["phase", "first", "last"])
    spans = rows.groupby("phase")["epoch"].agg(first="min", last="max").reset_index()
    return spans.sort_values("first").reset_index(drop=True)


def _mark_phases(ax, spans: pd.DataFrame, label: bool = True) -> None:
    """Dotted lines between phases, each phase's name along the top of the axes."""
    for i, span in enumerate(spans.itertuples()):
        if i:
            ax.axvline(span.first - 0.5, color="gray", linestyle=":", linewidth=1)
        if label:
            ax.text((span.first + span.last) / 2, 1.0, PHASE_LABELS.get(span.phase, span.phase), ha="center",
                    va="bottom", fontsize=8, color="dimgray", transform=ax.get_xaxis_transform())


# --- training curves -------------------------------------------------------------------------------------

def best_trial_ids(trials: pd.DataFrame, sparsity: float | None = None) -> dict[tuple[str, str], list[str]]:
    """Trial ids (all seeds) of the best configuration per (arch, method), chosen on validation: at sparsity
    level ``sparsity`` (tables.comparison_level) where that (arch, method) has finished trials there, else at
    any level (so the figures still show every method of a sweep that never ran the requested level)."""
    picked = {(r.arch, r.method): r.trial_ids.split(",") for r in tables.best_configs(trials).itertuples()}
    if sparsity is not None:
        picked.update({(r.arch, r.method): r.trial_ids.split(",")
                       for r in tables.best_configs(trials, sparsity).itertuples()})
    return picked


def curves_data(trials: pd.DataFrame, epochs: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """Per (arch, method, epoch): phase, mean, min and max over seeds of objective and val_acc (BN
    recalibrated) of the best configuration."""
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
    """Objective (top) and validation accuracy in percent (bottom) per epoch, both methods, one column per
    arch; integer epoch ticks, phase boundaries marked, markers where there are few epochs."""
    archs = sorted(data["arch"].unique()) if not data.empty else []
    fig, axes = _grid(len(archs), rows=2, width=5.0)
    if not archs:
        return _empty(fig, axes[0, 0], "no epochs of finished trials")
    for col, arch in enumerate(archs):
        mine = data[data["arch"] == arch]
        for method, rows in mine.groupby("method"):
            for row, (metric, scale) in enumerate((("objective", 1.0), ("val_acc", 100.0))):
                ax = axes[row, col]
                label = f"{method} (n={int(rows['n_seeds'].max())} seeds)"
                ax.plot(rows["epoch"], scale * rows[f"{metric}_mean"], color=_color(method), label=label,
                        marker=_marker(len(rows)), markersize=4)
                ax.fill_between(rows["epoch"], scale * rows[f"{metric}_min"], scale * rows[f"{metric}_max"],
                                color=_color(method), alpha=0.2, linewidth=0)
        spans = phase_spans(mine)
        for row in range(2):
            _mark_phases(axes[row, col], spans, label=row == 0)
        _label_column(axes[:, col], arch, ("train objective", "val accuracy (%)"), "epoch (all phases)",
                      title_pad=14, legend_size=8)
    fig.tight_layout()
    return fig


def _label_column(column, title: str, ylabels: tuple[str, str], xlabel: str, *, title_pad: float = 6.0,
                  legend_size: int = 8) -> None:
    """One architecture's column of a two-row figure: integer epoch ticks, the title on top, the y labels,
    the x label at the bottom and the legend in the top plot."""
    for ax, ylabel in zip(column, ylabels):
        _integer_ticks(ax)
        ax.set_ylabel(ylabel)
    column[0].set_title(title, pad=title_pad)
    column[-1].set_xlabel(xlabel)
    column[0].legend(fontsize=legend_size)


def curves_alt(data: pd.DataFrame) -> str:
    if data.empty:
        return "No training curves: no epochs of finished trials."
    last = int(data["epoch"].max())
    return (f"Line charts, one column per architecture ({', '.join(sorted(data['arch'].unique()))}): training "
            f"objective (top) and validation accuracy in percent (bottom) over epochs 1 to {last} for "
            f"{', '.join(sorted(data['method'].unique()))}, with the phases marked.")


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
    fig, axes = _subplots(max(len(archs), 1), max(len(methods), 1),
                          (5 * max(len(methods), 1), 3.2 * max(len(archs), 1)))
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


def weights_alt(data: pd.DataFrame) -> str:
    if data.empty:
        return "No weight histograms: no finished trial recorded any."
    final = data[data["stage"] == "final"]
    zero = final.loc[final["is_zero"], "count"].sum() / max(final["count"].sum(), 1)
    return (f"Step histograms (log counts) of all prunable weights per architecture and method at stages "
            f"{', '.join(sorted(data['stage'].unique()))}; after fine-tuning {100 * zero:.0f}% of the weights are "
            "exactly zero.")


# --- accuracy vs sparsity --------------------------------------------------------------------------------

def sparsity_data(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every configuration's mean point with its mean achieved sparsity, Pareto front rows incl. the dense
    control rows) for the sparsity plot."""
    summary = tables.config_summary(trials).rename(columns={"achieved_sparsity_mean": "achieved_sparsity"})
    return summary, tables.pareto_front(trials)


def _plot_controls(ax, controls: pd.DataFrame) -> None:
    """The dense control (same budget) and the dense start as horizontal lines; a missing control is said."""
    for _, row in controls.iterrows():
        budget = "" if math.isnan(row["budget_epochs"]) else f", {int(row['budget_epochs'])} epochs"
        if math.isnan(row["final_val_acc"]):
            ax.plot([], [], " ", label="dense control missing")
        else:
            ax.axhline(100 * row["final_val_acc"], color="black", linestyle=":", label=f"dense control{budget}")
        if not math.isnan(row["dense_start_val_acc"]):
            epoch = "" if math.isnan(row["dense_start_epoch"]) else f", epoch {int(row['dense_start_epoch'])}"
            ax.axhline(100 * row["dense_start_val_acc"], color="gray", linestyle="-.", linewidth=0.8,
                       label=f"dense start{epoch}")


def plot_sparsity(points: pd.DataFrame, front: pd.DataFrame):
    """Validation accuracy (percent) against achieved sparsity (percent), every configuration plus each
    method's Pareto front, the dense control and the dense start."""
    archs = sorted(points["arch"].unique()) if not points.empty else []
    fig, axes = _grid(len(archs), width=5.0, height=3.6)
    if not archs:
        return _empty(fig, axes[0, 0], "no finished trials")
    for col, arch in enumerate(archs):
        ax = axes[0, col]
        for method, rows in points[points["arch"] == arch].groupby("method"):
            ax.scatter(100 * rows["achieved_sparsity"], 100 * rows["final_val_acc_mean"], color=_color(method),
                       alpha=0.35, s=18)
        mine = front[front["arch"] == arch]
        _plot_controls(ax, mine[mine["row"] == "control"])
        for method, rows in mine[mine["row"] == "pareto"].groupby("method"):
            ax.plot(100 * rows["achieved_sparsity"], 100 * rows["final_val_acc"], color=_color(method), marker="o",
                    label=f"{method} Pareto front")
        ax.set_title(arch)
        ax.set_xlabel("achieved sparsity (% of prunable weights = 0)")
        ax.set_ylabel("final val accuracy (%)")
        _legend_below(ax)
    fig.tight_layout()
    return fig


def sparsity_alt(points: pd.DataFrame, front: pd.DataFrame) -> str:
    if points.empty:
        return "No accuracy-versus-sparsity figure: no finished trials."
    lo, hi = 100 * points["achieved_sparsity"].min(), 100 * points["achieved_sparsity"].max()
    return (f"Scatter plots per architecture ({', '.join(sorted(points['arch'].unique()))}) of final validation "
            f"accuracy against achieved sparsity ({lo:.0f}% to {hi:.0f}%) for {len(points)} configurations, each "
            "method's Pareto front as a line, and the dense control and dense start as horizontal lines.")


# --- ADMM residual and rho -------------------------------------------------------------------------------

def admm_data(trials: pd.DataFrame, epochs: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """Epoch rows (sparsify phase) of the best ADMM configuration per arch: primal and dual residual, rho, and
    the trial's ``dense_distance`` (the dense model's squared distance to the sparse set: the residual before
    any update; NaN where the trials table has none)."""
    ids = best_trial_ids(trials, sparsity)
    tids = [t for (arch, method), ts in ids.items() if method == tables.ADMM for t in ts]
    rows = epochs[epochs["trial_id"].isin(tids) & (epochs["method"] == tables.ADMM)
                  & (epochs["phase"] == "sparsify")]
    rows = rows[["arch", "trial_id", "seed", "epoch", "primal_residual", "dual_residual", "rho"]]
    start = trials.reindex(columns=["arch", "trial_id", "dense_distance"]).drop_duplicates(["arch", "trial_id"])
    rows = rows.merge(start, on=["arch", "trial_id"], how="left")
    return rows.sort_values(["arch", "trial_id", "epoch"]).reset_index(drop=True)


def _plot_residuals(ax, rows: pd.DataFrame, color, label: str) -> None:
    marker = _marker(len(rows))
    for column, style in (("primal_residual", "-"), ("dual_residual", "--")):
        values = rows[column].where(rows[column] > 0)  # a zero or missing residual has no place on a log axis
        if values.notna().any():
            name = "primal" if column == "primal_residual" else "dual"
            ax.plot(rows["epoch"], values, color=color, linestyle=style, marker=marker, markersize=4,
                    label=f"{label}, {name}")


def plot_admm(data: pd.DataFrame):
    """Primal residual sum ||W - Z||^2 (solid) and dual residual rho^2 sum ||Z - Z_prev||^2 (dashed) at the
    last Z/U update of each epoch, the dense model's distance to the sparse set (dotted: where the primal
    residual starts; converged ADMM ends far below it), and rho; one column per arch, one colour per seed.
    Log y where the values span orders of magnitude, markers where there are few epochs, integer epoch ticks."""
    archs = sorted(data["arch"].unique()) if not data.empty else []
    fig, axes = _grid(len(archs), rows=2, width=5.0)
    if not archs:
        return _empty(fig, axes[0, 0], "no ADMM epochs of finished trials")
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, arch in enumerate(archs):
        mine = data[data["arch"] == arch]
        for i, (tid, rows) in enumerate(mine.groupby("trial_id")):
            label, color = f"seed {int(rows['seed'].iloc[0])}", colors[i % len(colors)]
            _plot_residuals(axes[0, col], rows, color, label)
            start = rows["dense_distance"].iloc[0] if "dense_distance" in rows.columns else math.nan
            if pd.notna(start) and start > 0:
                axes[0, col].axhline(start, color=color, linestyle=":", linewidth=1.2,
                                     label=f"{label}, dense model's distance")
            axes[1, col].plot(rows["epoch"], rows["rho"], color=color, marker=_marker(len(rows)), markersize=4,
                              label=label)
        starts = mine["dense_distance"] if "dense_distance" in mine.columns else pd.Series(dtype=float)
        _scale_for(axes[0, col], pd.concat([mine["primal_residual"], mine["dual_residual"], starts]))
        _rho_axis(axes[1, col], mine["rho"])
        _label_column(axes[:, col], arch, ("residual (squared norm)", "rho"), "epoch (sparsify phase)",
                      legend_size=7)
    fig.tight_layout()
    return fig


def admm_alt(data: pd.DataFrame) -> str:
    if data.empty:
        return "No ADMM figure: no ADMM epochs of finished trials."
    return (f"Line charts per architecture ({', '.join(sorted(data['arch'].unique()))}): ADMM primal and dual "
            f"residuals (top) and rho (bottom) over the sparsify epochs {int(data['epoch'].min())} to "
            f"{int(data['epoch'].max())}, one line per seed ({data['trial_id'].nunique()} trials).")


# --- per-layer sparsity ------------------------------------------------------------------------------------

def layer_sparsity_data(trials: pd.DataFrame, layers: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """Per (arch, method, layer) of the best configuration (chosen as for the curves): the layer's position
    in the model, kind, whether it is prunable, its target and mean achieved sparsity over seeds, and
    ``dense`` (kept entirely dense: not prunable, or a set such as N:M that leaves it alone)."""
    cols = ["arch", "method", "position", "layer", "kind", "prunable", "numel", "target_sparsity", "sparsity",
            "dense"]
    parts = []
    for (arch, method), tids in best_trial_ids(trials, sparsity).items():
        rows = layers[layers["trial_id"].isin(tids) & (layers["arch"] == arch) & (layers["method"] == method)]
        if rows.empty:
            continue
        rows = rows.assign(position=rows.groupby("trial_id").cumcount())  # the file keeps model order
        agg = rows.groupby(["position", "layer"], sort=True).agg(
            kind=("kind", "first"), prunable=("prunable", "first"), numel=("numel", "first"),
            target_sparsity=("target_sparsity", "mean"), sparsity=("sparsity", "mean")).reset_index()
        parts.append(agg.assign(arch=arch, method=method, dense=agg["sparsity"] <= 0))
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


KIND_COLORS = {"conv": "tab:green", "depthwise": "tab:purple", "grouped": "tab:brown", "pointwise": "tab:blue",
               "linear": "tab:red"}


def _short(layer: str) -> str:
    """features.3.conv.1.0.weight -> f3.conv.1.0: tick labels that fit under a bar."""
    return layer.removesuffix(".weight").replace("features.", "f").replace("classifier.", "cls.")


def _layer_bars(ax, rows: pd.DataFrame) -> None:
    x = range(len(rows))
    for i, r in enumerate(rows.itertuples()):
        if r.dense:  # a zero-height bar is invisible: shade the slot so a dense layer shows as one
            ax.axvspan(i - 0.45, i + 0.45, color="lightgray", alpha=0.6, hatch="///", linewidth=0)
    ax.bar(x, 100 * rows["sparsity"], color=[KIND_COLORS.get(k, "tab:gray") for k in rows["kind"]], width=0.8)
    ax.hlines(100 * rows["target_sparsity"], [i - 0.45 for i in x], [i + 0.45 for i in x], colors="black",
              linestyles="--", linewidth=0.8)
    ax.set_xticks(list(x))
    ax.set_xticklabels([_short(name) for name in rows["layer"]], rotation=90, fontsize=6)
    for label, kind in zip(ax.get_xticklabels(), rows["kind"]):  # a dense layer has no bar to show its kind
        label.set_color(KIND_COLORS.get(kind, "tab:gray"))
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(0, 100)


def plot_layer_sparsity(data: pd.DataFrame):
    """One bar per layer (model order) of each method's best model: achieved sparsity in percent, bar and tick
    label coloured by layer kind; dashed ticks are the targets; hatched slots are layers kept dense. One row per
    (arch, method)."""
    pairs = sorted(set(zip(data["arch"], data["method"]))) if not data.empty else []
    n_layers = int(data.groupby(["arch", "method"]).size().max()) if pairs else 0
    fig, axes = _subplots(max(len(pairs), 1), 1,
                          (min(max(6.0, 0.16 * n_layers + 1.5), 11.0), 2.9 * max(len(pairs), 1)))
    if not pairs:
        return _empty(fig, axes[0, 0], "no per-layer results of finished trials")
    for i, (arch, method) in enumerate(pairs):
        ax = axes[i, 0]
        rows = data[(data["arch"] == arch) & (data["method"] == method)].sort_values("position")
        _layer_bars(ax, rows)
        n_dense = int(rows["dense"].sum())
        ax.set_title(f"{arch} / {method}: {len(rows)} layers, {n_dense} kept dense", fontsize=9)
        ax.set_ylabel("sparsity (%)")
    handles = [Patch(color=c, label=k) for k, c in KIND_COLORS.items() if k in set(data["kind"])]
    handles += [Patch(facecolor="lightgray", hatch="///", label="kept dense"),
                Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="target")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def layer_sparsity_alt(data: pd.DataFrame) -> str:
    if data.empty:
        return "No per-layer sparsity figure: no per-layer results of finished trials."
    parts = []
    for (arch, method), rows in data.groupby(["arch", "method"]):
        parts.append(f"{arch} {method}: {len(rows)} layers, {int(rows['dense'].sum())} kept dense, the others "
                     f"{100 * rows.loc[~rows['dense'], 'sparsity'].min():.0f}% to "
                     f"{100 * rows.loc[~rows['dense'], 'sparsity'].max():.0f}% sparse"
                     if (~rows["dense"]).any() else f"{arch} {method}: every layer dense")
    return "Bar charts of achieved sparsity per layer in model order. " + "; ".join(parts) + "."


# --- accuracy vs nonzero MACs ------------------------------------------------------------------------------

def macs_data(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(each configuration's mean nonzero MACs per image and mean final TEST accuracy, with its comparison
    level; the dense control rows of the Pareto table, at the dense model's MACs)."""
    ok = tables.annotate(tables.ok_trials(trials))
    cols = ["arch", "method", "config", "sparsity_level", "nonzero_macs", "dense_macs", "final_test_acc", "n_seeds"]
    if ok.empty:
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=tables.PARETO_COLUMNS)
    points = ok.groupby(["arch", "method", "config"]).agg(
        sparsity_level=("sparsity_level", "first"), nonzero_macs=("nonzero_macs", "mean"),
        dense_macs=("dense_macs", "first"), final_test_acc=("final_test_acc", "mean"),
        n_seeds=("seed", "nunique")).reset_index()
    front = tables.pareto_front(trials)
    return points[cols], front[front["row"] == "control"]


def plot_macs(points: pd.DataFrame, controls: pd.DataFrame):
    """Final test accuracy (percent) against nonzero multiply-accumulates per image (millions), every
    configuration, the dense control (star) and the dense start (open diamond) at the dense model's MACs."""
    archs = sorted(points["arch"].unique()) if not points.empty else []
    fig, axes = _grid(len(archs), width=5.0, height=3.6)
    if not archs:
        return _empty(fig, axes[0, 0], "no finished trials")
    for col, arch in enumerate(archs):
        ax = axes[0, col]
        for method, rows in points[points["arch"] == arch].groupby("method"):
            ax.scatter(rows["nonzero_macs"] / 1e6, 100 * rows["final_test_acc"], color=_color(method), s=22,
                       alpha=0.7, label=method)
        for row in controls[controls["arch"] == arch].itertuples():
            if not math.isnan(row.final_test_acc):
                ax.scatter([row.dense_macs / 1e6], [100 * row.final_test_acc], marker="*", s=140, color="black",
                           label="dense control (same budget)")
            if not math.isnan(row.dense_start_test_acc):
                ax.scatter([row.dense_macs / 1e6], [100 * row.dense_start_test_acc], marker="D", s=40,
                           facecolors="none", edgecolors="gray", label="dense start")
        ax.set_title(arch)
        ax.set_xlabel("nonzero MACs per image (millions)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_xlim(left=0)
        _legend_below(ax)
    fig.tight_layout()
    return fig


def macs_alt(points: pd.DataFrame, controls: pd.DataFrame) -> str:
    if points.empty:
        return "No accuracy-versus-MACs figure: no finished trials."
    return (f"Scatter plots per architecture ({', '.join(sorted(points['arch'].unique()))}) of final test accuracy "
            f"against nonzero MACs per image for {len(points)} configurations of "
            f"{', '.join(sorted(points['method'].unique()))}, with the dense control as a star "
            f"({int(controls['final_test_acc'].notna().sum())} shown).")


# --- hyperparameter importance ---------------------------------------------------------------------------

def plot_importance(studies: dict):
    """Horizontal bars of each study's parameter importances: ``studies`` maps a study name to an object with
    ``importances`` (name -> value) and ``label`` (the evaluator and target, for the axis), as
    analysis.importance.importance_data gives them."""
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


def importance_alt(studies: dict) -> str:
    if not studies:
        return "No importance figure: no Optuna study with enough complete trials."
    tops = [f"{name}: {max(s.importances, key=s.importances.get)}" for name, s in sorted(studies.items())
            if s.importances]
    return ("Horizontal bar charts of hyperparameter importance per Optuna study; most important per study: "
            + "; ".join(tops) + ".")
