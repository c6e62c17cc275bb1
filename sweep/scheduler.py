"""Early stopping that compares like with like (DESIGN rules 14 and 15): asynchronous successive halving
over CONFIGURATIONS, with rungs per study, on a fidelity every method shares.

Why not Ray's ``ASHAScheduler``: it puts every trial in one bracket, so (measured) a weak architecture's trials
were stopped against a strong one's and ADMM's against magnitude's; it stops Ray trials, i.e. single seeds, so a
2-seed sweep had one seed of EVERY configuration stopped and Optuna never saw a complete value; and it ranks
whatever ``metric`` is, which for ADMM during sparsify was the accuracy of weights that are not sparse yet.

Here:

- a rung belongs to one study (one (arch, method) pair): configurations are only ranked against configurations
  of the same study;
- a configuration (one Optuna trial, ``seeds`` Ray trials) reaches a rung when every seed has reported at
  that milestone; its value there is the mean over its seeds, and it is compared, as in ASHA, with the
  ``1 - 1/reduction_factor`` quantile of the configurations that reached the rung before it;
- a configuration's seeds stop together: once it is stopped, each of its seeds stops at its next report. A
  seed that diverges stops its siblings too (divergence is a property of the configuration: it can no longer be
  chosen, rule 15);
- the metric is ``projected_val_acc``: the validation accuracy of a projected copy of the weights (what the
  trial would score if it were pruned onto its target set now, BN recalibrated), the same quantity for every
  method.

Milestones are ``grace_period * reduction_factor**k`` reports, strictly below ``max_t`` (a trial's last report
is its final one, marked ``trial_done``: stopping it there would change nothing but its label).

The state lives in ``<experiment>/early_stopping.state`` (JSON) (written through results.files after every change), so a
resumed sweep (Tune does not save its scheduler) continues with the same rungs and stopped configurations.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["ConfigurationASHA", "milestones", "quantile", "FIDELITY", "STATE_FILE"]

log = logging.getLogger(__name__)

FIDELITY = "projected_val_acc"  # the one metric early stopping reads (results.schema EPOCHS column)
# JSON, but not named *.json: Tune copies every top-level *.json and *.pkl of the experiment folder into its
# staging folder when it restores a sweep and uploads those copies back on every later sync, so a file of ours
# named so would be overwritten with its state as of the resume (measured: the rungs stopped growing)
STATE_FILE = "early_stopping.state"


def milestones(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The rungs, in reports: grace_period * rf**k for k = 0, 1, ... while below max_t."""
    out, t = [], float(grace_period)
    while t < max_t:
        out.append(int(round(t)))
        t *= reduction_factor
    return sorted(set(out))


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class ConfigurationASHA(FIFOScheduler):
    """ASHA over configurations, rungs per study (see the module docstring). Mode: maximise ``metric``.

    A configuration is ``(trial.config["_study"], trial.config["_optuna_trial"])``; a trial without them (run
    outside our searcher) is a configuration of its own with one seed.
    """

    def __init__(self, *, max_t: int, seeds: int, grace_period: int = 1, reduction_factor: float = 4,
                 metric: str = FIDELITY, time_attr: str = "training_iteration", experiment: str | None = None):
        super().__init__()
        self._supports_buffered_results = False  # every report seen as it comes (Tune would batch them)
        if reduction_factor <= 1 or grace_period < 1 or max_t < 1 or seeds < 1:
            raise ValueError("ConfigurationASHA needs reduction_factor > 1, grace_period >= 1, max_t >= 1, "
                             "seeds >= 1")
        self._metric, self._mode = metric, "max"
        self.time_attr, self.seeds = time_attr, seeds
        self.rf = reduction_factor
        self.milestones = milestones(max_t, grace_period, reduction_factor)
        self.experiment = experiment
        # "<study>|<milestone>" -> {"<config>": {"<seed>": value}}: what each seed reported at the milestone
        self.values: dict[str, dict[str, dict[str, float]]] = {}
        # "<study>|<milestone>" -> {"<config>": mean}: configurations that reached the rung, in order
        self.rungs: dict[str, dict[str, float]] = {}
        self.stopped: dict[str, str] = {}  # "<study>|<config>" -> why
        self._load()

    # -- identity ------------------------------------------------------------------------------------
    def _ids(self, trial: "Trial") -> tuple[str, str, str, int]:
        c = trial.config
        if "_study" in c and "_optuna_trial" in c:
            return str(c["_study"]), str(c["_optuna_trial"]), str(c.get("seed", 0)), self.seeds
        return "-", trial.trial_id, "0", 1

    # -- Tune API ------------------------------------------------------------------------------------
    def on_trial_result(self, tune_controller, trial: "Trial", result: dict) -> str:
        study, config, seed, n_seeds = self._ids(trial)
        key = f"{study}|{config}"
        if key in self.stopped:
            return TrialScheduler.STOP
        if result.get("status") == "diverged":
            self._stop(key, f"seed {seed} diverged")
            return TrialScheduler.CONTINUE  # its own final report: it ends by itself
        if result.get("trial_done") or self.time_attr not in result:
            return TrialScheduler.CONTINUE
        value = result.get(self._metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return TrialScheduler.CONTINUE
        action = self.record(study, config, seed, n_seeds, int(result[self.time_attr]), float(value))
        self._save()
        return action

    def record(self, study: str, config: str, seed: str, n_seeds: int, t: int, value: float) -> str:
        """Record one seed's value at every milestone it has passed; decide the configuration at each rung
        where all its seeds are now in. Returns STOP or CONTINUE for this seed."""
        for m in self.milestones:
            if t < m:
                break
            at = self.values.setdefault(f"{study}|{m}", {}).setdefault(config, {})
            if seed in at:
                continue
            at[seed] = value
            rung = self.rungs.setdefault(f"{study}|{m}", {})
            if len(at) < n_seeds or config in rung:
                continue  # the decision waits for the configuration's last seed
            mean = sum(at.values()) / len(at)
            others = list(rung.values())
            rung[config] = mean
            if others:
                cutoff = quantile(others, 1 - 1 / self.rf)
                if mean < cutoff:
                    self._stop(f"{study}|{config}", f"mean {mean:.4f} over {len(at)} seeds below the rung-{m} "
                                                    f"cutoff {cutoff:.4f} of {len(others)} configurations")
                    return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _stop(self, key: str, why: str) -> None:
        if key not in self.stopped:
            self.stopped[key] = why
            log.info("early stopping configuration %s: %s", key, why)
            self._save()

    def is_stopped(self, study: str, config: Any) -> bool:
        return f"{study}|{config}" in self.stopped

    def debug_string(self) -> str:
        return f"ConfigurationASHA: milestones {self.milestones}, {len(self.stopped)} configurations stopped"

    # -- persistence (Tune does not save schedulers) -------------------------------------------------
    def _state(self) -> dict:
        return {"milestones": self.milestones, "values": self.values, "rungs": self.rungs, "stopped": self.stopped}

    def _save(self) -> None:
        if not self.experiment:
            return
        from results.files import write_bytes

        write_bytes(self.experiment, STATE_FILE, json.dumps(self._state(), sort_keys=True).encode())

    def _load(self) -> None:
        if not self.experiment:
            return
        from results.files import read_bytes

        raw = read_bytes(self.experiment, STATE_FILE)
        if raw is None:
            return
        state = json.loads(raw)
        if state.get("milestones") != self.milestones:
            log.warning("%s has milestones %s, this sweep %s: starting the rungs afresh", STATE_FILE,
                        state.get("milestones"), self.milestones)
            return
        self.values, self.rungs, self.stopped = state["values"], state["rungs"], state["stopped"]

    def __setstate__(self, state: dict) -> None:
        # Tuner.restore unpickles the scheduler as it was when the sweep STARTED: read what it has done since
        self.__dict__.update(state)
        self._load()
