"""Assemble tables and figures into a report: Markdown, and one self-contained HTML file (figures inlined
as base64 PNG). Builds everything in memory; only ``analysis.__main__`` writes files."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import pandas as pd

from . import plots as P
from . import tables as T
from .load import Tables, find_optuna_storage

log = logging.getLogger(__name__)

LEVEL_TEXT = ("Sparsity level: a trial's nominal sparsity when its sparsity set reaches it within "
              f"{T.LEVEL_TOL} (exact target over all prunable weights), else the exact target rounded to 3 decimals "
              "(N:M 2:4 leaves depthwise layers dense and sits below 0.5): rows at different levels are never put "
              "side by side; achieved sparsity (measured from the weights) beside.")
CONTROL_TEXT = ("Dense control (row dense/control, column control_test_acc): the shared dense checkpoint trained "
                "sparsify_epochs + finetune_epochs more epochs with the dense recipe, so it has the same total "
                "budget (budget_epochs) as the pruned models; NaN with a note where it was not trained. "
                "dense_start = the dense model at the end of the dense phase (epoch dense_start_epoch), the "
                "common starting point of both methods, not a fair reference.")
TABLE_CAPTIONS = {
    "comparison": "Accuracy at sparsity level {s}: configuration selected on VALIDATION (best mean final_val_acc "
                  "over seeds), every accuracy reported on TEST, mean and sample std over seeds. post_prune = "
                  "right after projection with BN recalibrated on training data; post_prune_stale_bn = same "
                  "weights with stale BN statistics. " + CONTROL_TEXT + " " + LEVEL_TEXT,
    "best_hyperparameters": "Best configuration per architecture and method at sparsity level {s}, chosen on "
                            "validation (final_val_acc mean over seeds); the hyperparameters that vary in the "
                            "sweep (the fixed ones are in fixed_hyperparameters).",
    "fixed_hyperparameters": "Hyperparameters with one value in every trial of the sweep.",
    "pareto": "Accuracy-vs-sparsity Pareto front per architecture and method over configurations (mean over "
              "seeds), front chosen on VALIDATION accuracy against achieved sparsity, test accuracy beside. "
              + CONTROL_TEXT,
    "paired": "Paired comparison at each sparsity level: ADMM minus magnitude final TEST accuracy, paired by "
              "seed, best configuration per method at that level chosen on validation; 95% t-interval and "
              "paired t-test p-value (n/a when fewer than 2 pairs). " + LEVEL_TEXT,
    "accounting": "Sweep accounting per architecture and method: trial rows, finished ok, diverged, failed, "
                  "stopped early by the scheduler (ASHA), other statuses, total compute seconds (sum of "
                  "wall_time_s).",
    "not_ok": "Trials that did not finish ok (diverged: NaN/inf loss; failed: exception; stopped: ended early by "
              "the ASHA scheduler), with the hyperparameters that vary in the sweep. They are not scored.",
}
FIGURE_CAPTIONS = {
    "curves": "Training objective and validation accuracy per epoch (best configuration at sparsity level {s}, "
              "or at any level where none ran at {s}; band over seeds).",
    "weights": "Distribution of all prunable weights: dense model, end of the sparsify phase before projection "
               "(pre_prune), and after masked fine-tuning (final); exact zeros counted separately (▼).",
    "sparsity": "Final validation accuracy against achieved sparsity, with each method's Pareto front; "
                "horizontal lines: the dense control (same total budget) and the dense start.",
    "admm": "ADMM primal residual and rho per sparsify epoch (best ADMM configuration, chosen as for the curves).",
    "importance": "Hyperparameter importance per Optuna study: PED-ANOVA (Optuna) for the study's first objective "
                  "in its own direction (which parameters set the best trials apart), shown only for studies with "
                  "at least {n} complete trials.",
}


@dataclass
class Report:
    """Everything a report shows: named DataFrames and matplotlib Figures, words for figure sections
    (``texts``: shown under the figure, or instead of it where there is none), notes (skipped files)."""

    tables: dict[str, pd.DataFrame]
    figures: dict[str, object]
    sparsity: float
    experiments: list[str]
    notes: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)


MIN_IMPORTANCE_TRIALS = 10  # COMPLETE trials a study needs before its importances are shown at all
IMPORTANCE_TOP_TRIALS = 5  # trials in PED-ANOVA's top quantile at least (Optuna's advice for stable results)
IMPORTANCE_QUANTILE = 0.1  # PED-ANOVA's target quantile on large studies (Optuna's default)
SWEEP_OBJECTIVE = "final_val_acc"  # the sweep's first objective (sweep/searcher.py), when a study names none


@dataclass
class StudyImportance:
    """One study's parameter importances (normalised to sum 1) and how they were computed."""

    study: str
    importances: dict[str, float]
    objective: str  # the first objective, the one importances are computed for
    direction: str  # "maximize" | "minimize": which end of the objective counts as good
    n_complete: int  # COMPLETE trials with a finite first objective
    n_top: int  # trials in the top quantile whose parameter distribution is compared with all trials
    evaluator: str = "PED-ANOVA"

    @property
    def label(self) -> str:
        end = "highest" if self.direction == "maximize" else "lowest"
        return (f"{self.evaluator} importance for the {end} {self.objective} "
                f"(top {self.n_top} of {self.n_complete} complete trials)")


