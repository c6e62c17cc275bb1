"""``python -m sweep confirm NAME --seeds K``: each method's CHOSEN configuration (on validation, by the tuning
stage: results.selection through analysis.tables.best_configs, at each arch and comparison level) runs again on
K seeds the tuning never used, through the same trainable, dense store and results (a dense model per seed:
the dense store keys on the seed). These trials are not search trials: Optuna is never told them, their rows
carry ``stage = "confirmation"`` (results.schema.TRIAL_STAGES), and the tuning-stage choice never reads them.

Seeds: the K after every seed the tuning used (its --seeds and any seed a row of it ran), recorded in sweep.json
as ``"confirm": {"seeds": [...]}`` (sweep.record.SweepOptions.confirm_seeds) before any trial starts, so the
analysis knows which seeds a confirmation must have. A re-run with the same K finishes them; a larger K adds
the next seeds; a smaller one is refused.

Kill-safe: each confirmation trial writes its rows under a deterministic id per (configuration, seed)
(:func:`row_id`), so a re-run skips the trials that ended ok or diverged; nothing is duplicated. Tune's state
of a confirmation lives in ``<experiment>/confirm/``. A re-run after a kill first restores that Tune run, as
``resume`` does a sweep's (:func:`continue_killed`): its unfinished trials continue from their last per-epoch
checkpoint and the planned ones it had not started run, under the same ids; then a fresh Tuner runs what is
still missing (failed trials, a larger K's new seeds). A saved run that holds a trial no longer planned (a
longer search changed the choice since) is not restored: its trials still to run start afresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import posixpath
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ray.tune.search import Searcher

from results import schema

from . import spaces as sp
from .options import UsageError, experiment_path, parse_set, validate_resume, without_params
from .record import SweepOptions

__all__ = ["confirm", "confirm_seeds", "Chosen", "chosen_configurations", "row_id", "plan", "pending", "run_trials",
           "continue_killed", "saved_run", "PlannedTrials", "CONFIRM_DIR"]

CONFIRM_DIR = "confirm"  # Tune's state of the confirmation runs, inside the experiment folder


def confirm_seeds(tuning_seeds: int, used: Iterable[int], k: int, recorded: Sequence[int] = ()) -> list[int]:
    """The confirmation seeds: the ``recorded`` ones (an earlier confirm of this sweep), then the next seeds
    after every seed the tuning used (``range(tuning_seeds)`` and ``used``) and every recorded one, ``k`` in
    all. UsageError naming --seeds when ``k`` is below 1 or below the recorded count."""
    if k < 1:
        raise UsageError("--seeds", f"{k} must be >= 1")
    recorded = [int(s) for s in recorded]
    if k < len(recorded):
        raise UsageError("--seeds", f"this sweep's confirmation already runs {len(recorded)} seeds {recorded}: give "
                                    f"--seeds {len(recorded)} to finish it, or more to add seeds")
    start = max([int(tuning_seeds) - 1, *map(int, used), *recorded, -1]) + 1
    return recorded + list(range(start, start + k - len(recorded)))


@dataclass(frozen=True)
class Chosen:
    """One chosen configuration: where it was chosen, and the flat TrialConfig of one of its tuning rows."""

    arch: str
    method: str
    config: str  # analysis.tables.config_key: arch, method, every hyperparameter, device type, precision
    level: float
    study: str
    optuna_trial: int
    flat: dict[str, Any]


def chosen_configurations(experiment: str, options: SweepOptions) -> tuple[list[Chosen], set[int]]:
    """(each method's chosen configuration at each arch and comparison level, by the shared rule on the
    tuning rows; the seeds the tuning rows ran). UsageError naming NAME when there is none."""
    from analysis.load import ExperimentError, display_name, load_tables
    from analysis.tables import annotate, chosen_at_every_level, stage_trials, with_sweep_options

    try:
        trials = load_tables([experiment]).trials
    except ExperimentError as e:
        raise UsageError("NAME", f"no results to confirm ({e})") from None
    trials = with_sweep_options(trials, {display_name(experiment): options.to_dict()})
    rows = annotate(trials)
    tuning = stage_trials(rows)
    chosen: dict[tuple, Chosen] = {}
    for best in chosen_at_every_level(trials).to_dict("records"):
        first = rows[rows["trial_id"] == best["trial_ids"].split(",")[0]].iloc[0]
        key = (best["arch"], best["method"], best["config"])
        chosen.setdefault(key, Chosen(best["arch"], best["method"], best["config"], float(best["sparsity_level"]),
                                      str(first["study"] or ""), int(first["optuna_trial"]),
                                      json.loads(first["config_json"])))
    if not chosen:
        raise UsageError("NAME", f"{display_name(experiment)} has no complete configuration to confirm (every seed "
                                 "of a configuration must finish ok before it can be chosen): finish the sweep "
                                 "first (python -m sweep resume NAME)")
    used = {int(s) for s in tuning["seed"].dropna()}
    return sorted(chosen.values(), key=lambda c: (c.arch, c.level, c.method)), used


def row_id(chosen: Chosen, seed: int) -> str:
    """The deterministic id of a confirmation trial (its rows and model file): one per (configuration, seed)."""
    return f"confirm-{chosen.config}-s{seed}"


def plan(chosen: list[Chosen], seeds: list[int]) -> list[dict]:
    """The Tune configs of every confirmation trial: the chosen configuration's flat config on each seed."""
    return [{**c.flat, "seed": int(seed), "_study": c.study, "_optuna_trial": c.optuna_trial,
             "_trial_id": row_id(c, seed), "_stage": schema.CONFIRMATION} for c in chosen for seed in seeds]


