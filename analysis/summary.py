"""The answer a report opens with: per architecture and comparison sparsity, which method wins and by how
much (final TEST accuracy, paired by seed), with the 95% interval, the number of seeds, and a one-line
caution where the evidence is thin. Pure: DataFrames in, DataFrame out (words in the ``caution`` column).

Configurations are chosen by the shared rule (``results.selection``, DESIGN rule 15: complete ones only), and
a verdict comes from the exact sign-flip test (``analysis.significance``, DESIGN rule 16), never from a
t-interval that may have zero width: "wins" needs p <= ALPHA, which needs at least 6 pairs.

Every method is compared with ONE reference method (sweep.json's "reference", default
``tables.DEFAULT_REFERENCE``), each in a row of its own: method minus reference, as in
:func:`analysis.tables.paired_comparison`; a third method adds rows and never changes another pair's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from results import selection
from vocabulary.registry import SAMPLER_STARTUP

from . import significance
from . import tables

# Configurations Optuna's samplers draw at random before they model the space (their defaults, Optuna 4):
# TPESampler(n_startup_trials=10), GPSampler(n_startup_trials=10), NSGAIISampler(population_size=50: the first
# generation is random). A study with fewer configurations than this was a random search.
SAMPLER_NAMES = {"tpe": "TPE", "gp": "GP", "nsga2": "NSGA-II"}
CAUTION_SEPARATOR = "; "  # between the cautions of one row (the caution column is one line of words)
DEFAULT_SAMPLER = "tpe"  # `python -m sweep run`'s default, assumed when an experiment has no sweep.json


@dataclass(frozen=True)
class Search:
    """How the configurations were searched: the sampler (``sweep.json``'s ``sampler``), the configurations
    it draws at random before modelling (``startup``), and whether the space was a grid (nothing searched)."""

    sampler: str = DEFAULT_SAMPLER
    startup: int = SAMPLER_STARTUP[DEFAULT_SAMPLER]
    grid: bool = False
    known: bool = False  # False: no sweep.json said so; the sweep's default sampler is assumed

    @property
    def name(self) -> str:
        return SAMPLER_NAMES.get(self.sampler, self.sampler)


def search_info(options: list[dict]) -> Search:
    """The search of the experiments whose ``sweep.json`` options are ``options`` (empty dicts where an
    experiment has none). ``sampler_startup_trials`` or ``grid`` in the options win over the defaults; with
    several experiments the largest startup count is used (the cautious reading)."""
    known = [o for o in options if o]
    if not known:
        return Search()
    samplers = [str(o.get("sampler") or DEFAULT_SAMPLER) for o in known]
    startups = [int(o.get("sampler_startup_trials") or SAMPLER_STARTUP.get(s, 0)) for o, s in zip(known, samplers)]
    i = int(np.argmax(startups))
    return Search(samplers[i], startups[i], grid=all(bool(o.get("grid")) for o in known), known=True)


VERDICTS = ("wins", "unresolved", "too few seeds", "one seed", "tie", "no pairs", "one method", "none complete")


def _verdict(row: dict) -> tuple[str, str]:
    """(leading method or "", verdict) from the exact sign-flip test (row ``p_value``): wins (p <= ALPHA),
    unresolved (p > ALPHA), too few seeds (fewer pairs than the row's ``seeds_needed``: no p-value they can
    give reaches ALPHA, whatever the differences), one seed, tie (equal means). Never from the t-interval.
    ``p_value`` and ``seeds_needed`` are the family's (Holm over the methods compared at this level)."""
    diff = row["mean_diff"]
    if row["n_pairs"] == 0 or math.isnan(diff):
        return "", "no pairs"
    if diff == 0:
        return "", "tie"
    leader = row["method"] if diff > 0 else row[tables.REFERENCE_KEY]
    if row["n_pairs"] < 2:
        return leader, "one seed"
    if row["n_pairs"] < row["seeds_needed"]:  # the pair's family's (tables: Holm over its comparisons)
        return leader, "too few seeds"
    return leader, "wins" if row["p_value"] <= significance.ALPHA else "unresolved"


def _seed_caution(n_pairs: int, needed: int, family: int = 1) -> str:
    if n_pairs == 0:
        return "no seed ran both methods, so nothing is paired"
    decide = ""
    if n_pairs < needed:
        bar = (f"{significance.ALPHA}" if family <= 1 else
               f"{significance.ALPHA}/{family}, Holm over the {family} methods compared with the reference here")
        decide = (f"needs at least {needed} paired seeds to decide (with {n_pairs} the exact sign-flip test's "
                  f"smallest p-value is {significance.min_p_value(n_pairs):.3g} > {bar})")
    if n_pairs == 1:
        return "one seed: no interval, and the difference may be seed noise" + CAUTION_SEPARATOR + decide
    if n_pairs == 2:
        return "two seeds: the interval rests on one degree of freedom" + CAUTION_SEPARATOR + decide
    return decide


def _pairs_caution(row: dict) -> str:
    """Words when the chosen configurations did not complete the same seeds (merged experiments)."""
    lost = row.get("pairs_lost") or ""
    return (f"pairs lost: seed{'s' if ',' in lost else ''} {lost}: the chosen configurations did not complete "
            "the same seeds") if lost else ""


def _search_caution(configs: dict[str, int], search: Search) -> str:
    """Words for studies with fewer configurations than the sampler draws at random before it models."""
    if search.grid or not configs:
        return ""
    few = min(configs.values())
    if few >= search.startup:
        return ""
    who = search.name if search.known else f"{search.name} (the sweep's default sampler)"
    counts = ", ".join(f"{m} {n}" for m, n in sorted(configs.items()))
    return (f"configurations per study ({counts}) below the {search.startup} that {who} draws at random before "
            "it models the space: essentially random search")


def _not_ok_caution(accounts: pd.DataFrame) -> str:
    bad = int(accounts["trials"].sum() - accounts["ok"].sum())
    if bad == 0:
        return ""
    return f"{bad} of {int(accounts['trials'].sum())} trials did not finish ok (see Trials not scored)"


# ADMM has converged when W ends (nearly) in the sparse set: the hard projection then removes little. This is
# the share of the dense model's squared distance to the set still left right before the projection above
# which the summary says ADMM did not converge. Measured (tests/reference_compare.py, MobileNetV3-Small,
# 4 sparsify epochs, 3 seeds): SGD lr 0.05 leaves 5% at rho 1 and 70% at rho 0.01; Adam 1e-3 leaves 45% at
# rho 1 and 53% at rho 0.01.
ADMM_UNCONVERGED_SHARE = 0.25


def _admm_caution(trials: pd.DataFrame, row: dict, ids: set[str]) -> str:
    """Words when ADMM did not converge in the configuration chosen at ``row``'s level: in most of its seeds
    the weights right before the hard projection were still more than ADMM_UNCONVERGED_SHARE of the dense
    model's squared distance from the sparse set (``pre_prune_distance / dense_distance``). Then the
    projection did much of the pruning, and the row compares "ADMM-regularised training, then magnitude
    projection" with the baseline rather than converged ADMM. ``ids``: the trials the row judges."""
    if "pre_prune_distance" not in trials.columns or "dense_distance" not in trials.columns:
        return ""
    mine = tables.ok_trials(trials)
    mine = mine[mine["method"] == tables.ADMM]
    mine = mine[mine["trial_id"].isin(ids) & (mine["arch"] == row["arch"]) & (mine["dense_distance"] > 0)]
    share = (mine["pre_prune_distance"] / mine["dense_distance"]).dropna()
    if share.empty:
        return ""
    stuck = share > ADMM_UNCONVERGED_SHARE
    if 2 * int(stuck.sum()) <= len(share):
        return ""
    return (f"ADMM did not converge: before the hard projection its weights were still {100 * share.mean():.0f}% "
            f"as far from the sparse set as the dense model's (squared distance; over {len(share)} "
            f"seed{'' if len(share) == 1 else 's'}), so the "
            "projection did much of the pruning (see ADMM convergence)")


def _control(trials: pd.DataFrame, row: dict, ids: set[str]) -> tuple[float, float]:
    """The dense control's test accuracy (mean, sample std) over the paired seeds of ``row``, for the
    trials the row judges (``ids``); NaN when missing or when they use more than one dense recipe."""
    ok = tables.with_control(tables.ok_trials(trials))
    chosen = ok[ok["trial_id"].isin(ids) & (ok["arch"] == row["arch"])
                & ok["seed"].astype(str).isin(str(row["seeds"]).split(","))]
    if chosen.empty or tables.control_group(chosen).nunique() != 1:
        return math.nan, math.nan
    values = chosen.drop_duplicates(["seed", "control_key"])["control_test_acc"].dropna()
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def summary_columns(methods) -> list[str]:
    """The summary table's columns when ``methods`` have rows (each row fills those of its two methods)."""
    methods = tables.method_order(methods)
    return ["arch", "sparsity_level", "stage", "judged_on", "method", tables.REFERENCE_KEY,
            *(f"achieved_sparsity_{m}" for m in methods),
            *(f"final_test_acc_{m}_{k}" for m in methods for k in ("mean", "std")),
            "control_test_acc_mean", "control_test_acc_std", "mean_diff", "ci95_lo", "ci95_hi", "p_value", "test",
            "t_p_value", "seeds_needed", "p_unadjusted", "family_size", "n_pairs", "seeds", "pairs_lost", "leader",
            "verdict",
            *(f"configurations_{m}" for m in methods), "methods", "caution"]


def _unpaired_row(trials: pd.DataFrame, group: pd.DataFrame, method: str, scope: tuple[str, ...],
                  reference: str) -> dict:
    """The row of a pair (``scope``: the method and the reference, or the reference alone where no other
    method ran) at ``group``'s (arch, level) that has no paired row: the method(s) of the pair with a chosen
    configuration (verdict "one method"; "none complete" when neither has), with their test accuracy and
    the dense control's, and no difference (nothing to compare)."""
    arch, level = group["arch"].iloc[0], group["sparsity_level"].iloc[0]
    table = tables.comparison_table(trials[trials["arch"] == arch], level)
    table = table[(table["row"] == "control") | table["method"].isin(scope)]
    chosen = tables.method_order(table.loc[table["row"] == "pruned", "method"])
    row = {"arch": arch, "sparsity_level": level, "method": method, tables.REFERENCE_KEY: reference, "n_pairs": 0,
           "seeds": "", "leader": "", "verdict": "one method" if chosen else "none complete",
           "methods": ",".join(chosen or tables.method_order(group.loc[group["method"].isin(scope), "method"])),
           "caution": "" if chosen else "no configuration completed every seed at this level (see "
                                        "Configurations not chosen)"}
    for r in table.to_dict("records"):
        key = "control" if r["row"] == "control" else f"final_test_acc_{r['method']}"
        if key == "control" and (table["row"] == "control").sum() != 1:
            continue  # several dense recipes: no single control to show
        prefix = "control_test_acc" if key == "control" else key
        row.update({f"{prefix}_mean": r["final_test_acc_mean"], f"{prefix}_std": r["final_test_acc_std"]})
        if key != "control":
            row[f"achieved_sparsity_{r['method']}"] = r["achieved_sparsity_mean"]
    return row


def _unpaired_rows(trials: pd.DataFrame, paired: list[dict], reference: str) -> list[dict]:
    """A row for each pair (method, reference) at each (arch, level) where the method has ok trials but the
    pair has no paired row (``paired``), and one for an (arch, level) where only the reference ran
    (:func:`_unpaired_row`)."""
    ok = tables.annotate(trials)
    ok = ok[ok["status"] == "ok"]
    have = {(r["arch"], r["sparsity_level"], r["method"]) for r in paired}
    rows = []
    for (arch, level), group in ok.groupby(["arch", "sparsity_level"], sort=True):
        others = tables.compared_methods(group["method"].unique(), reference)
        scopes = [(m, (m, reference)) for m in others if (arch, level, m) not in have] if others \
            else [("", (reference,))]
        rows += [_unpaired_row(trials, group, method, scope, reference) for method, scope in scopes]
    return rows


def _ids(text: str) -> set[str]:
    return {i for i in str(text or "").split(",") if i}


def _pair(row: dict) -> tuple[str, str]:
    """The two methods a paired row compares: (method, reference)."""
    return row["method"], row[tables.REFERENCE_KEY]


def _confirmation_caution(trials: pd.DataFrame, row: dict) -> str:
    """Words when a chosen configuration of the row's pair did not complete every confirmation seed in its
    confirmation (``CONFIRM_SEEDS``, from sweep.json; results.selection.config_state judges it as the tuning
    does)."""
    rows = tables.annotate(trials[trials["arch"] == row["arch"]])
    rows = rows[tables.trial_stage(rows) == tables.CONFIRMATION]
    best = tables.best_configs(trials[trials["arch"] == row["arch"]], row["sparsity_level"])
    best = best[best["method"].isin(_pair(row))] if len(best) else best
    words = []
    for b in best.to_dict("records"):
        mine = rows[(rows["method"] == b["method"]) & (rows["config"] == b["config"])]
        expected = {int(x) for x in ",".join(mine.reindex(columns=[tables.CONFIRM_SEEDS])[tables.CONFIRM_SEEDS].dropna()
                                             .astype(str)).split(",") if x}
        pairs = [(int(seed), status) for seed, status in zip(mine["seed"], mine["status"])]
        state = selection.config_state(pairs, expected)
        if state != selection.COMPLETE:
            ok = sorted({seed for seed, status in pairs if status == "ok"})
            words.append(f"{b['method']}'s confirmation is {state} ({len(ok)} of "
                         f"{len(expected | {seed for seed, _ in pairs})} seeds ok)")
    return ("confirmation not finished: " + ", ".join(words)) if words else ""


def _unconfirmed_caution(trials: pd.DataFrame, row: dict, confirmed: set) -> str:
    """Words for a tuning row without a confirmation row although confirmation trials ran at its level: they
    are not of both configurations chosen now (a longer search changed the choice, or one method's
    confirmation never finished ok). ``confirmed``: the (arch, level, method) of the confirmation rows."""
    if (row["arch"], row["sparsity_level"], row["method"]) in confirmed:
        return ""
    mine = trials[(trials["arch"] == row["arch"]) & trials["method"].isin(_pair(row))]
    rows = tables.annotate(tables.stage_trials(mine, tables.CONFIRMATION))
    if not ((rows["sparsity_level"] - row["sparsity_level"]).abs() <= tables.SPARSITY_TOL).any():
        return ""
    return ("confirmation trials ran at this level, but not ok on both configurations chosen now: run "
            "python -m sweep confirm again")


def _judged_on(stage: str, seeds: str, confirmed: bool) -> str:
    """Which seeds a summary row judges on (words for the answer and the table)."""
    if stage == tables.CONFIRMATION:
        return f"confirmation seeds {seeds.replace(',', ', ')}, not used to choose"
    return "the tuning seeds it was chosen on (optimistic)" if confirmed else ""


def _cautions(trials: pd.DataFrame, row: dict, stage: str, search: Search, confirmed: set,
              accounts: tuple[pd.DataFrame, pd.DataFrame]) -> str:
    """The row's caution: its cautions (each "" when it does not apply) in one line. ``accounts``:
    tables.accounting of the tuning rows and of the stage's rows (the pair's methods are taken from them)."""
    pair, ids = _pair(row), _ids(row["trial_ids"])
    tuning, judged = (a[(a["arch"] == row["arch"]) & a["method"].isin(pair)] for a in accounts)
    configs = dict(zip(tuning["method"], tuning["configurations"].astype(int)))
    family = row.get("family_size")
    family = 1 if family is None or (isinstance(family, float) and math.isnan(family)) else int(family)
    cautions = [_seed_caution(row["n_pairs"], int(row["seeds_needed"]), family), _pairs_caution(row),
                _search_caution(configs, search),
                _not_ok_caution(judged), _admm_caution(trials, row, ids),
                _confirmation_caution(trials, row) if stage == tables.CONFIRMATION
                else _unconfirmed_caution(trials, row, confirmed)]
    return CAUTION_SEPARATOR.join(c for c in cautions if c)


def _stage_rows(trials: pd.DataFrame, stage: str, search: Search, confirmed: set, reference: str) -> list[dict]:
    """The summary rows of one stage (:func:`summary_table`), one per pair (method, ``reference``) at each
    (arch, level); ``confirmed``: the (arch, level, method) that have a confirmation row."""
    accounts = (tables.accounting(tables.stage_trials(trials)), tables.accounting(tables.stage_trials(trials, stage)))
    rows = []
    for row in tables.paired_comparison(trials, reference, stage=stage).to_dict("records"):
        mine = accounts[0][accounts[0]["arch"] == row["arch"]]
        mine = dict(zip(mine["method"], mine["configurations"].astype(int)))
        leader, verdict = _verdict(row)
        mean, std = _control(trials, row, _ids(row["trial_ids"]))
        rows.append({**row, "control_test_acc_mean": mean, "control_test_acc_std": std, "leader": leader,
                     "verdict": verdict, **{f"configurations_{m}": mine.get(m, 0) for m in _pair(row)},
                     "methods": ",".join(_pair(row)),
                     "caution": _cautions(trials, row, stage, search, confirmed, accounts),
                     "judged_on": _judged_on(stage, row["seeds"],
                                             (row["arch"], row["sparsity_level"], row["method"]) in confirmed)})
    return rows


def summary_table(trials: pd.DataFrame, search: Search = Search(),
                  reference: str = tables.DEFAULT_REFERENCE) -> pd.DataFrame:
    """One row per (arch, comparison level), pair and stage: every method other than ``reference`` is
    compared with it, each pair on its own (``method``, ``reference``; in registry order). A row holds both
    methods' final test accuracy over the paired seeds, the dense control's, the paired difference (method
    minus reference, fractions) with its 95% interval and p-value, the leader and verdict (:func:`_verdict`),
    configurations per study, and a one-line caution where the evidence is thin (few seeds, a study smaller
    than the sampler's random start, trials that did not finish, a confirmation not finished) or the ADMM of
    the row did not converge (:func:`_admm_caution`). Rows where only one method of a pair finished say so.
    Empty frame without ok trials.

    Stages: the configurations are always chosen on the tuning rows. Where both chosen configurations of a
    pair ran on confirmation seeds (python -m sweep confirm), the ``confirmation`` row (judged on those seeds
    only: no optimism from choosing the best of many on the same seeds) comes first and is the answer; the
    ``tuning`` row (judged on the seeds it was chosen on) stays beside it. ``judged_on`` says which seeds."""
    confirmation = _stage_rows(trials, tables.CONFIRMATION, search, set(), reference) \
        if (tables.trial_stage(trials) == tables.CONFIRMATION).any() else []
    confirmed = {(r["arch"], r["sparsity_level"], r["method"]) for r in confirmation}
    tuning = _stage_rows(trials, tables.TUNING, search, confirmed, reference)
    methods = tables.method_order([*tables.methods_of(trials), reference])
    table = pd.DataFrame(confirmation + tuning + _unpaired_rows(trials, tuning, reference),
                         columns=summary_columns(methods))
    table["stage"] = tables.trial_stage(table)  # the rows where one method finished are the tuning stage's
    order = {"_m": table["method"].map({m: i for i, m in enumerate(methods)}).fillna(-1),
             "_o": table["stage"].map({tables.CONFIRMATION: 0}).fillna(1)}
    return (table.assign(**order).sort_values(["arch", "sparsity_level", "_m", "_o"], kind="stable")
            .drop(columns=list(order)).reset_index(drop=True))
