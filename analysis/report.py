"""Assemble tables and figures into a report: Markdown, and one self-contained HTML file (figures inlined
as base64 PNG). Builds everything in memory; only ``analysis.__main__`` writes files."""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import pandas as pd

from . import plots as P
from . import tables as T
from .load import Tables, find_optuna_storage

log = logging.getLogger(__name__)

TABLE_CAPTIONS = {
    "comparison": "Accuracy at matched target sparsity {s}: configuration selected on VALIDATION (best mean "
                  "final_val_acc over seeds), every accuracy reported on TEST, mean and sample std over seeds. "
                  "post_prune = right after projection with BN recalibrated on training data; "
                  "post_prune_stale_bn = same weights with stale BN statistics.",
    "best_hyperparameters": "Best configuration per architecture and method at sparsity {s}, chosen on "
                            "validation (final_val_acc mean over seeds).",
    "pareto": "Accuracy-vs-sparsity Pareto front per architecture and method over configurations (mean over "
              "seeds), front chosen on VALIDATION accuracy, test accuracy beside; dense model as control row.",
    "paired": "Paired comparison at each matched target sparsity: ADMM minus magnitude final TEST accuracy, "
              "paired by seed, best configuration per method chosen on validation; 95% t-interval and paired "
              "t-test p-value (n/a when fewer than 2 pairs).",
    "accounting": "Sweep accounting per architecture and method: trials with results, finished ok, diverged, "
                  "failed, stopped early by ASHA, total compute seconds (sum of wall_time_s).",
    "not_ok": "Trials that did not finish ok (diverged: NaN/inf loss; failed: exception; stopped: ended early by "
              "the ASHA scheduler). They are not scored.",
}
FIGURE_CAPTIONS = {
    "curves": "Training objective and validation accuracy per epoch (best configuration at target sparsity {s}, "
              "or at any sparsity where none ran at {s}; band over seeds).",
    "weights": "Distribution of all prunable weights: dense model, end of the sparsify phase before projection "
               "(pre_prune), and after masked fine-tuning (final); exact zeros counted separately (▼).",
    "sparsity": "Final validation accuracy against achieved sparsity, with each method's Pareto front.",
    "admm": "ADMM primal residual and rho per sparsify epoch (best ADMM configuration, chosen as for the curves).",
    "importance": "Hyperparameter importance per Optuna study (objective: first study value).",
}


@dataclass
class Report:
    """Everything a report shows: named DataFrames and matplotlib Figures, plus notes (skipped files)."""

    tables: dict[str, pd.DataFrame]
    figures: dict[str, object]
    sparsity: float
    experiments: list[str]
    notes: list[str] = field(default_factory=list)


def importance_data(experiments: list[str]) -> dict[str, dict[str, float]]:
    """Parameter importances per Optuna study of each experiment; {} when no storage or too few trials.

    The storage is copied to a temporary folder first, because opening it (SQLite WAL files, journal locks,
    schema migrations) can write next to it, and the experiment folder must stay untouched.
    """
    out: dict[str, dict[str, float]] = {}
    for exp in experiments:
        storage = find_optuna_storage(exp)
        if storage is None or "://" in storage:
            continue
        try:
            out.update(_importances_from(storage))
        except Exception as exc:  # noqa: BLE001 - importance is optional; the tables still stand
            log.warning("no hyperparameter importance from %s: %s", storage, exc)
    return out


def _importances_from(storage_path: str) -> dict[str, dict[str, float]]:
    import optuna  # lazy: importing optuna costs a second; reports without a storage do not need it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, os.path.basename(storage_path))
        # SQLite in WAL mode keeps recent commits in side files; copy them too so nothing is lost.
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(storage_path + suffix):
                shutil.copy2(storage_path + suffix, copy + suffix)
        if copy.endswith((".db", ".sqlite", ".sqlite3")):
            storage = optuna.storages.RDBStorage(f"sqlite:///{copy}")
        else:
            from optuna.storages.journal import JournalFileBackend
            storage = optuna.storages.JournalStorage(JournalFileBackend(copy))
        result = {}
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if len(complete) < 2:
                continue
            multi = len(study.directions) > 1
            result[summary.study_name] = optuna.importance.get_param_importances(
                study, target=(lambda t: t.values[0]) if multi else None)
        if hasattr(storage, "remove_session"):
            storage.remove_session()
        return result


