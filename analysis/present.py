"""Tables a person reads: the report's data frames as text tables with human headings, accuracy in percent
with one decimal (mean ± sample std over seeds), differences in percentage points, hyperparameters as
``name=value`` lists (the ones that vary; the fixed ones once, in their own list), and every missing
number as an em dash whose reason is a numbered footnote.

Pure: DataFrames in, :class:`Display` out. The CSV files keep the raw frames at full precision (data, not
presentation); HTML, Markdown and LaTeX show these.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Union

import pandas as pd

from .export import export_hint
from .significance import ALPHA, EXACT
from .summary import CAUTION_SEPARATOR
from .tables import (CONTROL_MISSING, DEFAULT_REFERENCE, GROUP, REFERENCE_KEY, STATUSES,
                     varying_hyperparameters)

DASH = "—"
MINUS = "−"  # U+2212: a minus sign, not a hyphen, in front of numbers
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
ONE_SEED = "one seed: no standard deviation"
NOT_PRUNED = "a dense model is not pruned: no pruning stages"
NOT_RECORDED = "not recorded in the results"


@dataclass(frozen=True)
class Missing:
    """A missing number and why, shown as an em dash with a footnote."""

    reason: str


Cell = Union[str, Missing, tuple]  # a tuple joins its parts: ("61.2", " ± ", Missing(...))


@dataclass
class Display:
    """One table as text. ``footnotes[i]`` explains the cells marked with superscript i+1; ``text_columns``
    hold prose (hyperparameters, errors, cautions) that may wrap; the others are short numbers."""

    frame: pd.DataFrame
    footnotes: list[str] = field(default_factory=list)
    text_columns: tuple[str, ...] = ()


def superscript(n: int) -> str:
    return str(n).translate(_SUPERSCRIPT)


def _missing(value) -> bool:
    return value is None or (isinstance(value, numbers.Number) and math.isnan(float(value)))


def render(frame: pd.DataFrame, spec: list[tuple[str, Callable[[dict], Cell]]],
           text_columns: tuple[str, ...] = ()) -> Display:
    """Apply ``spec`` (heading, cell function of a row dict) to every row; number the reasons of the
    :class:`Missing` cells in order of first appearance."""
    reasons: list[str] = []

    def text(cell: Cell) -> str:
        if isinstance(cell, Missing):
            if cell.reason not in reasons:
                reasons.append(cell.reason)
            return DASH + superscript(reasons.index(cell.reason) + 1)
        if isinstance(cell, tuple):
            return "".join(text(c) for c in cell)
        return str(cell)

    rows = [[text(fn(row)) for _, fn in spec] for row in frame.to_dict("records")]
    out = pd.DataFrame(rows, columns=[h for h, _ in spec])
    return Display(out, reasons, text_columns)


# --- numbers -------------------------------------------------------------------------------------------------

def percent(x, reason: str = NOT_RECORDED) -> Cell:
    """A fraction as percent with one decimal (no % sign: headings say the unit)."""
    return Missing(reason) if _missing(x) else f"{100 * float(x):.1f}"


def mean_std(mean, std, reason: str = NOT_RECORDED, std_reason: str = ONE_SEED) -> Cell:
    """Accuracy fractions as ``61.2 ± 0.4`` percent; a missing std as ``61.2 ± —``."""
    if _missing(mean):
        return Missing(reason)
    return (percent(mean), " ± ", percent(std, std_reason))


def sparsity(x, reason: str = NOT_RECORDED) -> Cell:
    """A sparsity fraction as ``49.9%``."""
    return Missing(reason) if _missing(x) else f"{100 * float(x):.1f}%"


def signed(x: float, decimals: int = 1) -> str:
    text = f"{abs(x):.{decimals}f}"
    return ("+" if x > 0 else MINUS if x < 0 else "") + text if float(text) != 0 else text


def points(x, reason: str = NOT_RECORDED) -> Cell:
    """A difference of accuracy fractions in signed percentage points, one decimal."""
    return Missing(reason) if _missing(x) else signed(100 * float(x))


def interval(lo, hi, reason: str) -> Cell:
    if _missing(lo) or _missing(hi):
        return Missing(reason)
    return f"{signed(100 * float(lo))} to {signed(100 * float(hi))}"


def p_value(p, reason: str) -> Cell:
    if _missing(p):
        return Missing(reason)
    return "<0.001" if p < 0.001 else f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def count(x, reason: str = NOT_RECORDED) -> Cell:
    return Missing(reason) if _missing(x) else f"{int(x)}"


def scaled(x, reason: str = NOT_RECORDED) -> Cell:
    """A large count with three significant digits and a k / M / G suffix (parameters, MACs)."""
    if _missing(x):
        return Missing(reason)
    x = float(x)
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def file_size(nbytes, dense_bytes, reason: str = NOT_RECORDED) -> Cell:
    """A file's size with three significant digits in B / kB / MB / GB (powers of 1000) and its share of the
    dense file: ``1.5 MB (17% of dense)``."""
    if _missing(nbytes):
        return Missing(reason)
    n = float(nbytes)
    text = next((f"{n / f:.3g} {unit}" for f, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")) if n >= f),
                f"{int(n)} B")
    if _missing(dense_bytes) or not dense_bytes:
        return text
    return f"{text} ({100 * n / float(dense_bytes):.0f}% of dense)"


def duration(seconds) -> Cell:
    if _missing(seconds):
        return Missing(NOT_RECORDED)
    minutes = float(seconds) / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def value_text(value) -> str:
    """A hyperparameter value as a reader types it: 0.001, 1e-05, True, cosine, none."""
    if _missing(value):
        return "none"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.3g}"
    return str(value)


def settings_text(row: dict, names: list[str]) -> str:
    """``name=value`` pairs of ``names`` in ``row``, comma separated; '(none vary)' when there are none."""
    pairs = [f"{n}={value_text(row.get(n))}" for n in names]
    return ", ".join(pairs) if pairs else "(none vary)"


def _per_method(settings: pd.DataFrame) -> dict[str, tuple[list[str], list[str]]]:
    """Per method, the hyperparameters of ``settings`` (one row per configuration) that (vary among its
    configurations, are fixed within it). A column null in every configuration of the method (a field of the
    other method: rho for magnitude, say) is in neither."""
    names = [c for c in settings.columns if c not in (*GROUP, "config")]
    out = {}
    for method, rows in settings.groupby("method"):
        used = [n for n in names if rows[n].notna().any()]
        varying = varying_hyperparameters(rows.reindex(columns=used))
        out[method] = ([n for n in used if n in varying], [n for n in used if n not in varying])
    return out


def hyperparameter_labels(settings: pd.DataFrame) -> dict[str, str]:
    """config id -> ``name=value, ...`` of the hyperparameters that vary among its method's configurations
    (``settings``: ``tables.config_settings``)."""
    varying = {m: v for m, (v, _) in _per_method(settings).items()}
    return {row["config"]: settings_text(row, varying.get(row["method"], []))
            for row in settings.to_dict("records")}


def fixed_text(fixed: pd.DataFrame, settings: pd.DataFrame) -> str:
    """The fixed hyperparameters as ``name=value`` lists: those with one value in every trial, then per
    method those that vary in the sweep only because the other method lacks them (rho for ADMM, say)."""
    parts = [", ".join(f"{r['hyperparameter']}={_fixed_value(r['value'])}" for r in fixed.to_dict("records"))]
    for method, (_, constant) in sorted(_per_method(settings).items()):
        if constant:
            first = settings[settings["method"] == method].iloc[0].to_dict()
            parts.append(f"{method} only: " + settings_text(first, constant))
    return "; ".join(p for p in parts if p)


# --- the report's tables ---------------------------------------------------------------------------------------

def _level(row: dict) -> Cell:
    return sparsity(row["sparsity_level"])


def _verdict_text(row: dict) -> str:
    leader, verdict = row.get("leader") or "", row["verdict"]
    if verdict == "wins":
        return f"{leader} wins"
    if verdict == "unresolved":
        return f"no clear winner ({leader} ahead)"
    if verdict == "one seed":
        return f"{leader} ahead (one seed)"
    if verdict == "too few seeds":
        return f"{leader} ahead (needs {int(row['seeds_needed'])} seeds to decide)"
    if verdict == "one method":
        return f"only {row['methods'].replace(',', ', ')} ran"
    if verdict == "none complete":
        return "no complete configuration"
    return verdict


SIGN_FLIP_P = "p (exact sign-flip)"  # the p-value a verdict rests on (analysis.significance)
T_INTERVAL = "95% t-interval (pp)"


def reference_of(table: pd.DataFrame) -> str:
    """The reference method a summary or paired table compares with (its ``reference`` column; every row
    has the same one), DEFAULT_REFERENCE for a table without one."""
    named = table.reindex(columns=[REFERENCE_KEY])[REFERENCE_KEY].dropna().astype(str)
    named = named[named != ""]
    return named.iloc[0] if len(named) else DEFAULT_REFERENCE


ONLY_REFERENCE = "only the reference method ran at this level: nothing to compare it with"


def _compared(row: dict) -> Cell:
    return row.get("method") or Missing(ONLY_REFERENCE)


def _accuracy_of(method: str | None, reason: str) -> Callable[[dict], Cell]:
    """A cell: ``method``'s final test accuracy in the row (mean ± std); None: the row's compared method."""
    def cell(row: dict) -> Cell:
        name = row.get("method") if method is None else method
        if not name:
            return Missing(ONLY_REFERENCE)
        return mean_std(row.get(f"final_test_acc_{name}_mean"), row.get(f"final_test_acc_{name}_std"), reason)
    return cell


def show_summary(summary: pd.DataFrame) -> Display:
    """The answer per (arch, level) and pair: the compared method's and the reference's test accuracy, the
    dense control, the paired difference and interval, seeds and verdict (the cautions are in
    :func:`answers`, shown beside the table)."""
    reference = reference_of(summary)
    no_pair = "this method did not finish at this level, or no seed ran both methods"
    no_diff = "only one method finished at this level: no difference"
    spec = [
        ("Architecture", lambda r: r["arch"]), ("Sparsity", _level), ("Method", _compared),
        ("Method (test %)", _accuracy_of(None, no_pair)),
        (f"{reference} (reference, test %)", _accuracy_of(reference, no_pair)),
        ("Dense control (test %)", lambda r: mean_std(r["control_test_acc_mean"], r["control_test_acc_std"],
                                                      CONTROL_MISSING)),
        (f"Method {MINUS} {reference} (pp)", lambda r: points(r["mean_diff"], no_diff)),
        (T_INTERVAL, lambda r: interval(r["ci95_lo"], r["ci95_hi"], "fewer than 2 paired seeds: no interval")),
        (SIGN_FLIP_P, lambda r: p_value(r["p_value"], "fewer than 2 paired seeds: no test")),
        ("Paired seeds", lambda r: count(r["n_pairs"])), ("Verdict", _verdict_text)]
    if summary.reindex(columns=["judged_on"])["judged_on"].astype(object).fillna("").astype(str).ne("").any():
        spec.insert(2, ("Judged on", lambda r: r["judged_on"] if isinstance(r["judged_on"], str) and r["judged_on"]
                        else "the tuning seeds"))
    return render(summary, spec)


def _model(row: dict) -> str:
    return "dense control" if row["row"] == "control" else row["method"]


def _stage(stage: str) -> Callable[[dict], Cell]:
    def cell(row: dict) -> Cell:
        if row["row"] == "control":
            return Missing(NOT_PRUNED)
        return mean_std(row[f"{stage}_test_acc_mean"], row[f"{stage}_test_acc_std"])
    return cell


def _final(row: dict) -> Cell:
    reason = (row.get("note") or CONTROL_MISSING) if row["row"] == "control" else NOT_RECORDED
    return mean_std(row["final_test_acc_mean"], row["final_test_acc_std"], reason)


def show_comparison(comparison: pd.DataFrame) -> Display:
    """The comparison table: each method's chosen configuration through its stages, and the dense control."""
    spec = [
        ("Architecture", lambda r: r["arch"]), ("Model", _model), ("Sparsity", _level),
        ("Achieved", lambda r: sparsity(r["achieved_sparsity_mean"])),
        ("Val % (selects)", lambda r: percent(r["final_val_acc_mean"], "the dense control is not selected")
         if r["row"] != "control" else Missing("the dense control is not selected")),
        ("Dense start", lambda r: mean_std(r["dense_start_test_acc_mean"], r["dense_start_test_acc_std"])),
        ("Pre-prune", _stage("pre_prune")), ("Post-prune", _stage("post_prune")),
        ("Post-prune, stale BN", _stage("post_prune_stale_bn")), ("Final", _final),
        ("Seeds", lambda r: count(r["n_seeds"])),
        ("Epochs", lambda r: count(r["budget_epochs"], "the seeds' epoch budgets differ"))]
    return render(comparison, spec)


