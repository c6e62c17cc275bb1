"""The report opens with the answer and reads like a paper's tables: which method wins where, by how much,
with the paired interval, seeds and a caution where the evidence is thin; percent with one decimal, mean ±
std, name=value hyperparameters instead of hash keys, an em dash with a footnote for every missing number,
raw CSV at full precision; the summary is the first section and, in real Chromium at 1280 px, no table
overflows and every figure loads.

Trial rows come from tests/result_rows.py's generator (a real TrialConfig's hyperparameter columns); most tests
build the trials DataFrame in memory, as analysis.load gives it.
"""

from __future__ import annotations

import csv
from html import escape
import math
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from result_rows import ARCH, write_trial
from result_rows import trial_rows as _trial_rows


def _row(tid, method, seed, sparsity=0.5, lr=1e-3, *, arch=ARCH, **kw) -> dict:
    return dict(_trial_rows(tid, method, seed, sparsity, lr, arch=arch, **kw)["trials"][0], arch=arch, method=method)


def _paired_rows(diffs, lr=1e-3, arch=ARCH, **kw) -> list[dict]:
    """One admm and one magnitude trial per seed; admm's final test accuracy is magnitude's plus diffs[seed]."""
    rows = []
    for seed, diff in enumerate(diffs):
        a = _row(f"{arch}-a{lr}-{seed}", "admm", seed, lr=lr, arch=arch, **kw)
        m = _row(f"{arch}-m{lr}-{seed}", "magnitude", seed, lr=lr, arch=arch, **kw)
        m["final_test_acc"] = 0.70 + 0.01 * seed
        a["final_test_acc"] = m["final_test_acc"] + diff
        rows += [a, m]
    return rows


# --- the answer ---------------------------------------------------------------------------------------------------

def test_a_clear_win_is_called_with_its_interval_and_seeds():
    from analysis import summary_table
    from analysis.present import answers

    diffs = [0.05, 0.06, 0.04, 0.05, 0.07, 0.054]  # 6 pairs: the fewest an exact sign-flip test can decide on
    row = summary_table(pd.DataFrame(_paired_rows(diffs))).iloc[0]
    half = stats.t.ppf(0.975, 5) * np.std(diffs, ddof=1) / math.sqrt(6)
    assert row["leader"] == "admm" and row["verdict"] == "wins" and row["n_pairs"] == 6
    assert row["p_value"] == pytest.approx(1 / 32) and row["test"].startswith("exact sign-flip")
    assert row["mean_diff"] == pytest.approx(np.mean(diffs)) and row["ci95_lo"] == pytest.approx(np.mean(diffs) - half)
    # the two accuracies shown are over the paired seeds, so they differ by exactly the difference shown
    assert row["final_test_acc_admm_mean"] - row["final_test_acc_magnitude_mean"] == pytest.approx(row["mean_diff"])
    answer = answers(summary_table(pd.DataFrame(_paired_rows(diffs))))[0]
    assert answer.headline == f"{ARCH} at 50.0% sparsity: admm wins by 5.4 pp"
    lo, hi = 100 * (np.mean(diffs) - half), 100 * (np.mean(diffs) + half)
    assert "p = 0.031 over 6 seeds" in answer.detail
    assert f"paired 95% t-interval +{lo:.1f} to +{hi:.1f} pp" in answer.detail
    assert "two seeds" not in answer.caution and "one seed" not in answer.caution


@pytest.mark.parametrize("diffs, verdict, caution", [
    ([0.05, -0.04], "too few seeds", "two seeds: the interval rests on one degree of freedom"),
    ([-0.02], "one seed", "one seed: no interval"),
])
def test_thin_evidence_is_said_in_one_line(diffs, verdict, caution):
    from analysis import summary_table
    from analysis.present import answers

    table = summary_table(pd.DataFrame(_paired_rows(diffs)))
    assert table["verdict"].tolist() == [verdict]
    answer = answers(table)[0]
    assert caution in answer.caution
    assert "\n" not in answer.caution
    assert "needs at least 6 paired seeds to decide" in answer.caution
    if verdict == "too few seeds":
        assert answer.headline.endswith("admm ahead by 0.5 pp on 2 seeds, no verdict: needs at least 6 paired "
                                        "seeds to decide.") and "sign-flip" in answer.detail
    else:
        assert answer.headline.endswith("magnitude ahead by 2.0 pp on one seed") and "no interval" in answer.detail