@dataclass
class Importances:
    """What :func:`importance_data` found: importances of the studies with enough trials, and a note (in
    words) for every study or storage without them."""

    studies: dict[str, StudyImportance] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def importance_data(experiments: list[str]) -> Importances:
    """Parameter importances per Optuna study of each experiment (PED-ANOVA, first objective, its direction).

    A study needs MIN_IMPORTANCE_TRIALS complete trials; with fewer it gets a note instead of numbers. The
    storage is copied to a temporary folder first, because opening it (SQLite WAL files, journal locks,
    schema migrations) can write next to it, and the experiment folder must stay untouched.
    """
    out = Importances()
    for exp in experiments:
        storage = find_optuna_storage(exp)
        if storage is None or "://" in storage:
            out.notes.append(f"{exp}: no local Optuna storage ({storage or 'none found'}), so no importance")
            continue
        try:
            found, notes = _importances_from(storage)
        except Exception as exc:  # noqa: BLE001 - importance is optional; the tables still stand
            log.warning("no hyperparameter importance from %s: %s", storage, exc)
            out.notes.append(f"{storage}: importance could not be computed ({type(exc).__name__}: {exc})")
            continue
        for name, imp in found.items():
            out.studies[name if name not in out.studies else f"{os.path.basename(exp)}/{name}"] = imp
        out.notes += notes
    return out


def _open_copy(storage_path: str, tmp: str):
    import optuna

    copy = os.path.join(tmp, os.path.basename(storage_path))
    # SQLite in WAL mode keeps recent commits in side files; copy them too so nothing is lost.
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(storage_path + suffix):
            shutil.copy2(storage_path + suffix, copy + suffix)
    if copy.endswith((".db", ".sqlite", ".sqlite3")):
        return optuna.storages.RDBStorage(f"sqlite:///{copy}")
    from optuna.storages.journal import JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(copy))


def _importances_from(storage_path: str) -> tuple[dict[str, StudyImportance], list[str]]:
    import optuna  # lazy: importing optuna costs a second; reports without a storage do not need it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        storage = _open_copy(storage_path, tmp)
        found, notes = {}, []
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            result = study_importance(study)
            if isinstance(result, str):
                notes.append(f"{summary.study_name}: {result}")
            else:
                found[summary.study_name] = result
        if hasattr(storage, "remove_session"):
            storage.remove_session()
        return found, notes