NO_MODEL_BYTES = ("not recorded: these results predate the trials table's model_bytes and dense_bytes "
                  "(results schema 4)")
NO_EMPTY_LAYERS = "not recorded: these results predate the trials table's empty_layers (results schema 4)"
CUT = "network cut"  # after the count of prunable layers pruned to zero
NO_LATENCY = "not recorded: these results predate the trials table's latency columns (results schema 5)"


def _latency(row: dict) -> Cell:
    """2:4 semi-structured inference vs the same model dense (trials' latency_*): ``0.61 ms vs 0.83 ms dense
    (1.36x)``; where none was measured, the reason the trials recorded (no CUDA GPU with compute capability
    >= 8.0, not an N:M model, ...)."""
    sparse, dense, speedup = (row.get(f"latency_{c}_mean") for c in ("sparse_ms", "dense_ms", "speedup"))
    if _missing(speedup):
        note = row.get("latency_note")
        return Missing(NO_LATENCY if _missing(note) else (note or "not measured"))
    return f"{sparse:.3g} ms vs {dense:.3g} ms dense ({speedup:.2f}x)"


def _empty_layers(row: dict) -> Cell:
    """The most prunable layers a seed pruned to zero; above 0 flagged: the network is cut in two."""
    n = row.get("empty_layers_max")
    if _missing(n):
        return Missing(NO_EMPTY_LAYERS)
    return f"{int(n)}: {CUT}" if n > 0 else "0"