@pytest.mark.parametrize("pre_prune, cautioned", [(700.0, True), (135.0, True), (15.0, False), (math.nan, False)])
def test_an_admm_that_did_not_converge_is_said(pre_prune, cautioned):
    """A row whose chosen ADMM left W far from the sparse set (before the hard projection still more than a
    quarter of the dense model's squared distance) compares "regularised training, then projection", and
    the summary must say so; the baseline's distances never speak for ADMM."""
    from analysis import summary_table
    from analysis.summary import ADMM_UNCONVERGED_SHARE

    assert 15.0 / 300 < ADMM_UNCONVERGED_SHARE < 135.0 / 300
    trials = _paired_rows([0.05, 0.06, 0.04])
    for t in trials:
        t["dense_distance"] = 300.0
        t["pre_prune_distance"] = pre_prune if t["method"] == "admm" else 0.0
    caution = summary_table(pd.DataFrame(trials)).iloc[0]["caution"]
    assert ("ADMM did not converge" in caution) == cautioned
    if cautioned:
        assert f"still {100 * pre_prune / 300:.0f}% as far from the sparse set" in caution and "over 3 seeds" in caution
    flipped = [dict(t, pre_prune_distance=700.0 if t["method"] == "magnitude" else 5.0) for t in trials]
    assert "ADMM did not converge" not in summary_table(pd.DataFrame(flipped)).iloc[0]["caution"]


def test_a_study_smaller_than_the_samplers_random_start_is_called_random_search():
    from analysis import search_info, summary_table

    few = pd.DataFrame(_paired_rows([0.05, 0.06, 0.04]))  # one configuration per study
    default = summary_table(few).iloc[0]["caution"]
    assert "(admm 1, magnitude 1) below the 10 that TPE (the sweep's default sampler) draws at random" in default
    assert "essentially random search" in default
    nsga = summary_table(few, search_info([{"sampler": "nsga2"}])).iloc[0]["caution"]
    assert "below the 50 that NSGA-II draws" in nsga
    grid = summary_table(few, search_info([{"sampler": "tpe", "grid": True}])).iloc[0]["caution"]
    assert "random search" not in grid
    own = summary_table(few, search_info([{"sampler": "tpe", "sampler_startup_trials": 1}])).iloc[0]["caution"]
    assert "random search" not in own  # a startup count recorded by the sweep wins over Optuna's default
    many = pd.DataFrame([r for i in range(10) for r in _paired_rows([0.05, 0.06], lr=1e-4 * (i + 1))])
    assert "random search" not in summary_table(many, search_info([{"sampler": "tpe"}])).iloc[0]["caution"]


def test_an_architecture_with_one_method_says_there_is_nothing_to_compare():
    from analysis import summary_table
    from analysis.present import answers

    rows = _paired_rows([0.05, 0.06]) + [_row("v3m0", "magnitude", 0, arch="mobilenet_v3_small")]
    table = summary_table(pd.DataFrame(rows))
    assert table["arch"].tolist() == [ARCH, "mobilenet_v3_small"]
    assert table["verdict"].tolist()[1] == "one method"
    alone = answers(table)[1]
    assert alone.headline == "mobilenet_v3_small at 50.0% sparsity: only magnitude finished."
    acc = table["final_test_acc_magnitude_mean"].iloc[1]
    assert alone.detail == f"Nothing to compare at this level (test accuracy magnitude {100 * acc:.1f}%)."
    assert alone.caution == "" and math.isnan(table["mean_diff"].iloc[1])


def test_trials_that_did_not_finish_are_part_of_the_caution():
    from analysis import summary_table

    rows = _paired_rows([0.05, 0.06, 0.04]) + [_row("div", "admm", 0, lr=10.0, status="diverged")]
    assert "1 of 7 trials did not finish ok" in summary_table(pd.DataFrame(rows)).iloc[0]["caution"]


def test_a_caution_every_row_shares_is_said_once():
    from analysis import summary_table
    from analysis.present import answers, shared_cautions

    rows = _paired_rows([0.05, 0.06], lr=1e-3) + _paired_rows([0.05], lr=1e-3, arch="mobilenet_v3_small")
    per_row, shared = shared_cautions(answers(summary_table(pd.DataFrame(rows))))
    assert "essentially random search" in shared
    needs = "needs at least 6 paired seeds to decide (with {} the exact sign-flip test's smallest p-value is {} > 0.05)"
    assert [a.caution for a in per_row] == [
        "two seeds: the interval rests on one degree of freedom; " + needs.format(2, "0.5"),
        "one seed: no interval, and the difference may be seed noise; " + needs.format(1, "1")]


# --- tables a person reads ----------------------------------------------------------------------------------------

ACCURACY = re.compile(r"^\d{1,3}\.\d ± (\d{1,3}\.\d|—\S)$")


