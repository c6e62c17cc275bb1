"""Assemble tables and figures into a report: one self-contained HTML page (figures inlined as base64 PNG),
the same content as Markdown, and LaTeX per table. It opens with the answer (which method wins where, by
how much, how sure); tables are shown as text (analysis.present), the CSV files keep the raw frames.

Every section is ONE record in :data:`SECTIONS`, in reading order: a :class:`TableSection` (how its raw frame
is built and shown) or a :class:`FigureSection` (its data function, renderer and alt text, as in
analysis.plots). Builds everything in memory; only ``analysis.__main__`` writes files."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Callable, Union

import pandas as pd

from results.selection import RULE

from . import plots, present, significance, summary
from .importance import MIN_IMPORTANCE_TRIALS, Importances
from .load import Tables, display_name
from .tables import (ADMM, DEFAULT_REFERENCE, LEVEL_TOL, accounting, best_configs, best_hyperparameters,
                     comparison_table, config_settings, configs_not_chosen, cut_networks, diverged_trials,
                     fixed_hyperparameters, methods_of, ok_trials, paired_comparison, pareto_front,
                     with_model_facts)

LEVEL_TEXT = ("Sparsity is the level trials are compared at: the nominal sparsity when the sparsity set reaches "
              f"it (within {100 * LEVEL_TOL:.1f} points), else the exact target over all prunable weights (N:M "
              "2:4 leaves depthwise layers dense and sits below 50%); rows at different levels are never put side "
              "by side. Achieved = measured from the final weights.")
CONTROL_TEXT = ("The dense control is the shared dense checkpoint trained as many epochs more as the pruned models "
                "got (sparsify + fine-tune) with the dense recipe: the same total budget. The dense start is the "
                "dense model at the end of the dense phase, the common starting point of both methods, not a "
                "fair reference.")
CHOICE_TEXT = ("Only a configuration whose every seed finished ok can be chosen (see Configurations not "
               "chosen).")
TEST_TEXT = (f"The size of a difference is its mean with a {significance.INTERVAL}; the verdict comes from an "
             f"{significance.EXACT} over the paired differences (all 2^n sign flips; beyond "
             f"{significance.EXACT_MAX} pairs {significance.MC_DRAWS:,} random flips with seed "
             f"{significance.MC_SEED}): a method wins only where p <= {significance.ALPHA}. With n pairs the "
             f"smallest p is 2^-(n-1), so a decision needs at least {significance.seeds_needed()} paired seeds; a "
             "zero-width interval (equal differences) is no evidence. Where several methods are compared with "
             "the reference at one level, their p-values are Holm-adjusted over that family (the chance of any "
             "false win stays at most the threshold), and a decision needs more seeds "
             f"({significance.seeds_needed(family=2)} for two or three methods).")
ACCURACY_TEXT = ("Accuracy in percent, mean ± sample standard deviation over seeds, rounded to one decimal; "
                 "pp = percentage points.")
REFERENCE_TEXT = ("Every other method is compared with the reference method, {r} (the sweep's --reference, or "
                  "python -m analysis report --reference), each pair on its own: method minus reference.")


@dataclass
class Inputs:
    """What every section is built from: the loaded tables, the comparison level (a fraction), the search
    (sizes the small-study caution), the importances (None: not computed), the reference method every other
    is compared with, and the hyperparameter settings."""

    tables: Tables
    sparsity: float
    search: summary.Search
    importances: Importances | None
    reference: str = DEFAULT_REFERENCE

    def __post_init__(self):
        self.trials = self.tables.trials
        self.ok_settings = config_settings(ok_trials(self.trials))  # the chosen ones vary among these
        self.labels = present.hyperparameter_labels(config_settings(self.trials))


@dataclass(frozen=True)
class TableSection:
    """A table: ``build`` gives its raw frame (the CSV), ``show`` the frame as text (analysis.present).
    ``caption`` may name the comparison level as {s}. ``shown``: a section of the page (else only its CSV and
    LaTeX files)."""

    name: str
    title: str
    caption: str
    build: Callable[[Inputs], pd.DataFrame]
    show: Callable[[pd.DataFrame, Inputs], present.Display]
    shown: bool = True


@dataclass(frozen=True)
class FigureSection:
    """A figure: ``data`` gives the arguments of ``render`` (a matplotlib Figure) and ``alt`` (its alt text),
    or None where there is nothing to draw (then ``text``, if any, says why). ``caption`` may name the
    comparison level as {s} and the importance threshold as {n}."""

    name: str
    title: str
    caption: str
    data: Callable[[Inputs], Union[tuple, None]]
    render: Callable[..., object]
    alt: Callable[..., str]
    text: Union[Callable[[Inputs], str], None] = None


def _importance_text(importances: Importances | None) -> str:
    if importances is None:
        return "Hyperparameter importance was not computed (--no-importance)."
    shown = [f"{name}: {imp.label}." for name, imp in sorted(importances.studies.items())]
    head = "" if shown else "No hyperparameter importance figure: no study has enough complete trials. "
    return head + " ".join(shown + [f"{note}." for note in importances.notes])


def _importance_data(inputs: Inputs) -> tuple | None:
    studies = inputs.importances.studies if inputs.importances is not None else {}
    return (studies,) if studies else None


def _chosen(inputs: Inputs) -> pd.DataFrame:
    return with_model_facts(best_hyperparameters(inputs.trials, inputs.sparsity), inputs.trials)


def _admm_data(inputs: Inputs) -> tuple | None:
    """The ADMM convergence figure's data; None (no section) when no ADMM trial is in the results."""
    if ADMM not in methods_of(inputs.trials):
        return None
    return (plots.admm_data(inputs.trials, inputs.tables.epochs, inputs.sparsity),)


