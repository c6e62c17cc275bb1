"""Every method is compared with ONE reference method (issue 17), each with its own paired comparison (the exact
sign-flip test of analysis.significance): a third method reaches the report's answer, the summary and paired
tables and every rendering; the reference is sweep.json's "reference" (default magnitude for experiments that
predate the key), `python -m analysis report --reference METHOD` overrides it, and a reference without rows is
refused with exit 2 before anything is written. A third method never changes the row of an existing pair.

The third method is one analysis has never heard of (not in vocabulary.config.METHODS): its rows are
schema-valid rows (a magnitude configuration's hyperparameter columns, tests/result_rows.py) written through
the real writer (results.schema.write_trial_table) under its own method name, as a newly registered method's
trials would be.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from result_rows import ARCH, trial_rows
from results import schema

THIRD = "random"
# 7 pairs: the fewest an exact sign-flip test can decide on at 0.05 when two methods are compared with the
# reference (Holm over the family: the first is held to 0.025; 6 pairs suffice for one comparison). The 7th
# seed's differences are the first six's means, so the means are those of the six.
SEEDS = range(7)
GAINS = (0.05, 0.06, 0.04, 0.05, 0.07, 0.054, 0.054)  # admm above magnitude, per seed
DROPS = (0.10, 0.12, 0.09, 0.11, 0.08, 0.13, 0.105)  # random below magnitude, per seed


def _test_acc(method: str, seed: int) -> float:
    base = 0.70 + 0.01 * seed
    return {"admm": base + GAINS[seed], "magnitude": base, THIRD: base - DROPS[seed]}[method]


def _tables(method: str, seed: int) -> dict[str, list[dict]]:
    """The four tables' rows of one trial; the third method records a magnitude configuration's columns."""
    rows = trial_rows(f"{method}-{seed}", "magnitude" if method == THIRD else method, seed, 0.5, 1e-3)
    rows["trials"][0]["final_test_acc"] = _test_acc(method, seed)
    return rows


def _frame(methods=("admm", "magnitude", THIRD)) -> pd.DataFrame:
    """The trials table as analysis.load gives it (method and arch from the partition)."""
    return pd.DataFrame([dict(_tables(m, s)["trials"][0], arch=ARCH, method=m) for m in methods for s in SEEDS])


def _write(root, methods=("admm", "magnitude", THIRD), options: dict | None = None):
    for method in methods:
        for seed in SEEDS:
            for name, rows in _tables(method, seed).items():
                schema.write_trial_table(str(root), name, rows, arch=ARCH, method=method,
                                         trial_id=f"{method}-{seed}")
    if options is not None:
        (root / "sweep.json").write_text(json.dumps(options))
    return root


def _diff(method: str, reference: str) -> float:
    return float(np.mean([_test_acc(method, s) - _test_acc(reference, s) for s in SEEDS]))


# --- the tables ------------------------------------------------------------------------------------------------

def test_a_third_method_reaches_the_answer_and_the_tables():
    from analysis.present import answers, show_paired, show_summary
    from analysis.summary import summary_table
    from analysis.tables import paired_comparison

    table = summary_table(_frame())
    assert table["method"].tolist() == ["admm", THIRD] and set(table["reference"]) == {"magnitude"}
    row = table.set_index("method").loc[THIRD]
    assert row["mean_diff"] == pytest.approx(-np.mean(DROPS)) == pytest.approx(_diff(THIRD, "magnitude"))
    assert row["leader"] == "magnitude" and row["verdict"] == "wins" and row["n_pairs"] == len(SEEDS)
    # Holm over the family of two comparisons: 2 x 2^-6 (each pair's own p is 2^-6, kept beside it)
    assert row["p_value"] == pytest.approx(1 / 32) and row["test"].startswith("exact sign-flip")
    assert row["p_unadjusted"] == pytest.approx(1 / 64) and row["family_size"] == 2
    assert row[f"final_test_acc_{THIRD}_mean"] - row["final_test_acc_magnitude_mean"] == pytest.approx(row["mean_diff"])
    said = [a.headline for a in answers(table)]
    assert said == [f"{ARCH} at 50.0% sparsity, admm vs magnitude: admm wins by 5.4 pp",
                    f"{ARCH} at 50.0% sparsity, {THIRD} vs magnitude: magnitude wins by 10.5 pp"]
    shown = show_summary(table).frame
    assert shown["Method"].tolist() == ["admm", THIRD] and shown["Verdict"].tolist() == ["admm wins", "magnitude wins"]
    paired = paired_comparison(_frame())
    assert paired["method"].tolist() == ["admm", THIRD] and paired["comparison"].tolist() == [
        "admm - magnitude", f"{THIRD} - magnitude"]
    assert THIRD in show_paired(paired).frame.to_string()


def test_a_third_method_never_changes_the_row_of_an_existing_pair(monkeypatch):
    """The admm row describes the same pair with the same differences with or without a third method's rows,
    and whatever the registry's order (a method registered first used to become one side of THE comparison).
    What a third method may change is the family its p-value is adjusted over (Holm): the pair's own p stays."""
    from analysis.summary import summary_table
    from vocabulary import config

    cols = ["mean_diff", "ci95_lo", "ci95_hi", "p_unadjusted", "t_p_value", "n_pairs", "seeds", "leader", "verdict",
            "final_test_acc_admm_mean", "final_test_acc_magnitude_mean", "control_test_acc_mean", "caution"]
    two = summary_table(_frame(("admm", "magnitude")))
    assert two["method"].tolist() == ["admm"]
    three = summary_table(_frame())
    pd.testing.assert_series_equal(three.loc[three["method"] == "admm", cols].iloc[0], two[cols].iloc[0],
                                   check_names=False)
    # alone, the pair's p is its own; beside a second comparison it is Holm-adjusted over the two
    assert two["p_value"].iloc[0] == two["p_unadjusted"].iloc[0] == pytest.approx(2.0 ** -6)
    assert three.loc[three["method"] == "admm", "p_value"].iloc[0] == pytest.approx(2 * 2.0 ** -6)
    monkeypatch.setattr(config, "METHODS", (THIRD, *config.METHODS))  # a new method registered first
    first = summary_table(_frame())
    assert set(zip(first["method"], first["reference"])) == {("admm", "magnitude"), (THIRD, "magnitude")}
    pd.testing.assert_series_equal(first.loc[first["method"] == "admm", cols + ["p_value"]].iloc[0],
                                   three.loc[three["method"] == "admm", cols + ["p_value"]].iloc[0], check_names=False)