def _reason(display, cell: str) -> str:
    """The footnote a dashed cell points to (``—²`` -> the second footnote)."""
    marker = re.search(r"—([⁰¹²³⁴⁵⁶⁷⁸⁹]+)", cell)
    assert marker, f"{cell!r} has no footnote marker"
    number = int(marker.group(1).translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")))
    return display.footnotes[number - 1]


def test_accuracy_is_percent_with_one_decimal_and_missing_numbers_have_reasons():
    from analysis import comparison_table
    from analysis.present import NOT_PRUNED, ONE_SEED, show_comparison

    rows = []
    for seed in (0, 1, 2):
        rows += [_row(f"a{seed}", "admm", seed, control=0.9 + 0.01 * seed), _row(f"m{seed}", "magnitude", seed)]
    rows.append(_row("one", "magnitude", 5, sparsity=0.8))  # one seed at 0.8
    display = show_comparison(comparison_table(pd.DataFrame(rows), 0.5))
    frame = display.frame.set_index("Model")
    assert all(ACCURACY.match(v) for v in frame.loc[["admm", "magnitude"], "Final"]), frame["Final"].tolist()
    assert frame.loc["dense control", "Final"] == "91.0 ± 1.0"
    assert _reason(display, frame.loc["dense control", "Pre-prune"]) == NOT_PRUNED
    single = show_comparison(comparison_table(pd.DataFrame(rows), 0.8))
    final = single.frame.set_index("Model").loc["magnitude", "Final"]
    assert re.match(r"^\d+\.\d ± —\S$", final) and _reason(single, final) == ONE_SEED
    assert "nan" not in display.frame.to_string().lower() and "nan" not in single.frame.to_string().lower()


def test_hyperparameters_are_name_value_lists_and_fixed_ones_are_listed_once():
    from analysis import best_hyperparameters, config_settings, fixed_hyperparameters
    from analysis.present import fixed_text, show_best

    rows = []
    for lr, wd in ((1e-3, 0.0), (3e-4, 5e-4)):
        for seed in (0, 1):
            rows += [_row(f"a{lr}{seed}", "admm", seed, lr=lr, weight_decay=wd),
                     _row(f"m{lr}{seed}", "magnitude", seed, lr=lr, weight_decay=wd)]
    trials = pd.DataFrame(rows)
    display = show_best(best_hyperparameters(trials, 0.5), config_settings(trials))
    settings = display.frame["Hyperparameters"].tolist()
    assert all(re.fullmatch(r"lr=[0-9.e-]+, weight_decay=[0-9.e-]+", s) for s in settings), settings
    fixed = fixed_text(fixed_hyperparameters(trials), config_settings(trials))
    assert "dataset=" in fixed and not re.search(r"(^|, )(lr|weight_decay)=", fixed)
    assert "admm only: " in fixed and "rho=0.01" in fixed.split("admm only: ")[1]  # rho is not a magnitude field
    assert "magnitude only: " in fixed and "schedule=per_step" in fixed


# --- the report as written by the CLI -------------------------------------------------------------------------------

LONG_ERROR = ("RuntimeError: loss became nan at epoch 3 step 17 of the sparsify phase after the ADMM update "
              "(rho 0.01, lr 10.0); the last finite loss was 2.3 and the weights' norm grew by 1e6 in one step")


def _write_diverged(root, tid: str, error: str) -> None:
    from results import schema

    rows = _trial_rows(tid, "admm", 0, 0.5, 10.0, status="diverged")
    rows["trials"][0]["error"] = error
    for name, table_rows in rows.items():
        schema.write_trial_table(str(root), name, table_rows, arch=ARCH, method="admm", trial_id=tid)


@pytest.fixture(scope="module")
def stress_report(tmp_path_factory):
    """A report that is hard to lay out: three architectures, four hyperparameters that vary, an N:M set
    (its own comparison level), a long error message, one seed at one level; written by the CLI."""
    root = tmp_path_factory.mktemp("stress_exp")
    for arch in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"):
        for i, (lr, wd, ls) in enumerate(((1e-3, 0.0, 0.0), (3e-4, 5e-4, 0.1))):
            for seed in (0, 1, 2):
                for method in ("admm", "magnitude"):
                    write_trial(root, f"{arch[10:] or 'v2'}-{method}-{i}-{seed}", method, seed, 0.5, lr, arch=arch,
                                weight_decay=wd, label_smoothing=ls, control=0.9 if method == "admm" else None)
        write_trial(root, f"{arch}-nm", "admm", 0, 0.5, 1e-3, arch=arch, target=0.469, sparsity_set="nm")
    _write_diverged(root, "diverged-with-a-long-error", LONG_ERROR)
    out = tmp_path_factory.mktemp("stress_report")
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(root), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root, out


def test_summary_is_the_first_section_in_every_format(stress_report):
    _, out = stress_report
    html = (out / "report.html").read_text()
    assert re.findall(r"<section id='(\w+)'", html)[0] == "summary"
    assert html.index("<section id='summary'>") < html.index("<table")
    markdown = (out / "report.md").read_text()
    assert re.findall(r"^## (.+)$", markdown, re.M)[0] == "Summary: which method wins"
    first = markdown.split("## ")[1]
    assert "mobilenet_v3_small at 50.0% sparsity: admm" in first and "pp" in first
    latex = (out / "tables" / "summary.tex").read_text()
    assert "mobilenet\\_v3\\_small at 50.0\\% sparsity" in latex and "Caution" in latex


def test_no_configuration_hash_or_nan_is_shown(stress_report):
    _, out = stress_report
    html = re.sub(r"<img[^>]*>", "", (out / "report.html").read_text())
    markdown = (out / "report.md").read_text()
    hashes = set(pd.read_csv(out / "tables" / "pareto.csv")["config"].dropna())
    assert hashes and not any(h in html or h in markdown for h in hashes)
    assert "<td class='text'>lr=0.001, weight_decay=0, label_smoothing=0</td>" in html
    assert escape(LONG_ERROR) in html
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html.split("<section id='not_ok'>")[0])  # errors quote "nan"
    assert cells and not [c for c in cells if re.search(r"\bnan\b", c, re.I)]
    rows = [line for line in markdown.split("## Trials not scored")[0].splitlines() if line.startswith("| ")]
    latex = (out / "tables" / "comparison.tex").read_text().split("\\hline")[2]  # the tabular's body
    assert rows and not [r for r in rows + [latex] if re.search(r"\bnan\b", r, re.I)]