def _export(row: dict) -> Cell:
    if not row.get("experiment"):
        return Missing("no experiment folder recorded: nothing to export from")
    return export_hint(row["experiment"], row["arch"], row["method"], float(row["sparsity_level"]))


def show_best(best: pd.DataFrame, settings: pd.DataFrame) -> Display:
    """The chosen configuration per (arch, method): its varying hyperparameters as ``name=value``, its model's
    nonzero parameters and MACs, file size (``tables.with_model_facts``), 2:4 inference latency (or why none
    was measured), prunable layers emptied, and the command that exports it."""
    applicable = {m: [n for n in v if n in best.columns] for m, (v, _) in _per_method(settings).items()}
    spec = [
        ("Architecture", lambda r: r["arch"]), ("Method", lambda r: r["method"]), ("Sparsity", _level),
        ("Achieved", lambda r: sparsity(r["achieved_sparsity_mean"])),
        ("Hyperparameters", lambda r: settings_text(r, applicable.get(r["method"], []))),
        ("Seeds", lambda r: count(r["n_seeds"])), ("Val %", lambda r: percent(r["final_val_acc_mean"])),
        ("Nonzero params", lambda r: scaled(r.get("nonzero_params_mean"))),
        ("Nonzero MACs", lambda r: scaled(r.get("nonzero_macs_mean"))),
        ("Model file", lambda r: file_size(r.get("model_bytes_mean"), r.get("dense_bytes_mean"), NO_MODEL_BYTES)),
        ("2:4 latency", _latency), ("Empty layers", _empty_layers), ("Export", _export)]
    return render(best, spec, text_columns=("Hyperparameters", "Export"))