def test_changing_the_reference_changes_the_pairs():
    from analysis.summary import summary_table
    from analysis.tables import paired_comparison

    table = summary_table(_frame(), reference=THIRD)
    assert table["method"].tolist() == ["admm", "magnitude"] and set(table["reference"]) == {THIRD}
    for method, row in table.set_index("method").iterrows():
        assert row["mean_diff"] == pytest.approx(_diff(method, THIRD))
        assert row["leader"] == method and row["verdict"] == "wins" and row["methods"] == f"{method},{THIRD}"
    by_admm = paired_comparison(_frame(), "admm")
    assert by_admm["method"].tolist() == ["magnitude", THIRD]
    assert by_admm["mean_diff"].tolist() == pytest.approx([_diff("magnitude", "admm"), _diff(THIRD, "admm")])


def test_the_admm_figure_is_skipped_cleanly_without_admm(tmp_path):
    from analysis.load import load_tables
    from analysis.report import build_report, render_html, render_markdown, sections

    report = build_report(load_tables(str(_write(tmp_path, ("magnitude", THIRD)))), 0.5)
    assert "admm" not in report.figures and "admm" not in sections(report)
    assert {"sparsity", "curves", "weights"} <= set(report.figures)
    assert [a.headline for a in report.answers] == [f"{ARCH} at 50.0% sparsity: magnitude wins by 10.5 pp"]
    assert "ADMM convergence" not in render_markdown(report) and "ADMM convergence" not in render_html(report)


# --- the command -----------------------------------------------------------------------------------------------

def _summary_csv(out) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / "summary.csv")