def test_csv_keeps_full_precision_while_pages_round(stress_report):
    root, out = stress_report
    from analysis import comparison_table, load_tables

    want = comparison_table(load_tables(str(root)).trials, 0.5)
    with open(out / "tables" / "comparison.csv") as fh:
        got = list(csv.DictReader(fh))
    value = float(got[1]["final_test_acc_mean"])
    assert value == pytest.approx(want["final_test_acc_mean"].iloc[1], rel=1e-12)
    assert len(got[1]["final_test_acc_mean"].split(".")[1]) > 4  # not rounded for display
    assert f"{100 * value:.1f} ± " in (out / "report.html").read_text()


def test_every_figure_has_alt_text_and_a_caption(stress_report):
    _, out = stress_report
    html = (out / "report.html").read_text()
    images = re.findall(r"<section id='(\w+)'><h2>[^<]+</h2><p class='caption'>([^<]+)</p>"
                        r"(?:<p class='note'>[^<]*</p>)?<figure><img class='figure' alt=\"([^\"]+)\"", html)
    assert {name for name, _, _ in images} == {"sparsity", "macs", "layers", "curves", "admm", "weights"}
    assert html.count("<img") == len(images)
    for name, caption, alt in images:
        assert len(alt) > 60 and len(caption) > 80, name
    alts = dict((n, a) for n, _, a in images)
    assert "kept dense" in alts["layers"] and "mobilenet_v3_large" in alts["macs"]
    markdown = (out / "report.md").read_text()
    assert markdown.count("![") == 6 and "![layers]" not in markdown


def test_report_at_1280px_has_no_table_overflow_and_loads_every_image(stress_report, tmp_path):
    import browser

    if browser.chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; CI installs it in .ci/run)")
    _, out = stress_report
    page = browser.layout(str(out / "report.html"), width=1280)
    assert page["viewport"] == 1280
    assert page["top"][:2] == ["h1", "section#summary"], page["top"]
    assert page["pageScrollWidth"] <= page["viewport"], "the page scrolls sideways"
    assert {t["section"] for t in page["tables"]} >= {"summary", "comparison", "pareto", "not_ok"}
    for table in page["tables"]:
        assert table["boxScrollWidth"] <= table["boxClientWidth"], table
        assert table["tableWidth"] <= table["boxClientWidth"] and table["right"] <= page["viewport"], table
    assert len(page["images"]) == 6
    for image in page["images"]:
        assert image["naturalWidth"] > 0 and image["alt"] and image["right"] <= page["viewport"], image
    if os.environ.get("ANALYSIS_SCREENSHOT"):  # lets a human look at the page
        browser.screenshot(str(out / "report.html"), os.environ["ANALYSIS_SCREENSHOT"], width=1280)