def _fixed_value(value) -> str:
    return value_text(None if value == "null" else value)  # tables.fixed_hyperparameters spells null "null"


def show_fixed(fixed: pd.DataFrame) -> Display:
    spec = [("Hyperparameter", lambda r: r["hyperparameter"]), ("Value", lambda r: _fixed_value(r["value"]))]
    return render(fixed, spec)


def show_pareto(front: pd.DataFrame, labels: dict[str, str]) -> Display:
    """Pareto front rows with readable settings instead of configuration ids; dense controls first."""
    def setting(r: dict) -> str:
        if r["row"] == "control":
            return f"dense recipe, {value_text(r['budget_epochs'])} epochs"
        return labels.get(r["config"], r["config"])

    spec = [
        ("Architecture", lambda r: r["arch"]), ("Model", _model), ("Sparsity", _level),
        ("Achieved", lambda r: sparsity(r["achieved_sparsity"])),
        ("Val %", lambda r: percent(r["final_val_acc"], r.get("note") or NOT_RECORDED)),
        ("Test %", lambda r: percent(r["final_test_acc"], r.get("note") or NOT_RECORDED)),
        ("Nonzero params", lambda r: scaled(r["nonzero_params"])),
        ("Nonzero MACs", lambda r: scaled(r["nonzero_macs"])), ("Seeds", lambda r: count(r["n_seeds"])),
        ("Hyperparameters", setting)]
    return render(front, spec, text_columns=("Hyperparameters",))


