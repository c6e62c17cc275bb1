"""Pure table functions: DataFrame in, DataFrame out. No I/O.

Selection uses the validation split only and reporting uses the test split only (DESIGN rule 5); every
table says which split each number comes from in its column names (``*_val_*`` / ``*_test_*``).
Trials that did not finish ok (diverged, failed, stopped) are never scored (not as zero, not dropped
silently): they are counted in ``accounting`` and listed by ``diverged_trials`` (DESIGN rule 8).

Three identities are defined once here and used by every table and figure:

- :func:`config_key`: two rows are seeds of one configuration only if ``arch``, ``method``, EVERY
  hyperparameter column of the results schema (``schema.HYPERPARAMETERS``, generated from TrialConfig) and
  the device type and precision (``results.selection.IDENTITY_COLUMNS``, from the ``device`` column) are
  equal, NaN-safe.
- :func:`comparison_level`: the sparsity a trial is compared at (DESIGN rule 13): its nominal ``sparsity``
  when the set's exact ``target_sparsity`` is within ``LEVEL_TOL`` of it, else the exact target rounded to 3
  decimals, so an N:M 2:4 trial that leaves depthwise layers dense sits at e.g. 0.47, never beside 0.5.
- :func:`control_accuracies`: the dense CONTROL (DESIGN rule 11), the dense checkpoint trained as many
  epochs more as the pruned models, per (arch, seed, control_key), taken from any ok row that carries it.
  ``dense_*_acc`` is the dense START (end of the dense phase), never shown as the fair dense reference.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers

import numpy as np
import pandas as pd
from scipy import stats

from results import schema, selection
from vocabulary import config as vocabulary_config
from vocabulary.config import dense_fields
from vocabulary.registry import DEFAULT_REFERENCE

from . import significance

GROUP = ("arch", "method")
# The columns that identify one configuration: generated from TrialConfig through the schema, never by hand.
HYPERPARAMETERS = tuple(schema.HYPERPARAMETERS)
IDENTITY = selection.IDENTITY_COLUMNS  # device type and precision: part of a configuration (DESIGN rule 15)
CONFIG_COLUMNS = (*GROUP, *HYPERPARAMETERS, *IDENTITY)
# Optional trials column: the sweep's --seeds for the row's experiment (sweep.json), added by the report;
# without it a configuration's seeds are those its rows ran (results.selection.config_state)
SWEEP_SEEDS = "sweep_seeds"
# Optional trials column: the confirmation seeds of the row's experiment (sweep.json "confirm": {"seeds"}), as
# "5,6,7": the seeds a chosen configuration's confirmation must have (python -m sweep confirm)
CONFIRM_SEEDS = "confirm_seeds"
# A row's stage (results.schema.TRIAL_STAGES): every table chooses and reports on the TUNING rows (selection
# on seeds the confirmation never touches); only paired_comparison(stage=CONFIRMATION) and the summary read
# the confirmation rows, of the configurations the tuning chose
TUNING, CONFIRMATION = schema.TUNING, schema.CONFIRMATION
# The recipe of the dense control, without the seed: the dense recipe plus the epochs trained beyond it.
CONTROL_COLUMNS = ("arch", *(c for c in dense_fields() if c in HYPERPARAMETERS), "sparsify_epochs",
                   "finetune_epochs")
# Accuracy stages of a pruned trial (the dense control has its own columns), from the schema; in the tables
# "dense" is shown as dense_start (the end of the dense phase), the others after it.
STAGES = tuple(s for s in schema.ACC_STAGES if s != "control")
PRUNE_STAGES = tuple(s for s in STAGES if s != "dense")
STATUSES = schema.STATUSES  # ok, diverged, failed, stopped: the one definition the sweep writes
LEVEL_TOL = 0.005  # a set within this of its nominal sparsity is compared at the nominal level
SPARSITY_TOL = 1e-6  # levels are typed fractions; compare with a tolerance, not ==
CONTROL_MISSING = ("dense control missing (dense_control off, or results without it): no same-budget dense "
                   "reference; the dense start is not one")
# Every other method is compared with ONE reference method, each in a pair of its own (paired_comparison):
# sweep.json's "reference" (python -m sweep run --reference), else the default (experiments that predate the
# key): vocabulary.registry.DEFAULT_REFERENCE. The only method name analysis knows apart from ADMM's own
# figure and caution.
REFERENCE_KEY = "reference"
ADMM = "admm"  # the method the ADMM convergence figure (plots.admm_data) and caution (summary) are about


def method_order(methods) -> list[str]:
    """``methods`` (names, duplicates dropped) in registry order (vocabulary.config.METHODS), then any name the
    registry does not hold (a method of older results) by name: the one order of rows and colours."""
    registry = tuple(vocabulary_config.METHODS)
    return sorted({str(m) for m in methods},
                  key=lambda m: (registry.index(m) if m in registry else len(registry), m))


def compared_methods(methods, reference: str) -> list[str]:
    """The methods of ``methods`` compared with ``reference``: every other one, in :func:`method_order`."""
    return [m for m in method_order(methods) if m != reference]


def methods_of(trials: pd.DataFrame) -> list[str]:
    """The methods that have rows in ``trials``, in :func:`method_order`."""
    return method_order(trials.reindex(columns=["method"])["method"].dropna().astype(str).unique())


def reference_method(options: dict) -> str:
    """The method a sweep's ``sweep.json`` options name as the reference (REFERENCE_KEY), else
    DEFAULT_REFERENCE."""
    named = options.get(REFERENCE_KEY)
    return named if isinstance(named, str) and named else DEFAULT_REFERENCE


def _canon(value) -> str:
    """One canonical text per value, so 1, 1.0 and np.int64(1) are equal and every kind of null is one."""
    if value is None or (not isinstance(value, (list, tuple, dict)) and pd.isna(value)):
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return f"b:{bool(value)}"
    if isinstance(value, numbers.Number):
        return f"n:{float(value)!r}"
    return f"s:{value}"


def _canon_column(column: pd.Series) -> pd.Series:
    """:func:`_canon` of a whole column, vectorised where the dtype allows."""
    if pd.api.types.is_bool_dtype(column):
        return "b:" + column.astype(str)
    if pd.api.types.is_numeric_dtype(column):
        values = column.astype(float)
        return ("n:" + values.map(repr)).where(values.notna(), "NA")
    return column.map(_canon)


def _key(trials: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """A short digest of each row's values in ``columns`` (a missing column counts as null)."""
    if trials.empty:
        return pd.Series([], index=trials.index, dtype=object)
    frame = trials.reindex(columns=list(columns))
    text = functools.reduce(lambda a, b: a + "\x1f" + b, (_canon_column(frame[c]) for c in columns))
    return text.map(lambda s: hashlib.sha256(s.encode()).hexdigest()[:12])