def pending(experiment: str, configs: list[dict]) -> list[dict]:
    """The planned trials without a finished row (ok or diverged): a failed or never-finished one runs again."""
    from .searcher import trial_row

    def finished(cfg: dict) -> bool:
        row = trial_row(experiment, cfg["arch"], cfg["method"], cfg["_trial_id"])
        return row is not None and row.get("status") in ("ok", "diverged")

    return [cfg for cfg in configs if not finished(cfg)]


def confirm(args: argparse.Namespace, write: Callable[[str], None]) -> str:
    """Run the confirmation (see the module docstring); returns the experiment folder. Bad input (an unknown
    NAME, --seeds below 1, no complete configuration) is a UsageError before Ray starts."""
    from .driver import read_options, with_overrides, write_options
    from .resources import check_resources, init_ray

    validate_resume(args)
    experiment, options = read_options(args)
    chosen, used = chosen_configurations(experiment, options)
    seeds = confirm_seeds(options.seeds, used, args.seeds, options.confirm_seeds)
    planned = plan(chosen, seeds)
    todo = pending(experiment, planned)
    space = without_params(sp.load_space(options.space), set(parse_set(list(options.set))))
    run_options = with_overrides(options, args)
    if todo:  # a finished confirmation needs no Ray
        init_ray(run_options.local)
        check_resources(run_options.cpus_per_trial, run_options.gpus_per_trial, local=run_options.local)
    # before any trial: the analysis's truth
    write_options(experiment, dataclasses.replace(options, confirm_seeds=tuple(seeds)))
    write(f"confirmation: {len(chosen)} chosen configuration{'s' if len(chosen) != 1 else ''} on seeds "
          f"{', '.join(map(str, seeds))}: {len(todo)} trials to run, {len(chosen) * len(seeds) - len(todo)} done before")
    if todo:
        from .driver import prepare

        run, again = prepare(run_options, space, write), f"confirm {options.name} --seeds {len(seeds)}"
        if continue_killed(run, run_options, todo, write, again):
            todo = pending(experiment, planned)  # what the restored run did not finish (failed, new seeds)
        if todo:
            run_trials(run, run_options, todo, again)
        del run
    from .driver import finish

    finish(experiment, run_options, write)
    return experiment