def show_paired(paired: pd.DataFrame) -> Display:
    """Each method against the reference (tables.paired_comparison): achieved sparsities, the paired
    difference, its interval and p-value, and the seeds."""
    reference = reference_of(paired)
    no_ci = "fewer than 2 paired seeds: no interval"
    spec = [
        ("Architecture", lambda r: r["arch"]), ("Sparsity", _level), ("Method", _compared),
        ("Achieved, method", lambda r: sparsity(r.get(f"achieved_sparsity_{r['method']}"))),
        (f"Achieved, {reference}", lambda r: sparsity(r.get(f"achieved_sparsity_{reference}"))),
        (f"Method {MINUS} {reference} (pp)", lambda r: points(r["mean_diff"])),
        (T_INTERVAL, lambda r: interval(r["ci95_lo"], r["ci95_hi"], no_ci)),
        (SIGN_FLIP_P, lambda r: p_value(r["p_value"], r["note"] or no_ci)),
        ("Seeds", lambda r: (f"{int(r['n_pairs'])} ({r['seeds']})" if r["n_pairs"] else "0")
         + (f"; lost: {r['pairs_lost']}" if r.get("pairs_lost") else ""))]
    return render(paired, spec)


def show_accounting(accounts: pd.DataFrame) -> Display:
    spec = [("Architecture", lambda r: r["arch"]), ("Method", lambda r: r["method"]),
            ("Trials", lambda r: count(r["trials"])), ("Configurations", lambda r: count(r["configurations"])),
            *((status, (lambda s: lambda r: count(r[s]))(status)) for status in (*STATUSES, "other")),
            ("Compute", lambda r: duration(r["compute_s"]))]
    return render(accounts, spec)