def test_the_report_compares_with_sweep_jsons_reference_default_magnitude(tmp_path):
    """Older sweep.json without "reference": magnitude; with it, that method; --reference overrides both. The
    third method is in the answer, the summary table and every rendering (HTML, Markdown, LaTeX, CSV)."""
    from analysis.__main__ import main

    exp = _write(tmp_path / "exp", options={"seeds": len(SEEDS), "sampler": "tpe"})
    out = tmp_path / "default"
    assert main(["report", str(exp), "--out", str(out), "--no-importance"]) == 0
    table = _summary_csv(out)
    assert table["method"].tolist() == ["admm", THIRD] and set(table["reference"]) == {"magnitude"}
    assert _summary_csv(out)["mean_diff"].tolist() == pytest.approx([_diff("admm", "magnitude"),
                                                                     _diff(THIRD, "magnitude")])
    headline = f"{THIRD} vs magnitude: magnitude wins by 10.5 pp"
    assert headline in (out / "report.md").read_text() and headline in (out / "report.html").read_text()
    assert headline in (out / "tables" / "summary.tex").read_text()
    assert f"{THIRD} - magnitude" in (out / "tables" / "paired.csv").read_text()

    (exp / "sweep.json").write_text(json.dumps({"seeds": len(SEEDS), "sampler": "tpe", "reference": THIRD}))
    out = tmp_path / "named"
    assert main(["report", str(exp), "--out", str(out), "--no-importance"]) == 0
    assert set(zip(_summary_csv(out)["method"], _summary_csv(out)["reference"])) == {("admm", THIRD),
                                                                                  ("magnitude", THIRD)}
    out = tmp_path / "override"
    assert main(["report", str(exp), "--out", str(out), "--no-importance", "--reference", "admm"]) == 0
    assert _summary_csv(out)["method"].tolist() == ["magnitude", THIRD]
    assert _summary_csv(out)["mean_diff"].tolist() == pytest.approx([_diff("magnitude", "admm"),
                                                                     _diff(THIRD, "admm")])


def test_a_reference_without_rows_is_refused_before_anything_is_written(tmp_path, capsys):
    from analysis.__main__ import main

    exp = _write(tmp_path / "exp", options={"seeds": len(SEEDS)})
    out = tmp_path / "out"
    assert main(["report", str(exp), "--out", str(out), "--reference", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "--reference" in err and "nosuch" in err and f"admm, magnitude, {THIRD}" in err
    assert not out.exists()


def test_merged_experiments_naming_different_references_are_refused(tmp_path, capsys):
    from analysis.__main__ import main

    one = _write(tmp_path / "one", options={"seeds": len(SEEDS), "reference": THIRD})
    two = _write(tmp_path / "two", ("admm", "magnitude"), options={"seeds": len(SEEDS)})
    out = tmp_path / "out"
    assert main(["report", str(one), str(two), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--reference" in err and THIRD in err and "magnitude" in err
    assert not out.exists()


def test_a_confirmed_pair_beside_an_unconfirmed_third_method():
    """python -m sweep confirm ran admm's and magnitude's chosen configurations: their confirmation row is the
    answer; the third method's pair keeps its tuning row, which says its confirmation is missing; a level only
    the reference reached is judged on the tuning seeds (not 'nan')."""
    from analysis.present import show_summary
    from analysis.summary import summary_table

    confirmation = [dict(_tables(m, s)["trials"][0], trial_id=f"c-{m}-{s}", seed=s + len(SEEDS), stage="confirmation",
                         arch=ARCH, method=m) for m in ("admm", "magnitude") for s in (0, 1)]
    alone = [dict(trial_rows(f"m8-{s}", "magnitude", s, 0.8, 1e-3)["trials"][0], arch=ARCH, method="magnitude")
             for s in SEEDS]
    table = summary_table(pd.concat([_frame(), pd.DataFrame(confirmation + alone)], ignore_index=True))
    assert list(zip(table["sparsity_level"], table["method"], table["stage"])) == [
        (0.5, "admm", "confirmation"), (0.5, "admm", "tuning"), (0.5, THIRD, "tuning"), (0.8, "", "tuning")]
    assert "run python -m sweep confirm again" in table["caution"].iloc[2]
    assert "confirm again" not in table["caution"].iloc[1]
    shown = show_summary(table).frame
    assert shown["Judged on"].tolist()[2:] == ["the tuning seeds", "the tuning seeds"]