SECTIONS: tuple[Union[TableSection, FigureSection], ...] = (
    TableSection(
        "summary", "Summary: which method wins",
        "Per architecture and sparsity: final TEST accuracy of each method's configuration chosen on "
        "VALIDATION, over the seeds both chosen configurations completed (pairs lost are said); the "
        "difference is paired by seed. " + REFERENCE_TEXT + " " + TEST_TEXT + " " + CHOICE_TEXT + " "
        + ACCURACY_TEXT,
        lambda i: summary.summary_table(i.trials, i.search, i.reference),
        lambda frame, i: present.show_summary(frame)),
    TableSection(
        "comparison", "Accuracy through the pruning stages",
        "At sparsity {s}: each method's configuration chosen on VALIDATION (best mean final val accuracy over "
        "all its seeds, column Val, among the configurations whose every seed finished ok), every other "
        "accuracy on TEST. Post-prune = right after the hard projection, BatchNorm statistics re-estimated on "
        "training data; stale BN = the same weights with the old statistics. Epochs = total budget (dense + "
        "sparsify + fine-tune). " + ACCURACY_TEXT + " " + CONTROL_TEXT + " " + LEVEL_TEXT,
        lambda i: comparison_table(i.trials, i.sparsity), lambda frame, i: present.show_comparison(frame)),
    FigureSection(
        "sparsity", "Accuracy against sparsity",
        "Final VALIDATION accuracy against achieved sparsity for every configuration (faint dots), each "
        "method's Pareto front (line), the dense control (dotted) and the dense start (dash-dot). Look at "
        "which front lies higher at the sparsity you need, and whether it reaches the dotted line.",
        lambda i: plots.sparsity_data(i.trials), plots.plot_sparsity, plots.sparsity_alt),
    FigureSection(
        "macs", "Accuracy against compute",
        "Final TEST accuracy against nonzero multiply-accumulates per image: left is cheaper, up is better. "
        "Compare each method's points with the dense control (star) at full cost; N:M models keep depthwise "
        "layers dense, so they sit further right than uniform models at the same nominal sparsity.",
        lambda i: plots.macs_data(i.trials), plots.plot_macs, plots.macs_alt),
    FigureSection(
        "layers", "Sparsity per layer",
        "Achieved sparsity of every layer of each method's chosen model at sparsity {s} (or at any level "
        "where none ran at {s}), in model order, coloured by layer kind; dashed ticks are the targets. Look "
        "for hatched slots: layers kept dense (the first convolution by default, and the depthwise "
        "convolutions under N:M), which is why such a model's overall sparsity is below its nominal one.",
        lambda i: (plots.layer_sparsity_data(i.trials, i.tables.layers, i.sparsity),),
        plots.plot_layer_sparsity, plots.layer_sparsity_alt),
    FigureSection(
        "curves", "Training curves",
        "Training objective and validation accuracy (BatchNorm recalibrated) per epoch of each method's "
        "chosen configuration; band = min to max over seeds; dotted lines separate the dense, sparsify and "
        "fine-tune phases. Look at the step at the start of fine-tuning (the hard projection) and whether "
        "fine-tuning recovers it.",
        lambda i: (plots.curves_data(i.trials, i.tables.epochs, i.sparsity),), plots.plot_curves,
        plots.curves_alt),
    FigureSection(
        ADMM, "ADMM convergence",
        "ADMM per sparsify epoch (chosen configuration, one colour per seed): the primal residual Σ‖W−Z‖² "
        "(solid) should fall as W approaches the sparse set, far below the dense model's distance to the set "
        "(dotted, where it starts); the dual residual ρ²Σ‖Z−Z_prev‖² (dashed) as the mask settles; rho is the "
        "penalty weight (flat unless rho_growth > 1). Log axes where values span orders of magnitude.",
        _admm_data, plots.plot_admm, plots.admm_alt),
    FigureSection(
        "weights", "Weight distributions",
        "Distribution of all prunable weights of each chosen model: dense, end of the sparsify phase before "
        "projection (pre_prune) and after fine-tuning (final); exact zeros counted apart (▼). Look at whether "
        "a method already pulls the weights to be pruned towards zero before the projection.",
        lambda i: (plots.weights_data(i.trials, i.tables.weights, i.sparsity),), plots.plot_weights,
        plots.weights_alt),
    FigureSection(
        "importance", "Hyperparameter importance",
        "Hyperparameter importance per Optuna study: PED-ANOVA for the study's first objective in its own "
        "direction (which parameters set the best trials apart); shown only for studies with at least {n} "
        "complete trials.",
        _importance_data, plots.plot_importance, plots.importance_alt,
        text=lambda i: _importance_text(i.importances)),
    TableSection(
        "best_hyperparameters", "Chosen configurations",
        "Each method's configuration chosen at sparsity {s} on VALIDATION (mean final val accuracy over all "
        "its seeds, every one finished ok), with the hyperparameters that vary in the sweep (trial ids in the "
        "CSV), its model's nonzero parameters and multiply-accumulates per image, the size of its model file "
        "(kept weights and a bitmask) beside the same model saved densely, its 2:4 semi-structured inference "
        "latency against the same model dense (N:M models timed at the end of their trials on a GPU with "
        "compute capability >= 8.0, 256 images per batch, bf16; a trial sharing its GPU with others, "
        "--gpus-per-trial below 1, was timed beside them: re-time a kept model alone before quoting it), the "
        "prunable layers a seed pruned to zero (a cut network), and the command that exports it (mean over "
        "seeds).",
        _chosen, lambda frame, i: present.show_best(frame, i.ok_settings)),
    TableSection(
        "fixed_hyperparameters", "Fixed hyperparameters", "Hyperparameters with one value in every finished trial.",
        lambda i: fixed_hyperparameters(ok_trials(i.trials)), lambda frame, i: present.show_fixed(frame),
        shown=False),
    TableSection(
        "pareto", "Pareto front: accuracy against sparsity",
        "Non-dominated complete configurations per architecture and method (mean over all seeds), chosen on "
        "VALIDATION accuracy against achieved sparsity, test accuracy beside; the dense control first. MACs = "
        "multiply-accumulates per image counting nonzero weights. " + CONTROL_TEXT,
        lambda i: pareto_front(i.trials), lambda frame, i: present.show_pareto(frame, i.labels)),
    TableSection(
        "paired", "Paired differences",
        "Final TEST accuracy difference at each sparsity, paired by seed over the seeds both chosen "
        "configurations completed (seeds only one completed are listed as lost), each method's configuration "
        "at that level chosen on validation. " + REFERENCE_TEXT + " " + TEST_TEXT + " " + LEVEL_TEXT,
        lambda i: paired_comparison(i.trials, i.reference),
        lambda frame, i: present.show_paired(frame)),
    TableSection(
        "accounting", "Sweep accounting",
        "Per architecture and method: trial rows, distinct configurations tried, how each ended (ok; "
        "diverged: NaN/inf loss; failed: an exception; stopped: ended early by the scheduler; other), and "
        "compute time (sum of trial wall times).",
        lambda i: accounting(i.trials), lambda frame, i: present.show_accounting(frame)),
    TableSection(
        "not_ok", "Trials not scored",
        "Trials that did not finish ok, with the hyperparameters that vary in the sweep; they are counted, "
        "never scored.",
        lambda i: diverged_trials(i.trials), lambda frame, i: present.show_not_ok(frame, i.labels)),
    TableSection(
        "not_chosen", "Configurations not chosen",
        RULE + " Listed: every configuration that is not complete, with each seed's status and its mean val "
        "accuracy over the seeds that finished ok (shown, never used to choose).",
        lambda i: configs_not_chosen(i.trials), lambda frame, i: present.show_not_chosen(frame, i.labels)),
)
_SECTION = {s.name: s for s in SECTIONS}


