"""No verdict without evidence (DESIGN rule 16): a zero-width interval is not significance. The verdict comes
from an exact sign-flip permutation test (two-sided), checked here against a brute-force enumeration written
independently; with n pairs its smallest p-value is 2^-(n-1), so fewer than 6 pairs cannot decide at 0.05
and the summary says how many seeds a decision needs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from results import schema
from vocabulary.config import TrialConfig

ARCH = "mobilenet_v2"


def _brute_p(diffs) -> float:
    """Two-sided sign-flip p-value by plain enumeration in exact rational arithmetic (diffs as fractions of a
    common integer unit when they are), independent of analysis.significance."""
    count = total = 0
    for signs in itertools.product((1, -1), repeat=len(diffs)):
        total += 1
        if abs(sum(s * d for s, d in zip(signs, diffs))) >= abs(sum(diffs)) - 1e-12:
            count += 1
    return count / total


@pytest.mark.parametrize("n", range(1, 11))
def test_p_value_matches_brute_force_enumeration(n):
    from analysis.significance import EXACT, sign_flip_test

    rng = np.random.default_rng(n)
    for diffs in (rng.normal(0.01, 0.02, n), rng.integers(-3, 4, n) / 359.0, np.full(n, 1 / 359)):
        p, test = sign_flip_test(diffs)
        assert test == EXACT
        assert p == pytest.approx(_brute_p(list(diffs)), abs=1e-12)


def test_smallest_p_value_and_seeds_needed():
    from analysis.significance import min_p_value, seeds_needed, sign_flip_test

    assert seeds_needed(0.05) == 6 and seeds_needed(0.01) == 8
    for n in range(1, 9):
        assert sign_flip_test(np.full(n, 1 / 359))[0] == pytest.approx(min_p_value(n)) == 2.0 ** -(n - 1)
    assert sign_flip_test([0.01, 0.02, 0.03, 0.04, 0.05])[0] == pytest.approx(0.0625)  # 5 pairs cannot decide


def test_monte_carlo_beyond_the_exact_range_is_reproducible_and_close():
    from analysis.significance import EXACT_MAX, MONTE_CARLO, sign_flip_test

    n = EXACT_MAX + 1
    diffs = np.random.default_rng(7).normal(0.004, 0.02, n)
    p, test = sign_flip_test(diffs)
    assert test == MONTE_CARLO and sign_flip_test(diffs)[0] == p
    assert p == pytest.approx(_brute_p(list(diffs)), abs=0.01)


# --- the summary's verdict comes from the exact test ---------------------------------------------------------

def _row(tid, method, seed, test):
    cfg = TrialConfig.from_dict({"method": method, "sparsity": 0.5, "dense_epochs": 1, "sparsify_epochs": 2,
                                 "finetune_epochs": 1, "admm_interval": 1})
    row = {name: None for name in schema.TRIALS.names}
    row.update({k: v for k, v in cfg.hyperparameters().items() if k in schema.HYPERPARAMETERS})
    row.update(arch=ARCH, method=method, trial_id=tid, seed=seed, status="ok", device="cpu", target_sparsity=0.5,
               achieved_sparsity=0.5, final_val_acc=0.6, final_test_acc=test, dense_test_acc=0.8,
               control_key="", dense_epochs=1, sparsify_epochs=2, finetune_epochs=1, wall_time_s=1.0)
    for stage in ("pre_prune", "post_prune", "post_prune_stale_bn"):
        row[f"{stage}_test_acc"] = 0.5
    return row


def _summary(diffs):
    from analysis.summary import summary_table

    rows = []
    for seed, diff in enumerate(diffs):
        base = 0.60 + 0.01 * seed
        rows += [_row(f"a{seed}", "admm", seed, base + diff), _row(f"m{seed}", "magnitude", seed, base)]
    return summary_table(pd.DataFrame(rows)).iloc[0]


@pytest.mark.parametrize("diffs", [[1 / 359, 1 / 359], [1 / 359] * 3, [2 / 359, 1 / 359, 3 / 359]])
def test_equal_or_few_differences_are_not_a_win(diffs):
    """Measured before: two differences of 1/359 each gave a zero-width interval and "admm wins"."""
    from analysis.present import answers

    row = _summary(diffs)
    assert row["verdict"] != "wins" and row["leader"] == "admm"
    assert row["p_value"] == pytest.approx(_brute_p(diffs))
    assert "sign-flip" in row["test"]
    answer = answers(pd.DataFrame([row]))[0]
    assert "wins" not in answer.headline
    assert "needs at least 6 paired seeds to decide" in answer.headline + answer.detail + answer.caution


def test_six_positive_differences_with_spread_win():
    from analysis.present import answers

    diffs = [0.01, 0.03, 0.02, 0.04, 0.015, 0.025]
    row = _summary(diffs)
    assert row["verdict"] == "wins" and row["leader"] == "admm"
    assert row["p_value"] == pytest.approx(_brute_p(diffs)) == pytest.approx(1 / 32)
    assert row["ci95_lo"] > 0  # the t-interval still gives the size
    answer = answers(pd.DataFrame([row]))[0]
    assert "admm wins" in answer.headline and "sign-flip" in answer.detail


def test_six_differences_that_are_not_all_one_way_do_not_win():
    diffs = [0.01, 0.03, 0.02, 0.04, 0.015, -0.025]
    row = _summary(diffs)
    assert row["p_value"] == pytest.approx(_brute_p(diffs)) and row["p_value"] > 0.05
    assert row["verdict"] == "unresolved"


def test_the_report_names_the_test():
    from analysis.present import show_summary

    frame = show_summary(pd.DataFrame([_summary([0.01, 0.03, 0.02, 0.04, 0.015, 0.025])])).frame
    assert any("sign-flip" in str(c) for c in frame.columns)
    assert math.isclose(_summary([0.01] * 6)["p_value"], 1 / 32)


# --- several methods against one reference: one family, Holm-adjusted ---------------------------------------

def _holm_by_definition(p):
    """Holm (1979) as a rejection procedure, independent of analysis.significance: the smallest adjusted level
    at which each hypothesis is rejected, found by trying every level a step could need."""
    k = len(p)
    order = sorted(range(k), key=lambda i: p[i])
    candidates = sorted({min(1.0, (k - r) * p[i]) for r, i in enumerate(order)} | {1.0})

    def rejected(alpha):
        out = set()
        for r, i in enumerate(order):
            if p[i] > alpha / (k - r):
                break
            out.add(i)
        return out

    return [min(a for a in candidates if i in rejected(a)) for i in range(k)]


@pytest.mark.parametrize("p", [[0.01, 0.04, 0.03], [0.2, 0.01], [0.05], [0.001, 0.001, 0.04, 0.3],
                               [0.03125, 0.03125]])
def test_holm_matches_its_definition(p):
    from analysis.significance import holm

    assert holm(p) == pytest.approx(_holm_by_definition(p))
    assert holm([math.nan, *p])[0] != holm([math.nan, *p])[0]  # no test stays no test
    assert holm([math.nan, *p])[1:] == pytest.approx(holm(p))  # and is not counted in the family


def test_seeds_needed_grows_with_the_family():
    from analysis.significance import min_p_value, seeds_needed

    for family in range(1, 9):
        n = seeds_needed(family=family)
        assert min_p_value(n) <= 0.05 / family < min_p_value(n - 1)
    assert [seeds_needed(family=k) for k in (1, 2, 3, 4)] == [6, 7, 7, 8]


def _three_method_summary(diffs_admm, diffs_third):
    from analysis.summary import summary_table

    rows = []
    for seed, (a, t) in enumerate(zip(diffs_admm, diffs_third)):
        base = 0.60 + 0.01 * seed
        rows += [_row(f"a{seed}", "admm", seed, base + a), _row(f"m{seed}", "magnitude", seed, base),
                 dict(_row(f"r{seed}", "magnitude", seed, base + t), method="random", trial_id=f"r{seed}")]
    return summary_table(pd.DataFrame(rows)).set_index("method")


def test_two_comparisons_with_six_seeds_each_cannot_both_win():
    """Measured before: two methods each 6/6 seeds above the reference both 'won' at p = 1/32, so the chance
    that at least one such 'win' was noise was up to 2 x 0.05. Holm over the family holds it at 0.05."""
    from analysis.present import answers

    up = [0.01, 0.03, 0.02, 0.04, 0.015, 0.025]
    table = _three_method_summary(up, [d / 2 for d in up])
    for method in ("admm", "random"):
        row = table.loc[method]
        assert row["p_unadjusted"] == pytest.approx(1 / 32) and row["p_value"] == pytest.approx(1 / 16)
        assert row["family_size"] == 2 and row["seeds_needed"] == 7
        assert row["verdict"] == "too few seeds" and row["leader"] == method
    said = answers(table.reset_index())
    assert all("needs at least 7 paired seeds" in a.headline for a in said)
    assert all("Holm-adjusted over the 2 methods" in a.detail for a in said)
    # alone against the reference, the same six differences decide: the family of one is unchanged
    assert _summary(up)["verdict"] == "wins" and _summary(up)["p_value"] == pytest.approx(1 / 32)