def build_report(tables: Tables, sparsity: float = 0.5,
                 importances: dict[str, dict[str, float]] | None = None) -> Report:
    """Build every table and figure of the report from loaded tables. Pure apart from creating Figures."""
    trials = tables.trials
    out_tables = {
        "comparison": T.comparison_table(trials, sparsity),
        "best_hyperparameters": T.best_hyperparameters(trials, sparsity),
        "pareto": T.pareto_front(trials),
        "paired": T.paired_comparison(trials),
        "accounting": T.accounting(trials),
        "not_ok": T.diverged_trials(trials),
    }
    figures = {
        "curves": P.plot_curves(P.curves_data(trials, tables.epochs, sparsity)),
        "weights": P.plot_weights(P.weights_data(trials, tables.weights, sparsity)),
        "sparsity": P.plot_sparsity(*P.sparsity_data(trials)),
        "admm": P.plot_admm(P.admm_data(trials, tables.epochs, sparsity)),
        "importance": P.plot_importance(importances or {}),
    }
    notes = [f"skipped {path}: {reason}" for path, reason in tables.skipped]
    if out_tables["comparison"].empty:
        notes.append(f"no finished trial at target sparsity {sparsity}; the comparison table is empty")
    return Report(out_tables, figures, sparsity, list(tables.experiments), notes)


def figure_bytes(fig, fmt: str) -> bytes:
    """A figure rendered to PNG or SVG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _fmt(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)


def _caption(name: str, report: Report) -> str:
    return TABLE_CAPTIONS[name].format(s=report.sparsity)


def _figure_caption(name: str, report: Report) -> str:
    return FIGURE_CAPTIONS[name].format(s=report.sparsity)


def render_markdown(report: Report, figure_files: dict[str, str] | None = None) -> str:
    """The report as Markdown; figures linked by the relative paths in ``figure_files`` if given."""
    lines = ["# Pruning sweep report", "", "Experiments: " + ", ".join(report.experiments), ""]
    lines += [f"> {note}" for note in report.notes]
    for name, frame in report.tables.items():
        lines += ["", f"## {name}", "", _caption(name, report), ""]
        lines.append(markdown_table(frame) if not frame.empty else "_(no rows)_")
    for name in report.figures:
        lines += ["", f"## figure: {name}", "", _figure_caption(name, report), ""]
        if figure_files and name in figure_files:
            lines.append(f"![{name}]({figure_files[name]})")
    return "\n".join(lines) + "\n"


CSS = ("body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
       "table{border-collapse:collapse;font-size:12px;margin-bottom:1em}"
       "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
       "img{max-width:100%}.note{color:#a40}.scroll{overflow-x:auto}")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (figures embedded as base64 PNG, no external links)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Pruning sweep report</title>"
             f"<style>{CSS}</style></head><body><h1>Pruning sweep report</h1>",
             "<p>Experiments: " + html.escape(", ".join(report.experiments)) + "</p>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in report.notes]
    for name, frame in report.tables.items():
        parts.append(f"<h2>{name}</h2><p>{html.escape(_caption(name, report))}</p>")
        body = _fmt(frame).to_html(index=False, border=0) if not frame.empty else "<p><i>(no rows)</i></p>"
        parts.append(f"<div class='scroll'>{body}</div>")
    for name, fig in report.figures.items():
        data = base64.b64encode(figure_bytes(fig, "png")).decode()
        parts.append(f"<h2>figure: {name}</h2><p>{html.escape(_figure_caption(name, report))}</p>"
                     f"<img class='figure' alt='{name}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (written here to avoid the optional tabulate dependency)."""
    cells = _fmt(frame).map(str)
    rows = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    rows += ["| " + " | ".join(v.replace("|", "\\|") for v in r) + " |" for r in cells.itertuples(index=False)]
    return "\n".join(rows)


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(frame: pd.DataFrame, caption: str) -> str:
    """One table as a LaTeX table environment with a plain tabular (no packages needed; jinja2-free)."""
    cells = _fmt(frame).map(str)
    head = " & ".join(_latex_escape(str(c)) for c in frame.columns) + r" \\"
    body = [" & ".join(_latex_escape(v) for v in r) + r" \\" for r in cells.itertuples(index=False)]
    return "\n".join([r"\begin{table}", r"\centering", rf"\caption{{{_latex_escape(caption)}}}",
                      r"\begin{tabular}{" + "l" * len(frame.columns) + "}", r"\hline", head, r"\hline",
                      *body, r"\hline", r"\end{tabular}", r"\end{table}", ""])