@dataclass
class Report:
    """Everything a report shows. ``tables``: raw DataFrames (the CSV files); ``displays``: the same tables
    as text (analysis.present); ``figures``: matplotlib Figures with ``alts`` (alt text); ``texts``: words
    under a figure or instead of a missing one; ``answers``: the summary in sentences; ``cautions``: words
    beside the answer about the whole sweep (models cut in two); ``notes``: warnings (skipped files)."""

    tables: dict[str, pd.DataFrame]
    figures: dict[str, object]
    sparsity: float
    experiments: list[str]
    notes: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    alts: dict[str, str] = field(default_factory=dict)
    displays: dict[str, present.Display] = field(default_factory=dict)
    answers: list[present.Answer] = field(default_factory=list)
    fixed: str = ""
    n_trials: int = 0
    cautions: list[str] = field(default_factory=list)
    reference: str = DEFAULT_REFERENCE


def _figures(inputs: Inputs) -> tuple[dict, dict, dict]:
    """(name -> Figure, name -> alt text, name -> words) of the figure sections, in reading order."""
    figures, alts, texts = {}, {}, {}
    for section in SECTIONS:
        if not isinstance(section, FigureSection):
            continue
        args = section.data(inputs)
        if args is not None:
            figures[section.name], alts[section.name] = section.render(*args), section.alt(*args)
        if section.text is not None:
            texts[section.name] = section.text(inputs)
    return figures, alts, texts