def study_importance(study) -> StudyImportance | str:
    """PED-ANOVA importances of ``study`` for its FIRST objective in its own direction, or the reason (in
    words) why there are none: fewer than MIN_IMPORTANCE_TRIALS complete trials.

    PED-ANOVA ranks parameters by how differently they are distributed among the top-quantile trials than
    among all trials (evaluate_on_local: the trials the sampler actually ran); it treats LOW target values
    as the top, so a maximised objective is negated here. The top quantile holds at least
    IMPORTANCE_TOP_TRIALS trials."""
    import warnings

    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.values and math.isfinite(t.values[0])]
    n = len(complete)
    if n < MIN_IMPORTANCE_TRIALS:
        return (f"{n} complete trials, fewer than the {MIN_IMPORTANCE_TRIALS} needed for hyperparameter "
                "importance, so none is shown")
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    sign = -1.0 if maximize else 1.0
    quantile = max(IMPORTANCE_QUANTILE, IMPORTANCE_TOP_TRIALS / n)
    names = getattr(study, "metric_names", None)
    with warnings.catch_warnings():  # the "computes importances for low target values" warning: handled
        warnings.simplefilter("ignore")
        values = optuna.importance.get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile, evaluate_on_local=True),
            target=lambda t: sign * t.values[0])
    return StudyImportance(study.study_name, dict(values), names[0] if names else SWEEP_OBJECTIVE,
                           "maximize" if maximize else "minimize", n, math.ceil(quantile * n))


def build_report(tables: Tables, sparsity: float = 0.5, importances: Importances | None = None) -> Report:
    """Build every table and figure of the report from loaded tables. Pure apart from creating Figures.

    ``importances`` (from :func:`importance_data`; None: not computed) gives the importance figure, or the
    words saying why there is none."""
    trials = tables.trials
    out_tables = {
        "comparison": T.comparison_table(trials, sparsity),
        "best_hyperparameters": T.best_hyperparameters(trials, sparsity),
        "fixed_hyperparameters": T.fixed_hyperparameters(T.ok_trials(trials)),
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
    }
    texts = {"importance": _importance_text(importances)}
    if importances is not None and importances.studies:
        figures["importance"] = P.plot_importance(importances.studies)
    notes = [f"skipped {path}: {reason}" for path, reason in tables.skipped]
    if out_tables["comparison"].empty:
        notes.append(f"no finished trial at sparsity level {sparsity}; the comparison table is empty")
    return Report(out_tables, figures, sparsity, list(tables.experiments), notes, texts)


def _importance_text(importances: Importances | None) -> str:
    if importances is None:
        return "Hyperparameter importance was not computed (--no-importance)."
    shown = [f"{name}: {imp.label}." for name, imp in sorted(importances.studies.items())]
    head = "" if shown else "No hyperparameter importance figure: no study has enough complete trials. "
    return head + " ".join(shown + [f"{note}." for note in importances.notes])


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
    return FIGURE_CAPTIONS[name].format(s=report.sparsity, n=MIN_IMPORTANCE_TRIALS)


def _sections(report: Report) -> list[str]:
    """Figure sections in caption order: every figure, and every text that stands where a figure is missing."""
    return [n for n in FIGURE_CAPTIONS if n in report.figures or n in report.texts]


def _heading(name: str, report: Report) -> str:
    return f"figure: {name}" if name in report.figures else f"{name} (no figure)"


def render_markdown(report: Report, figure_files: dict[str, str] | None = None) -> str:
    """The report as Markdown; figures linked by the relative paths in ``figure_files`` if given."""
    lines = ["# Pruning sweep report", "", "Experiments: " + ", ".join(report.experiments), ""]
    lines += [f"> {note}" for note in report.notes]
    for name, frame in report.tables.items():
        lines += ["", f"## {name}", "", _caption(name, report), ""]
        lines.append(markdown_table(frame) if not frame.empty else "_(no rows)_")
    for name in _sections(report):
        lines += ["", f"## {_heading(name, report)}", "", _figure_caption(name, report), ""]
        if report.texts.get(name):
            lines += [report.texts[name], ""]
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
    for name in _sections(report):
        parts.append(f"<h2>{html.escape(_heading(name, report))}</h2>"
                     f"<p>{html.escape(_figure_caption(name, report))}</p>")
        if report.texts.get(name):
            parts.append(f"<p class='note'>{html.escape(report.texts[name])}</p>")
        if name in report.figures:
            data = base64.b64encode(figure_bytes(report.figures[name], "png")).decode()
            parts.append(f"<img class='figure' alt='{name}' src='data:image/png;base64,{data}'>")
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