def _experiment(trials: pd.DataFrame) -> pd.Series:
    """Each row's experiment (the folder it was read from, else the sweep's name), "" when unknown."""
    cols = trials.reindex(columns=["experiment_dir", "experiment"]).astype(object)  # a missing column is float NaN
    return cols["experiment_dir"].fillna(cols["experiment"]).fillna("").astype(str)


def with_sweep_seeds(trials: pd.DataFrame, seeds: dict[str, int | None],
                     confirm: dict[str, list[int] | None] | None = None) -> pd.DataFrame:
    """``trials`` with SWEEP_SEEDS: the --seeds of each row's experiment (``seeds``: experiment folder as in
    ``experiment_dir`` -> sweep.json's "seeds", None when unknown), so a configuration whose seeds have not
    all written a row yet (still running, never started) is incomplete, not complete with fewer seeds; and
    CONFIRM_SEEDS from ``confirm`` (experiment -> sweep.json's "confirm" "seeds"; see :func:`confirm_seeds`)."""
    known = {k: int(v) for k, v in seeds.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    column = trials.reindex(columns=["experiment_dir"])["experiment_dir"]
    listed = {k: ",".join(str(int(x)) for x in v) for k, v in (confirm or {}).items() if v}
    return trials.assign(**{SWEEP_SEEDS: pd.to_numeric(column.map(known), errors="coerce"),
                            CONFIRM_SEEDS: column.map(listed)})


def with_sweep_options(trials: pd.DataFrame, options: dict[str, dict]) -> pd.DataFrame:
    """``trials`` with what each row's experiment's sweep.json says its configurations must have (``options``:
    experiment folder as in ``experiment_dir`` -> its sweep.json): the --seeds and the confirmation seeds."""
    return with_sweep_seeds(trials, {e: o.get("seeds") for e, o in options.items()},
                            {e: confirm_seeds(o) for e, o in options.items()})


def confirm_seeds(options: dict) -> list[int] | None:
    """The confirmation seeds a sweep's ``sweep.json`` options record ("confirm": {"seeds": [...]}), or None."""
    seeds = (options.get("confirm") or {}).get("seeds") if isinstance(options.get("confirm"), dict) else None
    return [int(s) for s in seeds] if isinstance(seeds, list) and seeds else None


def trial_stage(trials: pd.DataFrame) -> pd.Series:
    """Each row's stage: its ``stage`` column, TUNING where null or missing (older results)."""
    stage = trials.reindex(columns=["stage"])["stage"].astype(object)
    return stage.where(stage.notna(), TUNING).astype(str)


def stage_trials(trials: pd.DataFrame, stage: str = TUNING) -> pd.DataFrame:
    """The rows of one stage (TUNING: also rows without a stage)."""
    return trials[trial_stage(trials) == stage]


def _fill_by(kind: pd.Series, groups: pd.Series) -> pd.Series:
    """Unknown entries of ``kind`` take the one known value of their group (left unknown if it has several)."""
    known = pd.DataFrame({"g": groups, "k": kind}).dropna(subset=["k"]).groupby("g")["k"]
    single = known.agg(lambda s: s.iloc[0] if s.nunique() == 1 else None)
    return kind.fillna(groups.map(single))


def with_identity(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with ``device_type`` and ``precision`` (kept when present). Rows that recorded no device
    (failed or stopped trials, whose rows the sweep writes for them) take the device type of the other rows
    of their configuration in their experiment, else of their experiment, where that is one type."""
    if all(c in trials for c in IDENTITY) or trials.empty:
        return trials.reindex(columns=[*trials.columns, *(c for c in IDENTITY if c not in trials)])
    kind = trials.reindex(columns=["device"])["device"].map(selection.device_type).astype(object)
    if kind.isna().any():
        exp = _experiment(trials)
        kind = _fill_by(kind, exp + "\x1f" + _key(trials, (*GROUP, *HYPERPARAMETERS)))
        kind = _fill_by(kind, exp)
    return trials.assign(device_type=kind, precision=kind.map(selection.device_precision).astype(object))


def config_key(trials: pd.DataFrame) -> pd.Series:
    """Each row's configuration id: equal exactly when arch, method, every hyperparameter, the device type
    and the precision are equal."""
    return _key(with_identity(trials), CONFIG_COLUMNS)


def control_group(trials: pd.DataFrame) -> pd.Series:
    """Each row's dense-control recipe id (dense recipe and control budget, any seed)."""
    return _key(trials, CONTROL_COLUMNS)


def comparison_level(trials: pd.DataFrame) -> pd.Series:
    """The sparsity each row is compared at: nominal ``sparsity`` if ``target_sparsity`` is within LEVEL_TOL of
    it, else ``target_sparsity`` rounded to 3 decimals; NaN without a target (failed rows)."""
    nominal = pd.to_numeric(trials.reindex(columns=["sparsity"])["sparsity"], errors="coerce").astype(float)
    target = pd.to_numeric(trials["target_sparsity"], errors="coerce").astype(float)
    near = (target - nominal).abs() <= LEVEL_TOL
    return nominal.where(near, target.round(3)).round(6).rename("sparsity_level")


def annotate(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with its device type, precision, ``config`` id and ``sparsity_level`` columns."""
    trials = with_identity(trials)
    return trials.assign(config=config_key(trials), sparsity_level=comparison_level(trials))


def ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that finished with status ok."""
    return trials[trials["status"] == "ok"]


def at_sparsity(trials: pd.DataFrame, sparsity: float) -> pd.DataFrame:
    """Rows whose comparison level (:func:`comparison_level`) is ``sparsity`` (a fraction in [0, 1))."""
    return trials[(comparison_level(trials) - sparsity).abs() <= SPARSITY_TOL]


def varying_hyperparameters(trials: pd.DataFrame) -> list[str]:
    """The hyperparameter columns (and device type and precision, where the frame has them) whose value (null
    included) is not the same in every row."""
    cols = [c for c in (*HYPERPARAMETERS, *IDENTITY) if c in trials]
    return [c for c in cols if _canon_column(trials[c]).nunique() > 1]


def config_settings(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (``config`` id, arch, method) with the hyperparameters that vary over
    ``trials`` (:func:`varying_hyperparameters`): what a reader needs to tell configurations apart."""
    trials = with_identity(trials)
    varying = varying_hyperparameters(trials)
    cols = [*GROUP, "config", *varying]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    rows = trials.assign(config=config_key(trials)).reindex(columns=cols)
    return rows.drop_duplicates("config").sort_values([*GROUP, "config"]).reset_index(drop=True)


def fixed_hyperparameters(trials: pd.DataFrame) -> pd.DataFrame:
    """The hyperparameters with one value over every row: (hyperparameter, value)."""
    if trials.empty:
        return pd.DataFrame(columns=["hyperparameter", "value"])
    varying = set(varying_hyperparameters(trials))
    fixed = [c for c in HYPERPARAMETERS if c in trials and c not in varying]
    values = ["null" if _canon(trials[c].iloc[0]) == "NA" else trials[c].iloc[0] for c in fixed]
    return pd.DataFrame({"hyperparameter": fixed, "value": values}, columns=["hyperparameter", "value"])


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def control_accuracies(trials: pd.DataFrame) -> pd.DataFrame:
    """The dense control's accuracies per (arch, seed, control_key), from any ok row that has them (only
    the trial that built the control, or read it from the store, carries it in its row)."""
    cols = ["arch", "seed", "control_key", "control_val_acc", "control_test_acc"]
    ok = ok_trials(trials).reindex(columns=cols)
    has = ok["control_key"].fillna("").astype(str).ne("") & ok[cols[3:]].notna().any(axis=1)
    if not has.any():
        return pd.DataFrame(columns=cols)
    return ok[has].groupby(cols[:3], sort=True)[cols[3:]].first().reset_index()


def with_control(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with control_val_acc / control_test_acc filled from the row's (arch, seed, control_key)."""
    acc = ["control_val_acc", "control_test_acc"]
    keys = trials.reindex(columns=["arch", "seed", "control_key"])
    found = keys.merge(control_accuracies(trials), how="left", on=["arch", "seed", "control_key"])
    return trials.assign(**{c: found[c].to_numpy(float) for c in acc})


STATE_COLUMNS = [*GROUP, "config", "sparsity_level", "state", "seeds_ok", "seeds_expected", "seed_statuses",
                 "final_val_acc_mean", "trial_ids"]


def _seed_statuses(pairs: list[tuple[int, str | None]], expected: set[int]) -> str:
    """``0 ok, 1 diverged, 2 not run``: each expected or seen seed and its rows' statuses."""
    by_seed: dict[int, set[str]] = {}
    for seed, status in pairs:
        by_seed.setdefault(seed, set()).add(status or "running")
    return ", ".join(f"{seed} {'+'.join(sorted(by_seed[seed])) if seed in by_seed else 'not run'}"
                     for seed in sorted(expected | set(by_seed)))


def _seed_rows(rows: pd.DataFrame) -> tuple[dict[str, list], dict[str, set[int]]]:
    """Per configuration id: its rows' (seed, status) pairs, and the seeds it must have (those its rows ran,
    and range(SWEEP_SEEDS) where the sweep's --seeds is known)."""
    pairs: dict[str, list] = {}
    expected: dict[str, set[int]] = {}
    sweep = rows.reindex(columns=[SWEEP_SEEDS])[SWEEP_SEEDS]
    for config, seed, status, n in zip(rows["config"], rows["seed"], rows["status"], sweep):
        seed = -1 if pd.isna(seed) else int(seed)
        pairs.setdefault(config, []).append((seed, status if isinstance(status, str) else None))
        expected.setdefault(config, set()).add(seed)
        if not pd.isna(n):
            expected[config].update(range(int(n)))
    return pairs, expected


def config_states(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration over ALL its rows (every status, every experiment): its state under the
    shared rule (``results.selection.config_state``: complete, diverged, stopped, incomplete), ok and
    expected seed counts, each seed's status, its mean final val accuracy over the ok seeds, its
    comparison level, device type and precision, and every hyperparameter. Tuning rows only (TUNING)."""
    rows = stage_trials(annotate(trials))
    cols = [*STATE_COLUMNS, *IDENTITY, *HYPERPARAMETERS]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    pairs, expected = _seed_rows(rows)
    out = rows.drop_duplicates("config").set_index("config").reindex(columns=[*GROUP, *IDENTITY, *HYPERPARAMETERS])
    ok = rows[rows["status"] == "ok"].groupby("config")
    out = out.assign(
        sparsity_level=rows.dropna(subset=["sparsity_level"]).drop_duplicates("config")
        .set_index("config")["sparsity_level"],
        state=[selection.config_state(pairs[c], expected[c]) for c in out.index],
        seeds_ok=ok["seed"].nunique(), seeds_expected=[len(expected[c]) for c in out.index],
        seed_statuses=[_seed_statuses(pairs[c], expected[c]) for c in out.index],
        final_val_acc_mean=ok["final_val_acc"].mean(),
        trial_ids=rows.groupby("config")["trial_id"].agg(lambda s: ",".join(sorted(s.astype(str)))))
    out["seeds_ok"] = out["seeds_ok"].fillna(0).astype(int)
    out = out.reset_index().sort_values([*GROUP, "config"]).reset_index(drop=True)
    return out[cols]


def configs_not_chosen(trials: pd.DataFrame) -> pd.DataFrame:
    """Every configuration the shared rule keeps from being chosen (diverged, stopped, incomplete), with
    each seed's status, its ok and expected seed counts and its mean val accuracy over the ok seeds."""
    states = config_states(trials)
    rows = states[~states["state"].map(selection.chosen_allowed).astype(bool)]
    return rows.sort_values([*GROUP, "state", "config"]).reset_index(drop=True)


def complete_configs(trials: pd.DataFrame) -> set[str]:
    """The ids of the configurations that may be chosen (results.selection.chosen_allowed)."""
    states = config_states(trials)
    return set(states.loc[states["state"].map(selection.chosen_allowed).astype(bool), "config"])


def config_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, method, configuration) with ok trials: comparison level, mean achieved sparsity, mean
    val/test final accuracy over its ok seeds, n (ok) seeds, trial ids, its ``state`` under the shared rule
    (:func:`config_states`; only ``complete`` ones can be chosen), seeds expected, every hyperparameter, the
    device type and precision. Tuning rows only (TUNING)."""
    rows = stage_trials(annotate(trials))
    ok = rows[rows["status"] == "ok"]
    head = [*GROUP, "config", "sparsity_level", "achieved_sparsity_mean", "n_seeds", "final_val_acc_mean",
            "final_test_acc_mean", "trial_ids", "state", "seeds_expected"]
    if ok.empty:
        return pd.DataFrame(columns=[*head, *HYPERPARAMETERS, *IDENTITY])
    grouped = ok.groupby([*GROUP, "config"], sort=True)
    out = grouped.agg(sparsity_level=("sparsity_level", "first"),
                      achieved_sparsity_mean=("achieved_sparsity", "mean"), n_seeds=("seed", "nunique"),
                      final_val_acc_mean=("final_val_acc", "mean"), final_test_acc_mean=("final_test_acc", "mean"),
                      trial_ids=("trial_id", lambda s: ",".join(sorted(s)))).reset_index()
    states = config_states(rows)[["config", "state", "seeds_expected"]]
    firsts = ok.reindex(columns=[*GROUP, "config", *HYPERPARAMETERS, *IDENTITY]).groupby([*GROUP, "config"], sort=True)
    out = out.merge(states, on="config", how="left").merge(firsts.nth(0), on=[*GROUP, "config"])
    return out[[*head, *HYPERPARAMETERS, *IDENTITY]]


def best_configs(trials: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """The configuration with the best mean final_val_acc per (arch, method) [at comparison level
    ``sparsity`` if given], among the COMPLETE ones only (results.selection: every seed finished ok, so the
    mean is over all its seeds). Ties are broken by the configuration id; test accuracy plays no part.
    ``trials``: every row, any status (the rule needs the diverged, stopped and failed ones too)."""
    summary = config_summary(trials)
    summary = summary[summary["state"].map(selection.chosen_allowed).astype(bool)] if len(summary) else summary
    if sparsity is not None and len(summary):
        summary = summary[(summary["sparsity_level"].astype(float) - sparsity).abs() <= SPARSITY_TOL]
    if summary.empty:
        return summary.reset_index(drop=True)
    summary = summary.sort_values([*GROUP, "final_val_acc_mean", "config"], ascending=[True, True, False, True])
    return summary.groupby(list(GROUP), sort=True).head(1).reset_index(drop=True)



def chosen_at_every_level(trials: pd.DataFrame) -> pd.DataFrame:
    """:func:`best_configs` at every comparison level the tuning rows reached, in one frame (what the report,
    ``--keep-models chosen`` and ``python -m sweep confirm`` call "the chosen configurations")."""
    levels = sorted(stage_trials(annotate(trials))["sparsity_level"].dropna().astype(float).unique())
    parts = [best for best in (best_configs(trials, level) for level in levels) if len(best)]
    return pd.concat(parts, ignore_index=True) if parts else best_configs(trials.iloc[0:0])

def _ok_annotated(trials: pd.DataFrame, stage: str = TUNING) -> pd.DataFrame:
    """The ok rows of ``trials`` of one stage, annotated over every row (so a configuration's id never depends
    on which of its rows are in the frame)."""
    rows = annotate(trials)
    return rows[(rows["status"] == "ok") & (trial_stage(rows) == stage)]


def _selected(ok: pd.DataFrame, best_row) -> pd.DataFrame:
    """The ok rows (annotated) of one chosen (arch, method, config)."""
    return ok[(ok["arch"] == best_row["arch"]) & (ok["method"] == best_row["method"])
              & (ok["config"] == best_row["config"])]


def _budget(sel: pd.DataFrame) -> float:
    """Total epochs of the rows (dense + sparsify + fine-tune: the dense control's too), NaN if they differ."""
    total = sel.reindex(columns=["dense_epochs", "sparsify_epochs", "finetune_epochs"]).sum(axis=1, min_count=3)
    return float(total.iloc[0]) if len(sel) and total.nunique() == 1 else math.nan


def _dense_start(sel: pd.DataFrame) -> dict:
    epochs = pd.to_numeric(sel.reindex(columns=["dense_epochs"])["dense_epochs"]).dropna().unique()
    mean, std = _mean_std(sel["dense_test_acc"])
    return {"budget_epochs": _budget(sel),
            "dense_start_epoch": float(epochs[0]) if len(epochs) == 1 else math.nan,
            "dense_start_test_acc_mean": mean, "dense_start_test_acc_std": std}


def _pruned_row(best_row, sel: pd.DataFrame) -> dict:
    """A comparison row of one chosen configuration (``sel``: its seeds, control accuracies filled)."""
    row = {"arch": best_row["arch"], "method": best_row["method"], "row": "pruned",
           "sparsity_level": best_row["sparsity_level"],
           "achieved_sparsity_mean": float(sel["achieved_sparsity"].mean()),
           "selected_on": "val (mean final_val_acc)", "reported_on": "test",
           "final_val_acc_mean": best_row["final_val_acc_mean"], **_dense_start(sel)}
    for stage in PRUNE_STAGES:
        row[f"{stage}_test_acc_mean"], row[f"{stage}_test_acc_std"] = _mean_std(sel[f"{stage}_test_acc"])
    row["control_test_acc_mean"], row["control_test_acc_std"] = _mean_std(sel["control_test_acc"])
    row.update(n_seeds=int(sel["seed"].nunique()), trial_ids=",".join(sorted(sel["trial_id"])),
               note="" if sel["control_test_acc"].notna().any() else "dense control missing")
    return row


def _control_note(pairs: pd.DataFrame, methods: list[str]) -> str:
    have = int(pairs.loc[pairs["control_test_acc"].notna(), "seed"].nunique())
    if have == 0:
        return CONTROL_MISSING
    more = pairs["sparsify_epochs"].iloc[0] + pairs["finetune_epochs"].iloc[0]
    text = (f"dense control for {', '.join(methods)}: the dense start trained {int(more)} epochs more with the "
            f"dense recipe (same total budget)")
    seeds = pairs["seed"].nunique()
    return text if have == seeds else f"{text}; control for {have} of {seeds} seeds"


def _control_row(selected: pd.DataFrame) -> dict:
    """The dense control over the (seed, control_key) pairs of ``selected`` (one arch, one control recipe)."""
    pairs = selected.drop_duplicates(["seed", "control_key"])
    row = {"arch": pairs["arch"].iloc[0], "method": "dense", "row": "control", "sparsity_level": 0.0,
           "achieved_sparsity_mean": 0.0, "selected_on": "", "reported_on": "test", **_dense_start(pairs)}
    for stage in PRUNE_STAGES:  # a dense model has no pruning stages; its final accuracy is the control's
        row[f"{stage}_test_acc_mean"] = row[f"{stage}_test_acc_std"] = math.nan
    mean_std = _mean_std(pairs["control_test_acc"])
    row["final_test_acc_mean"], row["final_test_acc_std"] = mean_std
    row["control_test_acc_mean"], row["control_test_acc_std"] = mean_std
    row.update(n_seeds=int(pairs.loc[pairs["control_test_acc"].notna(), "seed"].nunique()), trial_ids="",
               note=_control_note(pairs, sorted(selected["method"].unique())))
    return row


COMPARISON_COLUMNS = [
    *GROUP, "row", "sparsity_level", "achieved_sparsity_mean", "selected_on", "reported_on", "final_val_acc_mean",
    "budget_epochs", "dense_start_epoch", "dense_start_test_acc_mean", "dense_start_test_acc_std",
    *[f"{s}_test_acc_{m}" for s in PRUNE_STAGES for m in ("mean", "std")],
    "control_test_acc_mean", "control_test_acc_std", "n_seeds", "trial_ids", "note"]


def comparison_table(trials: pd.DataFrame, sparsity: float = 0.5) -> pd.DataFrame:
    """The original study's table at comparison level ``sparsity`` (:func:`comparison_level`).

    Per (arch, method): the configuration chosen on validation, its dense start / pre-prune / post-prune
    (BN recalibrated and stale BN) / final TEST accuracy and its dense control's, as mean and std over seeds,
    the level and the mean achieved sparsity. Per arch and control recipe: a ``dense`` ``control`` row, the
    dense control (same total budget) as its final accuracy, NaN with a note where it is missing. Empty
    frame if nothing finished at that level."""
    best = best_configs(trials, sparsity)
    ok = _ok_annotated(with_control(trials))
    rows, chosen = [], []
    for _, b in best.iterrows():
        sel = _selected(ok, b)
        rows.append(_pruned_row(b, sel))
        chosen.append(sel)
    if chosen:
        picked = pd.concat(chosen).assign(control_recipe=lambda t: control_group(t))
        for _, group in picked.groupby(["arch", "control_recipe"], sort=True):
            rows.append(_control_row(group))
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    return table.sort_values(["arch", "row", "method"], kind="stable").reset_index(drop=True)


def best_hyperparameters(trials: pd.DataFrame, sparsity: float | None = None) -> pd.DataFrame:
    """The best configuration per (arch, method), chosen on mean final_val_acc, with every hyperparameter
    that varies among the ok trials (the others are in :func:`fixed_hyperparameters`)."""
    best = best_configs(trials, sparsity)
    varying = varying_hyperparameters(ok_trials(with_identity(trials)))
    cols = [*GROUP, "sparsity_level", "achieved_sparsity_mean", *varying, "n_seeds", "final_val_acc_mean",
            "trial_ids"]
    return best[cols] if not best.empty else pd.DataFrame(columns=cols)


def _pareto_mask(sparsity: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """True where no other point has sparsity >= and accuracy >= with one of them strictly greater."""
    keep = np.ones(len(acc), dtype=bool)
    for i in range(len(acc)):
        dominated = (sparsity >= sparsity[i]) & (acc >= acc[i]) & ((sparsity > sparsity[i]) | (acc > acc[i]))
        keep[i] = not dominated.any()
    return keep


PARETO_COLUMNS = [*GROUP, "row", "config", "sparsity_level", "target_sparsity", "achieved_sparsity",
                  "final_val_acc", "final_test_acc", "budget_epochs", "dense_start_epoch", "dense_start_val_acc",
                  "dense_start_test_acc",
                  "nonzero_params", "total_params", "nonzero_macs", "dense_macs", "n_seeds", "note"]


def _pareto_controls(ok: pd.DataFrame) -> list[dict]:
    """One ``control`` row per (arch, control recipe): the dense control's mean accuracies at sparsity 0."""
    rows = []
    for _, group in ok.assign(recipe=control_group(ok)).groupby(["arch", "recipe"], sort=True):
        pairs = group.drop_duplicates(["seed", "control_key"])
        rows.append({
            "arch": pairs["arch"].iloc[0], "method": "dense", "row": "control", "config": "", "sparsity_level": 0.0,
            "target_sparsity": 0.0, "achieved_sparsity": 0.0, "final_val_acc": _mean_std(pairs["control_val_acc"])[0],
            "final_test_acc": _mean_std(pairs["control_test_acc"])[0], "budget_epochs": _budget(pairs),
            "dense_start_epoch": _dense_start(pairs)["dense_start_epoch"],
            "dense_start_val_acc": pairs["dense_val_acc"].mean(),
            "dense_start_test_acc": pairs["dense_test_acc"].mean(),
            "nonzero_params": pairs["total_params"].max(), "total_params": pairs["total_params"].max(),
            "nonzero_macs": pairs["dense_macs"].max(), "dense_macs": pairs["dense_macs"].max(),
            "n_seeds": int(pairs.loc[pairs["control_val_acc"].notna(), "seed"].nunique()),
            "note": _control_note(pairs, sorted(group["method"].unique()))})
    return rows


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """Accuracy-vs-sparsity Pareto front per (arch, method) over the complete configurations (mean over all
    their seeds; results.selection).

    Points are compared on validation accuracy and achieved sparsity; test accuracy sits beside, with the
    comparison level and exact target. Each (arch, control recipe) gets a ``dense`` ``control`` row: the dense
    control (same total budget, DESIGN rule 11), NaN with a note where it is missing; its dense start beside.
    """
    ok = _ok_annotated(with_control(trials))
    ok = ok[ok["config"].isin(complete_configs(trials))]  # the front is a choice too: complete configurations only
    if ok.empty:
        return pd.DataFrame(columns=PARETO_COLUMNS)
    ok = ok.assign(budget_epochs=ok.reindex(columns=["dense_epochs", "sparsify_epochs", "finetune_epochs"])
                   .sum(axis=1, min_count=3))
    agg = ok.groupby([*GROUP, "config"]).agg(
        sparsity_level=("sparsity_level", "first"), target_sparsity=("target_sparsity", "first"),
        achieved_sparsity=("achieved_sparsity", "mean"), final_val_acc=("final_val_acc", "mean"),
        final_test_acc=("final_test_acc", "mean"), budget_epochs=("budget_epochs", "first"),
        dense_start_epoch=("dense_epochs", "first"), dense_start_val_acc=("dense_val_acc", "mean"),
        dense_start_test_acc=("dense_test_acc", "mean"),
        nonzero_params=("nonzero_params", "mean"), total_params=("total_params", "first"),
        nonzero_macs=("nonzero_macs", "mean"), dense_macs=("dense_macs", "first"),
        n_seeds=("seed", "nunique")).reset_index().assign(note="")
    parts = [pd.DataFrame(_pareto_controls(ok), columns=PARETO_COLUMNS)]
    for _, rows in agg.groupby(list(GROUP), sort=True):
        mask = _pareto_mask(rows["achieved_sparsity"].to_numpy(float), rows["final_val_acc"].to_numpy(float))
        parts.append(rows[mask].assign(row="pareto").sort_values("achieved_sparsity"))
    front = pd.concat(parts, ignore_index=True)[PARETO_COLUMNS]
    order = front["row"].map({"control": 0, "pareto": 1})
    return front.assign(_o=order).sort_values(["arch", "_o", "method"], kind="stable").drop(columns="_o") \
        .reset_index(drop=True)


def _picked_seeds(ok: pd.DataFrame, best: pd.DataFrame, method: str) -> pd.DataFrame | None:
    """Per seed: final test accuracy and achieved sparsity of ``method``'s chosen configuration."""
    b = best[best["method"] == method]
    if b.empty:
        return None
    sel = _selected(ok, b.iloc[0])
    return sel.groupby("seed").agg(final_test_acc=("final_test_acc", "mean"),
                                   achieved_sparsity=("achieved_sparsity", "mean"),
                                   trial_ids=("trial_id", lambda s: ",".join(sorted(s.astype(str)))))


def _pairs_lost(picked: dict[str, pd.DataFrame]) -> str:
    """``2 (admm only), 5 (magnitude only)``: the seeds only one of a pair's chosen configurations completed."""
    (a, sa), (b, sb) = picked.items()
    _, lost = selection.paired_seeds(sa.index, sb.index)
    return ", ".join(f"{s} ({a if s in sa.index else b} only)" for s in lost)


PAIRED_STATS = ["mean_diff", "ci95_lo", "ci95_hi", "p_value", "test", "t_p_value", "seeds_needed", "note",
                "p_unadjusted", "family_size"]


def paired_columns(methods) -> list[str]:
    """The columns of :func:`paired_comparison` when ``methods`` (every method it may name) have rows: each
    method's achieved sparsity and final test accuracy (a row fills those of its two methods)."""
    methods = method_order(methods)
    return ["arch", "sparsity_level", *(f"achieved_sparsity_{m}" for m in methods), "comparison", "split",
            "n_pairs", "seeds", "pairs_lost", *(f"final_test_acc_{m}_{k}" for m in methods for k in ("mean", "std")),
            *PAIRED_STATS, "stage", "method", REFERENCE_KEY, "trial_ids"]


def _paired_row(arch: str, level: float, picked: dict[str, pd.DataFrame], stage: str) -> dict:
    """One pair's row: ``picked`` maps (method, reference), in that order, to their per-seed frames."""
    (method, mine), (reference, theirs) = picked.items()
    pairs = pd.concat({method: mine["final_test_acc"], reference: theirs["final_test_acc"]}, axis=1,
                      join="inner").dropna()
    diff = (pairs[method] - pairs[reference]).to_numpy(float)
    accs = {f"final_test_acc_{m}_{k}": v for m in picked for k, v in zip(("mean", "std"), _mean_std(pairs[m]))}
    return {"arch": arch, "sparsity_level": level, "method": method, REFERENCE_KEY: reference,
            **{f"achieved_sparsity_{m}": float(picked[m]["achieved_sparsity"].mean()) for m in picked},
            "comparison": f"{method} - {reference}", "split": "test", "n_pairs": len(diff),
            "seeds": ",".join(str(s) for s in pairs.index), "pairs_lost": _pairs_lost(picked), **accs,
            **paired_stats(diff), "stage": stage,
            "trial_ids": ",".join(sorted(i for m in picked for i in picked[m]["trial_ids"]))}


def paired_comparison(trials: pd.DataFrame, reference: str = DEFAULT_REFERENCE, stage: str = TUNING) -> pd.DataFrame:
    """Each method minus ``reference``: final TEST accuracy at each comparison level per arch, paired by seed,
    one row per (arch, level, method) for every method other than the reference (:func:`compared_methods`:
    registry order), each pair judged on its own (a third method never changes another pair's row).

    Each method contributes its best COMPLETE configuration at that level (chosen on validation,
    :func:`best_configs`); trials at other levels (N:M below its nominal sparsity) are never paired with it.
    The pairs are the seeds both chosen configurations completed (``pairs_lost``: the seeds only one has).
    Reports the level, each side's mean achieved sparsity, n pairs, each side's final test accuracy (mean,
    std) over the paired seeds (so the two means differ by exactly ``mean_diff``), and :func:`paired_stats`,
    with ``p_value`` Holm-adjusted over the methods compared at the same (arch, level) (:func:`_adjust_families`:
    with two methods it is the pair's own p).
    ``stage``: whose rows are judged. The configurations are always chosen on the TUNING rows; with
    CONFIRMATION the pairs are those chosen configurations' confirmation seeds (python -m sweep confirm), and
    a level has a row only where both have some. ``trial_ids``: the judged rows. ``trials``: every row, any
    status. A level where the reference has no chosen configuration has no row.
    """
    ok = _ok_annotated(trials)
    judged = ok if stage == TUNING else _ok_annotated(trials, stage)
    rows = []
    for (arch, level), _ in ok.groupby(["arch", "sparsity_level"], sort=True):
        best = best_configs(trials[trials["arch"] == arch], level)
        theirs = _picked_seeds(judged, best, reference)
        if theirs is None or theirs.empty:
            continue
        for method in compared_methods(best["method"].unique(), reference):
            mine = _picked_seeds(judged, best, method)
            if mine is not None and not mine.empty:
                rows.append(_paired_row(arch, level, {method: mine, reference: theirs}, stage))
    return pd.DataFrame(_adjust_families(rows), columns=paired_columns([*methods_of(trials), reference]))


def _adjust_families(rows: list[dict]) -> list[dict]:
    """Every method compared with the reference at one (arch, level) is one family: ``p_value`` (what a
    verdict rests on) becomes the Holm-adjusted p over it, ``p_unadjusted`` keeps the pair's own test,
    ``family_size`` counts the family's tested pairs and ``seeds_needed`` grows with it. A family of one (two
    methods) is unchanged."""
    families: dict[tuple, list[dict]] = {}
    for row in rows:
        families.setdefault((row["arch"], row["sparsity_level"]), []).append(row)
    for family in families.values():
        raw = [row["p_value"] for row in family]
        size = sum(not math.isnan(p) for p in raw)
        for row, adjusted in zip(family, significance.holm(raw)):
            row.update(p_unadjusted=row["p_value"], p_value=adjusted, family_size=size,
                       seeds_needed=significance.seeds_needed(family=size))
    return rows


def paired_stats(diff: np.ndarray) -> dict:
    """Paired differences: mean, 95% t-interval (the size), the exact sign-flip test's two-sided p-value
    (``p_value``, what a verdict rests on; ``test`` names it; analysis.significance), the paired t-test's
    p-value beside it (``t_p_value``, for reference only), and the pairs a decision needs (``seeds_needed``).
    With n < 2 the interval and p-values are NaN and ``note`` says "n/a (n < 2)"; with equal differences the
    t-interval is a point and ``note`` says that this is no evidence."""
    n = len(diff)
    out = {"test": significance.EXACT, "seeds_needed": significance.seeds_needed(), "t_p_value": math.nan}
    if n < 2:
        return {**out, "mean_diff": float(diff.mean()) if n else math.nan, "ci95_lo": math.nan, "ci95_hi": math.nan,
                "p_value": math.nan, "note": "n/a (n < 2)"}
    mean, sem = float(diff.mean()), float(stats.sem(diff))
    p, test = significance.sign_flip_test(diff)
    out.update(mean_diff=mean, p_value=p, test=test)
    if sem == 0.0:  # identical differences: the t statistic is undefined, the interval is a point
        return {**out, "ci95_lo": mean, "ci95_hi": mean,
                "note": "zero variance of differences: the interval is a point, not evidence"}
    half = float(stats.t.ppf(0.975, n - 1)) * sem
    t_p = float(stats.ttest_rel(diff, np.zeros(n)).pvalue)
    return {**out, "ci95_lo": mean - half, "ci95_hi": mean + half, "t_p_value": t_p, "note": ""}


def accounting(trials: pd.DataFrame) -> pd.DataFrame:
    """Sweep accounting per (arch, method): trial rows, configurations (distinct :func:`config_key`, any
    status: what the search tried), how many rows ended ok, diverged, failed, stopped (early, by the
    scheduler), ``other`` (any status outside those four, so the counts always add up to ``trials``), and
    compute seconds (sum of wall times)."""
    cols = [*GROUP, "trials", "configurations", *STATUSES, "other", "compute_s"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    counts = pd.crosstab([trials[c] for c in GROUP], trials["status"].fillna("")).reindex(
        columns=list(STATUSES), fill_value=0)
    by = trials.assign(config=config_key(trials)).groupby(list(GROUP))
    out = counts.assign(trials=by.size(), configurations=by["config"].nunique(), compute_s=by["wall_time_s"].sum())
    out["other"] = out["trials"] - out[list(STATUSES)].sum(axis=1)
    return out.reset_index()[cols].rename_axis(columns=None)


def diverged_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Every trial that did not finish ok, with its comparison level, the hyperparameters that vary in the
    sweep, and its error, so none vanish silently."""
    rows = annotate(trials)
    rows = rows[rows["status"] != "ok"]
    cols = [*GROUP, "trial_id", "seed", "status", "error", "sparsity_level", "target_sparsity",
            *[c for c in varying_hyperparameters(trials) if c != "target_sparsity"], "config", "epochs_run"]
    return rows.reindex(columns=cols).sort_values([*GROUP, "trial_id"]).reset_index(drop=True)


# --- the chosen models' files and health (the report's chosen configurations; the summary may call these) ----

MODEL_FACTS = ("nonzero_params", "nonzero_macs", "model_bytes", "dense_bytes",  # averaged over a config's seeds
               "latency_dense_ms", "latency_sparse_ms", "latency_speedup")


def with_model_facts(chosen: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """``chosen`` (rows with ``trial_ids``: best_configs, best_hyperparameters) plus, over each row's trials:
    the mean of MODEL_FACTS as ``<name>_mean`` (NaN where the results lack the column: written before schema
    4; the latency_* ones before schema 5), ``empty_layers_max`` (the most prunable layers one of its seeds
    pruned to zero: above 0 a sparsity set cut the network), ``latency_note`` (why a seed's 2:4 latency was not
    measured, "" when all were; None before schema 5) and ``experiment`` (its first trial's experiment folder:
    where the model is exported from)."""
    facts = trials.reindex(columns=["trial_id", *MODEL_FACTS, "empty_layers", "latency_note"])
    facts = facts.assign(experiment=_experiment(trials))
    facts = facts.drop_duplicates("trial_id").set_index("trial_id")
    rows = []
    for ids in chosen.reindex(columns=["trial_ids"])["trial_ids"]:
        mine = facts.reindex([i for i in str(ids or "").split(",") if i])
        row = {f"{c}_mean": pd.to_numeric(mine[c], errors="coerce").mean() for c in MODEL_FACTS}
        row["empty_layers_max"] = pd.to_numeric(mine["empty_layers"], errors="coerce").max()
        notes = [n for n in mine["latency_note"].dropna() if n]
        row["latency_note"] = notes[0] if notes else ("" if mine["latency_note"].notna().any() else None)
        row["experiment"] = mine["experiment"].dropna().iloc[0] if mine["experiment"].notna().any() else ""
        rows.append(row)
    columns = [*(f"{c}_mean" for c in MODEL_FACTS), "empty_layers_max", "latency_note", "experiment"]
    return pd.concat([chosen, pd.DataFrame(rows, index=chosen.index, columns=columns)], axis=1)


def cut_networks(trials: pd.DataFrame) -> pd.DataFrame:
    """The ok trials whose final model has prunable layers with no nonzero weight left (``empty_layers`` > 0:
    the network is cut in two, its accuracy is chance), with their comparison level and configuration."""
    cols = [*GROUP, "sparsity_level", "config", "trial_id", "seed", "empty_layers"]
    rows = ok_trials(annotate(trials))
    rows = rows[pd.to_numeric(rows.reindex(columns=["empty_layers"])["empty_layers"], errors="coerce") > 0]
    return rows.reindex(columns=cols).sort_values([*GROUP, "trial_id"]).reset_index(drop=True)