def _cut_caution(trials: pd.DataFrame) -> list[str]:
    """The caution about models with prunable layers pruned to zero, with which of them were chosen (at
    their own level); [] when there are none."""
    cut = cut_networks(trials)
    if cut.empty:
        return []
    chosen = set()
    for level in cut["sparsity_level"].dropna().unique():
        chosen |= {i for ids in best_configs(trials, float(level))["trial_ids"] for i in ids.split(",")}
    return [present.empty_layers_note(cut, chosen)]


def _reference_note(trials: pd.DataFrame, reference: str) -> list[str]:
    """Words when the reference method has no rows although other methods could be compared with it."""
    present = methods_of(trials)
    if reference in present or len(present) < 2:
        return []
    return [f"the reference method {reference} has no rows: no method is compared with it (choose one with "
            f"--reference; methods present: {', '.join(present)})"]


def build_report(tables: Tables, sparsity: float = 0.5, importances: Importances | None = None,
                 search: summary.Search | None = None, reference: str = DEFAULT_REFERENCE) -> Report:
    """Build every table, figure and sentence of the report from loaded tables. Pure apart from creating
    Figures. ``importances`` (from :func:`importance_data`; None: not computed) gives the importance figure,
    or the words saying why there is none; ``search`` (from :func:`analysis.summary.search_info`; None: the
    sweep's default sampler assumed) sizes the caution about small studies; ``reference``: the method every
    other is compared with (sweep.json's, :func:`analysis.tables.reference_method`)."""
    inputs = Inputs(tables, sparsity, search or summary.Search(), importances, reference)
    table_sections = [s for s in SECTIONS if isinstance(s, TableSection)]
    raw = {s.name: s.build(inputs) for s in table_sections}
    displays = {s.name: s.show(raw[s.name], inputs) for s in table_sections}
    figures, alts, texts = _figures(inputs)
    notes = [f"skipped {path}: {reason}" for path, reason in tables.skipped] + _reference_note(inputs.trials,
                                                                                              reference)
    if raw["comparison"].empty:
        notes.append(f"no finished trial at sparsity {100 * sparsity:.1f}%: the comparison table is empty "
                     "(choose another level with --sparsity)")
    fixed = present.fixed_text(raw["fixed_hyperparameters"], inputs.ok_settings)
    return Report(raw, figures, sparsity, [display_name(e) for e in tables.experiments], notes, texts, alts,
                  displays, present.answers(raw["summary"]), fixed, len(inputs.trials),
                  _cut_caution(inputs.trials), reference)