def run_trials(run, options: SweepOptions, todo: list[dict], again: str) -> None:
    """One fresh Tuner over the planned confirmation trials (``todo``), no scheduler, no Optuna; ``run``: the
    sweep.driver.Run (driver.prepare) it runs in."""
    from ray import tune

    from .driver import fit, run_config, trial_dirname
    from .progress import LiveTable
    from .ray_tune import EndWriter, MissingCheckpoints

    callbacks = [MissingCheckpoints(), EndWriter(run.context), LiveTable(total=len(todo))]
    tuner = tune.Tuner(run.trainable,
                       tune_config=tune.TuneConfig(search_alg=PlannedTrials(todo), num_samples=len(todo),
                                                   reuse_actors=True, trial_dirname_creator=trial_dirname),
                       run_config=run_config(options, run, callbacks, storage_path=run.experiment, name=CONFIRM_DIR))
    fit(tuner, options, again=again)


def continue_killed(run, options: SweepOptions, todo: list[dict], write: Callable[[str], None], again: str) -> bool:
    """Restore the killed confirmation run saved in ``<experiment>/confirm/`` and finish it (driver.RESUME: its
    unfinished trials continue from their checkpoints, its errored ones stay errored); False, touching nothing,
    when there is none or it would run a trial that is not in ``todo`` (no longer planned, or finished)."""
    from ray import tune

    from .driver import RESUME, fit

    folder = experiment_path(run.experiment, CONFIRM_DIR)
    left = saved_run(folder)
    if not left or not left <= {cfg["_trial_id"] for cfg in todo}:
        return False
    write(f"confirmation: continuing the killed run's {len(left)} unfinished trials (from their last checkpoints; "
          f"Tune state in {CONFIRM_DIR}/)")
    fit(tune.Tuner.restore(folder, run.trainable, **RESUME), options, again=again)
    return True


def saved_run(folder: str) -> set[str] | None:
    """The row ids a killed confirmation run saved in ``folder`` still has to run: the trials of Tune's newest
    experiment state that had not ended (neither TERMINATED nor ERROR) and the planned ones its searcher had not
    handed out (PlannedTrials.save). None when there is no such state, or no searcher state beside it (a
    confirmation saved before PlannedTrials saved its own: it cannot be restored)."""
    import pyarrow.fs as pafs

    from results.files import resolve

    fs, base = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    paths = {posixpath.basename(i.path): i.path for i in infos}
    prefix, _, suffix = Searcher.CKPT_FILE_TMPL.partition("{}")

    def newest(start: str, end: str) -> dict | None:
        found = sorted(n for n in paths if n.startswith(start) and n.endswith(end))
        if not found:
            return None
        with fs.open_input_stream(paths[found[-1]]) as f:
            return json.loads(f.read())

    state, searcher = newest("experiment_state-", ".json"), newest(prefix, suffix)
    if state is None or searcher is None:
        return None
    left = {str(cfg["_trial_id"]) for cfg in searcher["configs"]}
    for trial, _metadata in state["trial_data"]:
        t = json.loads(trial)
        if t.get("status") not in ("TERMINATED", "ERROR"):
            left.add(str((t.get("config") or {}).get("_trial_id")))
    return left


class PlannedTrials(Searcher):
    """A Tune searcher that hands out a fixed list of trial configs, then says FINISHED."""

    def __init__(self, configs: list[dict]):
        super().__init__(metric="val_acc", mode="max")
        self.configs = list(configs)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric/mode are ours; Tune's param_space is empty

    def suggest(self, trial_id: str) -> dict | None:
        return self.configs.pop(0) if self.configs else self.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the rows are the record (the trainable, EndWriter); nothing is told to Optuna

    def save(self, checkpoint_path: str) -> None:
        """The configs not handed out yet, as JSON (Tune saves it beside its experiment state; saved_run reads
        it): a restored confirmation hands out exactly these."""
        with open(checkpoint_path, "w") as f:
            json.dump({"configs": self.configs}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.configs = json.load(f)["configs"]