def show_not_ok(rows: pd.DataFrame, labels: dict[str, str]) -> Display:
    spec = [("Architecture", lambda r: r["arch"]), ("Method", lambda r: r["method"]),
            ("Trial", lambda r: r["trial_id"]), ("Seed", lambda r: count(r["seed"])),
            ("Status", lambda r: r["status"]),
            ("Sparsity", lambda r: _level(r) if not _missing(r["sparsity_level"])
             else Missing("the trial stopped before its sparsity set was built")),
            ("Hyperparameters", lambda r: labels.get(r["config"], "")), ("Error", lambda r: r["error"] or "")]
    return render(rows, spec, text_columns=("Hyperparameters", "Error"))


def show_not_chosen(states: pd.DataFrame, labels: dict[str, str]) -> Display:
    """The configurations the shared rule (results.selection) keeps from being chosen, and why."""
    spec = [("Architecture", lambda r: r["arch"]), ("Method", lambda r: r["method"]),
            ("State", lambda r: r["state"]),
            ("Sparsity", lambda r: _level(r) if not _missing(r["sparsity_level"])
             else Missing("no seed got as far as building its sparsity set")),
            ("Seeds ok", lambda r: f"{int(r['seeds_ok'])} of {int(r['seeds_expected'])}"),
            ("Seed statuses", lambda r: r["seed_statuses"]),
            ("Val % (ok seeds)", lambda r: percent(r["final_val_acc_mean"], "no seed finished ok")),
            ("Device", lambda r: f"{r['device_type']} {r['precision']}" if not _missing(r["device_type"])
             else Missing("no device recorded")),
            ("Hyperparameters", lambda r: labels.get(r["config"], ""))]
    return render(states, spec, text_columns=("Seed statuses", "Hyperparameters"))


# --- the answer in words -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """One line of the answer: ``headline`` (bold in HTML), ``detail`` after it, ``caution`` ("" if none)."""

    headline: str
    detail: str
    caution: str


def _pct(x) -> str:
    return f"{100 * float(x):.1f}%"


def _accuracies(row: dict) -> str:
    first, second = row["method"], row[REFERENCE_KEY]
    text = (f"test accuracy {first} {_pct(row[f'final_test_acc_{first}_mean'])} vs {second} "
            f"{_pct(row[f'final_test_acc_{second}_mean'])}")
    control = row["control_test_acc_mean"]
    if _missing(control):
        return text + "; no dense control"
    best = max(row[f"final_test_acc_{first}_mean"], row[f"final_test_acc_{second}_mean"])
    return text + f"; dense control {_pct(control)}" + (", above both" if control > best else "")


def _answer(row: dict, named: bool = False) -> Answer:
    """One row's answer; ``named``: say which pair it is (the table compares more than one method)."""
    where = f"{row['arch']} at {_pct(row['sparsity_level'])} sparsity"
    if named and row.get("method"):
        where += f", {row['method']} vs {row[REFERENCE_KEY]}"
    if isinstance(row.get("judged_on"), str) and row["judged_on"]:  # which seeds: confirmation or tuning
        where += f", judged on {row['judged_on']}"
    verdict, leader = row["verdict"], row.get("leader") or ""
    caution = row["caution"] or ""
    if verdict == "one method":
        ran = [m for m in row["methods"].split(",") if not _missing(row.get(f"final_test_acc_{m}_mean"))]
        accs = "; ".join(f"{m} {_pct(row[f'final_test_acc_{m}_mean'])}" for m in ran)
        control = row.get("control_test_acc_mean")
        control = "" if _missing(control) else f"; dense control {_pct(control)}"
        detail = f"Nothing to compare at this level (test accuracy {accs}{control})." if accs else "Nothing to compare."
        return Answer(f"{where}: only {row['methods'].replace(',', ', ')} finished.", detail, caution)
    if verdict == "no pairs":
        return Answer(f"{where}: no paired seeds.", "The methods ran on different seeds.", caution)
    diff = f"{abs(100 * row['mean_diff']):.1f} pp"
    ci = f"{signed(100 * row['ci95_lo'])} to {signed(100 * row['ci95_hi'])} pp" \
        if verdict in ("wins", "unresolved", "too few seeds") else ""
    n = int(row["n_pairs"])
    test = f"{row.get('test') or EXACT}: p = {p_value(row['p_value'], '')}"
    family = row.get("family_size")
    if not _missing(family) and family > 1:
        test += (f", Holm-adjusted over the {int(family)} methods compared with {row[REFERENCE_KEY]} here "
                 f"(unadjusted {p_value(row['p_unadjusted'], '')})")
    if verdict == "wins":
        return Answer(f"{where}: {leader} wins by {diff}",
                      f"({test} over {n} seeds; paired 95% t-interval {ci}; {_accuracies(row)}).", caution)
    if verdict == "unresolved":
        return Answer(f"{where}: no clear winner.",
                      f"{leader} is ahead by {diff}, but not significantly ({test} over {n} seeds, above "
                      f"{ALPHA}; paired 95% t-interval {ci}; {_accuracies(row)}).", caution)
    if verdict == "too few seeds":
        return Answer(f"{where}: {leader} ahead by {diff} on {n} seeds, no verdict: needs at least "
                      f"{int(row['seeds_needed'])} paired seeds to decide.",
                      f"({test}; paired 95% t-interval {ci}; {_accuracies(row)}).", caution)
    if verdict == "none complete":
        return Answer(f"{where}: no configuration completed every seed.", "Nothing is chosen at this level.",
                      caution)
    if verdict == "one seed":
        return Answer(f"{where}: {leader} ahead by {diff} on one seed",
                      f"(no interval; {_accuracies(row)}).", caution)
    return Answer(f"{where}: tie", f"({_accuracies(row)}).", caution)