def figure_bytes(fig, fmt: str) -> bytes:
    """A figure rendered to PNG or SVG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _under_table(name: str, report: Report) -> list[str]:
    """Paragraphs under a table in every format: the fixed hyperparameters under the chosen configurations."""
    return [f"Fixed: {report.fixed}."] if name == "best_hyperparameters" and report.fixed else []


def latex_notes(name: str, report: Report) -> list[str]:
    """Paragraphs under a LaTeX table: the answers (with cautions) and the sweep's cautions under the summary,
    the fixed hyperparameters under the chosen configurations."""
    if name == "summary":
        return [present.answer_text(a) for a in report.answers] + [f"Caution: {c}" for c in report.cautions]
    return _under_table(name, report)


def caption(name: str, report: Report) -> str:
    """A section's caption, with the report's comparison level, the importance threshold and the reference
    method filled in."""
    return _SECTION[name].caption.format(s=f"{100 * report.sparsity:.1f}%", n=MIN_IMPORTANCE_TRIALS,
                                         r=report.reference)


table_caption = caption  # the name analysis.__main__ imports


def sections(report: Report) -> list[str]:
    """Section names in reading order: the summary first, tables with rows or a reason, figures present
    or explained in words."""
    return [s.name for s in SECTIONS if (s.name in report.displays and getattr(s, "shown", True))
            or s.name in report.figures or s.name in report.texts]


def title(name: str) -> str:
    return _SECTION[name].title


# --- Markdown ----------------------------------------------------------------------------------------------------

def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame of text as a GitHub Markdown table (written here to avoid the optional tabulate dependency)."""
    cells = frame.astype(str)
    rows = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    rows += ["| " + " | ".join(v.replace("|", "\\|") for v in r) + " |" for r in cells.itertuples(index=False)]
    return "\n".join(rows)


def _markdown_display(display: present.Display) -> list[str]:
    if display.frame.empty:
        return ["_(no rows)_"]
    notes = [f"{present.DASH}{present.superscript(i + 1)} {reason}" for i, reason in enumerate(display.footnotes)]
    return [markdown_table(display.frame), *([""] + ["  \n".join(notes)] if notes else [])]


def _markdown_answers(report: Report) -> list[str]:
    answers, shared = present.shared_cautions(report.answers)
    lines = [f"- **{a.headline}** {a.detail}" + (f"  \n  Caution: {a.caution}." if a.caution else "")
             for a in answers] or ["- No finished trial: nothing to compare yet."]
    lines += ["", f"Caution for every row above: {shared}."] if shared else []
    return lines + [line for c in report.cautions for line in ("", f"Caution: {c}")]


def _markdown_section(name: str, report: Report, figure_files: dict[str, str] | None) -> list[str]:
    lines = ["", f"## {title(name)}", ""]
    if name == "summary":
        lines += [*_markdown_answers(report), ""]
    if name in report.displays:
        lines += [caption(name, report), "", *_markdown_display(report.displays[name])]
        return lines + [line for text in _under_table(name, report) for line in ("", text)]
    lines += [caption(name, report), ""]
    if report.texts.get(name):
        lines += [report.texts[name], ""]
    if figure_files and name in figure_files:
        lines.append(f"![{report.alts.get(name, name)}]({figure_files[name]})")
    return lines


def render_markdown(report: Report, figure_files: dict[str, str] | None = None) -> str:
    """The report as Markdown, in the HTML's order; figures linked by the relative paths in ``figure_files``."""
    lines = ["# Pruning sweep report"]
    for name in sections(report):
        lines += _markdown_section(name, report, figure_files)
        if name == "summary":
            lines += ["", *[f"> {note}" for note in report.notes], "", _provenance(report)]
    return "\n".join(lines) + "\n"


def _provenance(report: Report) -> str:
    return f"{report.n_trials} trial rows from: " + ", ".join(report.experiments) + "."


# --- HTML --------------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;max-width:1180px;margin:1em auto;padding:0 16px;color:#222;line-height:1.4;
 overflow-wrap:break-word}
h1{margin:.3em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px;margin:.5em 0;width:100%}
th{background:#f0f0f0;font-weight:600;text-align:left;vertical-align:bottom}
td,th{border:1px solid #d4d4d4;padding:3px 6px}
td{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.text{text-align:left;white-space:normal;min-width:12em;overflow-wrap:anywhere}td.name{text-align:left}
.tablebox{max-width:100%;overflow-x:auto}
.footnotes{font-size:12px;color:#555;margin:0}
.answers li{margin:.35em 0}.caution{color:#8a4b00}.note{color:#a40}
.caption{color:#444;font-size:14px}.meta{color:#666;font-size:13px}
figure{margin:.5em 0}img{max-width:100%;height:auto}
"""


def _html_table(display: present.Display) -> str:
    if display.frame.empty:
        return "<p><i>(no rows)</i></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in display.frame.columns)
    names = {c for c in display.frame.columns if c in ("Architecture", "Model", "Method", "Trial", "Status",
                                                        "Hyperparameter", "Value", "Verdict")}
    body = []
    for row in display.frame.itertuples(index=False):
        cells = []
        for col, value in zip(display.frame.columns, row):
            cls = " class='text'" if col in display.text_columns else " class='name'" if col in names else ""
            cells.append(f"<td{cls}>{html.escape(str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<p class='footnotes'>{present.DASH}{present.superscript(i + 1)} {html.escape(r)}</p>"
                    for i, r in enumerate(display.footnotes))
    return (f"<div class='tablebox'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"</div>{notes}")


def _html_answers(report: Report) -> str:
    answers, shared = present.shared_cautions(report.answers)
    items = []
    for a in answers:
        caution = f"<br><span class='caution'>Caution: {html.escape(a.caution)}.</span>" if a.caution else ""
        items.append(f"<li><strong>{html.escape(a.headline)}</strong> {html.escape(a.detail)}{caution}</li>")
    text = "<ul class='answers'>" + ("".join(items) or "<li>No finished trial: nothing to compare yet.</li>") + "</ul>"
    if shared:
        text += f"<p class='caution'>Caution for every row above: {html.escape(shared)}.</p>"
    return text + "".join(f"<p class='caution'>Caution: {html.escape(c)}</p>" for c in report.cautions)


def _html_figure(name: str, report: Report) -> str:
    parts = [f"<p class='caption'>{html.escape(caption(name, report))}</p>"]
    if report.texts.get(name):
        parts.append(f"<p class='note'>{html.escape(report.texts[name])}</p>")
    if name in report.figures:
        data = base64.b64encode(figure_bytes(report.figures[name], "png")).decode()
        alt = html.escape(report.alts.get(name, name), quote=True)
        parts.append(f"<figure><img class='figure' alt=\"{alt}\" src='data:image/png;base64,{data}'></figure>")
    return "".join(parts)


def _html_section(name: str, report: Report) -> str:
    parts = [f"<section id='{name}'><h2>{html.escape(title(name))}</h2>"]
    if name == "summary":
        parts.append(_html_answers(report))
    if name in report.displays:
        parts.append(f"<p class='caption'>{html.escape(caption(name, report))}</p>")
        parts.append(_html_table(report.displays[name]))
        parts += [f"<p class='meta'>{html.escape(text)}</p>" for text in _under_table(name, report)]
    else:
        parts.append(_html_figure(name, report))
    if name == "summary":
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in report.notes]
        parts.append(f"<p class='meta'>{html.escape(_provenance(report))}</p>")
    return "".join(parts) + "</section>"


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (figures embedded as base64 PNG, no external links); the
    summary is its first section."""
    head = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>Pruning sweep report</title>"
            f"<style>{CSS}</style></head><body><h1>Pruning sweep report</h1>")
    return "\n".join([head, *(_html_section(n, report) for n in sections(report)), "</body></html>"])


# --- LaTeX -------------------------------------------------------------------------------------------------------

_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  present.DASH: "---", present.MINUS: "$-$", "±": r"$\pm$", "‖": r"$\|$", "Σ": r"$\Sigma$",
                  "ρ": r"$\rho$"}
_LATEX_SPECIAL.update({ch: rf"\textsuperscript{{{i}}}" for i, ch in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")})


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(display: present.Display, caption: str, notes: list[str] = ()) -> str:
    """One display table as a LaTeX table environment with a plain tabular (no packages needed): prose
    columns as wrapping ``p{}`` columns, footnotes and ``notes`` (paragraphs) under the table."""
    frame = display.frame
    spec = "".join("p{4.5cm}" if c in display.text_columns else "l" for c in frame.columns)
    head = " & ".join(latex_escape(str(c)) for c in frame.columns) + r" \\"
    body = [" & ".join(latex_escape(str(v)) for v in r) + r" \\" for r in frame.itertuples(index=False)]
    notes = [rf"\par\footnotesize {latex_escape(present.DASH + present.superscript(i + 1))} {latex_escape(r)}"
             for i, r in enumerate(display.footnotes)] + [rf"\par\footnotesize {latex_escape(n)}" for n in notes]
    return "\n".join([r"\begin{table}", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
                      r"\begin{tabular}{" + (spec or "l") + "}", r"\hline", head, r"\hline", *body, r"\hline",
                      r"\end{tabular}", *notes, r"\end{table}", ""])