def shared_cautions(items: list[Answer]) -> tuple[list[Answer], str]:
    """(the answers without the cautions every one of them carries, those shared cautions as one line), so a
    caution about the whole sweep is said once. Needs two answers or more to share anything."""
    if len(items) < 2:
        return items, ""
    parts = [a.caution.split(CAUTION_SEPARATOR) if a.caution else [] for a in items]
    shared = [p for p in parts[0] if all(p in other for other in parts[1:])]
    rest = [Answer(a.headline, a.detail, CAUTION_SEPARATOR.join(p for p in ps if p not in shared))
            for a, ps in zip(items, parts)]
    return rest, CAUTION_SEPARATOR.join(shared)


def empty_layers_note(cut: pd.DataFrame, chosen_ids: set[str]) -> str:
    """A caution beside the answer about the finished trials whose model has prunable layers pruned to zero
    (``cut``: tables.cut_networks), per (arch, method, level), saying how many are in a chosen configuration
    (``chosen_ids``: their trial ids); "" when there are none."""
    if cut.empty:
        return ""
    parts = []
    for (arch, method, level), rows in cut.groupby([*GROUP, "sparsity_level"], sort=True):
        chosen = int(rows["trial_id"].isin(chosen_ids).sum())
        parts.append(f"{arch} {method} at {_pct(level)}: {_trials_text(len(rows))}"
                     + (f", {chosen} of them in the chosen configuration" if chosen else ", none chosen"))
    return (f"{_trials_text(len(cut), 'finished trial')} ended with prunable layers pruned to zero (the sparsity "
            f"set cut the network in two: such a model's accuracy is chance): {'; '.join(parts)}. See Empty "
            "layers under Chosen configurations.")


def _trials_text(n: int, noun: str = "trial") -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def answer_text(answer: Answer) -> str:
    """One answer as plain text: headline, detail, and its caution."""
    return f"{answer.headline} {answer.detail}" + (f" Caution: {answer.caution}." if answer.caution else "")


def answers(summary: pd.DataFrame) -> list[Answer]:
    """The summary table as sentences, one per (arch, level) and pair, in the table's order; each names its
    pair ("admm vs magnitude") where the table compares more than one method with the reference."""
    compared = summary.reindex(columns=["method"])["method"].dropna().astype(str)
    named = compared[compared != ""].nunique() > 1
    return [_answer(row, named) for row in summary.to_dict("records")]
