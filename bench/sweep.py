"""python -m bench.sweep: how much of a sweep's wall time is spent inside its trials.

A benchmark, not a test. It runs the same N tiny trials twice:

1. back to back in this process through ``trainables.trial.run_trial``: one shared ``FileDenseStore`` (the
   dense model is trained once, as in a sweep), a report callable (so every epoch writes its checkpoint, as in
   a sweep), each trial's Parquet tables written (as in a sweep);
2. as a sweep through the public API ``sweep.run_sweep``: ``--local``, every searched parameter fixed with
   ``--set`` so both runs do the same work, ``--max-concurrent`` 1 by default, a temporary ``--storage``.

The fixed costs are timed on their own first: importing Ray Tune and Optuna, and starting Ray
(``ray.init(address="local")``, what ``--local`` does); ``run_sweep`` then uses that instance. Figures, each
next to its target:

- in-trial share = sum of the trials' own ``wall_time_s`` (the sweep's ``results/trials`` table) / (sweep wall
  x concurrency), without and with the fixed costs (target >= 0.85);
- per-trial overhead = (sweep wall - back-to-back wall) / N and (sweep wall - in-trial time) / N; the target is
  what the share target allows: (1/0.85 - 1) x the mean in-trial time.

The share counts a trial that runs slower inside the sweep (a cold worker process, CPU taken by Ray's own
processes) as time inside trials; the overhead against back to back does not, so it is the stricter figure.
On a small shared machine the figures move by a second or more per trial from run to run: compare runs, not
single numbers.

Where the rest goes comes from Ray's task timeline (``ray.timeline()``, read before Ray shuts down): the
driver's set-up before the first trial's actor exists, the gaps between one trial's end (actor stopped, or
reset when Tune reuses actors) and the next one's start, the round trips of each report to the driver, the
tail after the last trial; and each trial's ``train()`` calls (one per report) against the same stretch back
to back, which shows what a cold worker process costs inside the trainable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

TARGET_SHARE = 0.85  # of the sweep's wall time (times its concurrency) spent inside run_trial

# The tiny trial: synthetic data, MobileNetV2 at width 0.1, one epoch per phase, one intra-op thread.
TINY: dict[str, Any] = {
    "arch": "mobilenet_v2", "dataset": "synthetic", "width": 0.1, "dense_epochs": 1, "sparsify_epochs": 1,
    "finetune_epochs": 1, "synthetic_train": 512, "synthetic_test": 128, "batch_size": 64, "max_threads": 1,
    "seed": 0,
}
# Every parameter a built-in space searches, fixed: both runs do exactly the same work.
FIXED: dict[str, dict[str, Any]] = {
    "admm": {"method": "admm", "lr": 1e-3, "sparsity": 0.5, "rho": 0.01, "rho_growth": 1.0, "admm_interval": 0.25,
             "rho_max": 10.0},
    "baseline": {"method": "magnitude", "lr": 1e-3, "sparsity": 0.5, "schedule": "per_step"},
}
# Options of `python -m sweep run` that are not --set; method and seed come from the space and --seeds, and
# rho_max is fixed by the admm space itself.
_CLI_KEYS = {"arch": "--arch", "dataset": "--dataset", "width": "--width", "dense_epochs": "--dense-epochs",
             "sparsify_epochs": "--sparsify-epochs", "finetune_epochs": "--finetune-epochs"}
_NOT_SET = {"method", "seed", "rho_max"}


def trial_config(space: str) -> dict[str, Any]:
    """The flat TrialConfig dict every benchmark trial runs (the same in both runs)."""
    return {**TINY, **FIXED[space]}


def sweep_argv(space: str, trials: int, concurrent: int, storage: str, name: str) -> list[str]:
    """``run_sweep`` argv that runs ``trials`` copies of :func:`trial_config` (nothing left to search)."""
    argv = ["run", "--space", space, "--local", "--trials", str(trials), "--seeds", "1",
            "--max-concurrent", str(concurrent), "--cpus-per-trial", "1", "--gpus-per-trial", "0",
            "--storage", storage, "--name", name]
    for key, value in trial_config(space).items():
        if key in _CLI_KEYS:
            argv += [_CLI_KEYS[key], str(value)]
        elif key not in _NOT_SET:
            argv += ["--set", f"{key}={value}"]
    return argv


# -- run 1: back to back ---------------------------------------------------------------------------------
def run_back_to_back(flat: dict[str, Any], n: int, folder: str) -> dict[str, Any]:
    """Run ``n`` trials one after the other in this process; seconds spent, by trial and by stretch.

    ``segments[i]`` are trial i's stretches between reports: call -> 1st report, 1st -> 2nd ..., last report
    -> return (the same stretches a sweep trial's ``train()`` calls cover). Writes dense models and Parquet
    tables under ``folder`` (checkpoints are deleted again by run_trial).
    """
    from vocabulary.config import TrialConfig
    from trainables.data import load_splits
    from trainables.dense_store import FileDenseStore
    from trainables.trial import run_trial

    cfg = TrialConfig.from_dict(flat)
    t0 = time.perf_counter()
    data = load_splits(cfg.data)  # the sweep's driver loads it once too
    load_s = time.perf_counter() - t0
    store = FileDenseStore(os.path.join(folder, "dense"))
    out: dict[str, list] = {"trial_s": [], "in_trial_s": [], "write_s": [], "segments": []}
    for i in range(n):
        stamps = [time.perf_counter()]
        result = run_trial(cfg, data=data, report=lambda metrics, checkpoint_dir: stamps.append(time.perf_counter()),
                           dense_store=store, trial_id=f"b2b-{i}")
        stamps.append(time.perf_counter())
        result.write(folder, trial_id=f"b2b-{i}", experiment="bench")
        out["write_s"].append(time.perf_counter() - stamps[-1])
        out["trial_s"].append(stamps[-1] - stamps[0])
        out["in_trial_s"].append(float(result.summary["wall_time_s"]))
        out["segments"].append([b - a for a, b in zip(stamps, stamps[1:])])
    return {"wall_s": time.perf_counter() - t0, "load_s": load_s, **out}


# -- run 2: the sweep ------------------------------------------------------------------------------------
def import_sweep_modules() -> float:
    """Import what a sweep imports on top of torch (Ray Tune, Optuna, our Ray module); seconds it took."""
    t = time.perf_counter()
    import optuna  # noqa: F401
    from ray import tune  # noqa: F401

    from sweep import ray_tune, searcher  # noqa: F401
    return time.perf_counter() - t


def start_ray() -> float:
    """Start a new local Ray instance as ``--local`` does; seconds it took."""
    import ray

    t = time.perf_counter()
    ray.init(address="local")
    return time.perf_counter() - t


def run_sweep_timed(argv: list[str]) -> tuple[float, float, float, str]:
    """(seconds, start, end as time.time(), experiment folder) of ``sweep.run_sweep(argv)``, Ray started."""
    import contextlib

    from sweep import run_sweep

    start, t = time.time(), time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Tune's banners: keep stdout for the figures (--json)
        experiment = run_sweep(argv, write=lambda s: None)
    return time.perf_counter() - t, start, time.time(), experiment


def sweep_trial_times(experiment: str) -> list[float]:
    """Each trial's own ``wall_time_s`` from the sweep's Parquet ``results/trials`` table, in the order the
    searcher handed the trials out (Optuna trial number; one seed, one trial at a time: start order)."""
    import pandas as pd

    trials = pd.read_parquet(os.path.join(experiment, "results", "trials")).sort_values("optuna_trial")
    return [float(x) for x in trials["wall_time_s"]]


def trial_spans(events: list[dict]) -> list[dict[str, Any]]:
    """Per trial in a ``ray.timeline()`` trace, in start order: its actor's first event or its ``reset``
    (a reused actor), its end (the actor's last event, or the next reset), and its ``train()`` calls as
    (start, seconds), all in seconds since the epoch. A trial actor is a worker that ran ``train``."""
    by_worker: dict[str, list[dict]] = {}
    for e in events:
        if e.get("ph") == "X" and str(e.get("tid", "")).startswith("worker:") and not e["name"].startswith("task:"):
            by_worker.setdefault(e["tid"], []).append(e)
    spans: list[dict[str, Any]] = []
    for evs in by_worker.values():
        if not any(e["name"] == "train" for e in evs):
            continue  # the dense-store actor, idle workers
        evs.sort(key=lambda e: e["ts"])
        current: dict[str, Any] = {"first": evs[0]["ts"] / 1e6, "train": []}
        for e in evs:
            start, end = e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6
            if e["name"] == "reset":  # Tune reuses this actor: the next trial starts here
                current["end"] = start
                spans.append(current)
                current = {"first": start, "train": []}
            elif e["name"] == "train":
                current["train"].append((start, end - start))
            current["end"] = end
        spans.append(current)
    return sorted((s for s in spans if s["train"]), key=lambda s: s["first"])


def breakdown(spans: list[dict[str, Any]], start: float, end: float, concurrent: int) -> dict[str, Any]:
    """Where the sweep's wall time goes, from :func:`trial_spans` and run_sweep's start and end.

    Gaps between trials are only meaningful one trial at a time; with concurrency they are left out.
    """
    if not spans:
        return {}
    out: dict[str, Any] = {
        "before_first_trial_s": spans[0]["first"] - start,  # imports, validation, dataset, actors, Tuner
        "after_last_trial_s": end - max(s["end"] for s in spans),  # final sync, builds.json, summary
        "train_calls_s": [[d for _, d in s["train"]] for s in spans],
        # the training thread waits for the driver to take each result before it goes on
        "report_round_trips_s": [sum(b[0] - (a[0] + a[1]) for a, b in zip(s["train"], s["train"][1:]))
                                 for s in spans],
        "actor_head_s": [s["train"][0][0] - s["first"] for s in spans],  # actor created/reset -> 1st train()
        "actor_tail_s": [s["end"] - (s["train"][-1][0] + s["train"][-1][1]) for s in spans],  # -> stop/reset
    }
    if concurrent == 1:
        out["between_trials_s"] = [b["first"] - a["end"] for a, b in zip(spans, spans[1:])]
    return out


# -- figures -----------------------------------------------------------------------------------------------
def figures(n: int, concurrent: int, import_s: float, ray_start_s: float, sweep_s: float, in_trial: list[float],
            b2b: dict[str, Any], where: dict[str, Any], load: list[float]) -> dict[str, Any]:
    """Every reported number, in one dict (``--json`` prints it as is). ``load``: 1-min load averages seen
    before and after the runs (other work on the machine skews every figure)."""
    in_sum = sum(in_trial)
    slots = max(concurrent, 1)
    fixed = import_s + ray_start_s
    out = {
        "trials": n, "concurrent": concurrent, "cpus": os.cpu_count(), "load_average": load,
        "import_s": import_s, "ray_start_s": ray_start_s,
        "sweep_wall_s": sweep_s, "sweep_wall_with_fixed_s": sweep_s + fixed, "in_trial_s": in_sum,
        "in_trial_share": in_sum / (sweep_s * slots),
        "in_trial_share_with_fixed": in_sum / ((sweep_s + fixed) * slots),
        "target_share": TARGET_SHARE,
        "overhead_vs_back_to_back_s": (sweep_s - b2b["wall_s"]) / n,
        "overhead_vs_in_trial_s": (sweep_s - in_sum / slots) / n,
        "target_overhead_s": (1 / TARGET_SHARE - 1) * in_sum / max(len(in_trial), 1),
        "back_to_back_wall_s": b2b["wall_s"], "back_to_back_in_trial_s": sum(b2b["in_trial_s"]),
        "back_to_back_load_s": b2b["load_s"], "back_to_back_write_s": sum(b2b["write_s"]),
        "back_to_back_segments_s": b2b["segments"],
        "sweep_trial_wall_s": in_trial, "back_to_back_trial_wall_s": b2b["in_trial_s"],
        "where": where,
    }
    return out


def _secs(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def render(f: dict[str, Any]) -> str:
    """Human-readable lines: the share figures with their target and OK/MISS, then where the time goes."""
    def verdict(ok: bool) -> str:
        return "OK" if ok else "MISS"

    share_t, over_t = f["target_share"], f["target_overhead_s"]
    lines = [
        f"bench.sweep: {f['trials']} trials, max concurrent {f['concurrent']} (1 CPU, 1 thread per trial); "
        f"{f['cpus']} CPUs, load average before/after {' / '.join(f'{x:.2f}' for x in f['load_average'])}",
        f"fixed: import Ray Tune + Optuna    {f['import_s']:7.2f} s  (info)",
        f"fixed: Ray start-up (ray.init)     {f['ray_start_s']:7.2f} s  (info)",
        f"sweep wall (run_sweep)             {f['sweep_wall_s']:7.2f} s  (with fixed costs "
        f"{f['sweep_wall_with_fixed_s']:.2f} s)",
        f"back-to-back wall (run_trial x N)  {f['back_to_back_wall_s']:7.2f} s  (dataset load "
        f"{f['back_to_back_load_s']:.2f} s, Parquet writes {f['back_to_back_write_s']:.2f} s)",
        f"in-trial time (sum wall_time_s)    {f['in_trial_s']:7.2f} s  (back to back "
        f"{f['back_to_back_in_trial_s']:.2f} s)",
        f"in-trial share                     {f['in_trial_share']:7.2f}    (target >= {share_t:.2f}) "
        f"{verdict(f['in_trial_share'] >= share_t)}",
        f"in-trial share with fixed costs    {f['in_trial_share_with_fixed']:7.2f}    "
        f"(target >= {share_t:.2f}) {verdict(f['in_trial_share_with_fixed'] >= share_t)}",
        f"per-trial overhead vs back to back {f['overhead_vs_back_to_back_s']:7.2f} s  "
        f"(target <= {over_t:.2f} s) {verdict(f['overhead_vs_back_to_back_s'] <= over_t)}",
        f"per-trial overhead vs in-trial     {f['overhead_vs_in_trial_s']:7.2f} s  "
        f"(target <= {over_t:.2f} s) {verdict(f['overhead_vs_in_trial_s'] <= over_t)}",
        f"trial wall_time_s, sweep:          {_secs(f['sweep_trial_wall_s'])}",
        f"trial wall_time_s, back to back:   {_secs(f['back_to_back_trial_wall_s'])}",
    ]
    slower = f["in_trial_s"] / max(f["back_to_back_in_trial_s"], 1e-9) - 1
    if slower > 0.05:
        lines.append(f"note: run_trial took {slower:.0%} longer inside the sweep than back to back; the share "
                     "counts that as in-trial time")
    w = f["where"]
    if not w:
        lines.append("where the time goes: no Ray timeline (task events disabled?)")
        return "\n".join(lines)
    lines += [
        "where the sweep's time goes (Ray timeline):",
        f"  driver set-up before 1st trial actor  {w['before_first_trial_s']:6.2f} s",
    ]
    if w.get("between_trials_s"):
        lines.append(f"  one trial's end -> next one's start  {_secs(w['between_trials_s'])} s")
    lines += [
        f"  actor created/reset -> 1st train()   {_secs(w['actor_head_s'])} s",
        f"  report round trips, per trial         {_secs(w['report_round_trips_s'])} s",
        f"  last train() -> actor stopped/reset  {_secs(w['actor_tail_s'])} s",
        f"  after last trial (sync, summary)      {w['after_last_trial_s']:6.2f} s",
        "  train() calls vs the same stretch back to back (call->report 1, ..., last report->return):",
    ]
    for i, (calls, segs) in enumerate(zip(w["train_calls_s"], f["back_to_back_segments_s"])):
        lines.append(f"    trial {i}: sweep {_secs(calls)} | back to back {_secs(segs)} | extra "
                     f"{sum(calls) - sum(segs):+.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="N trials in each run")
    ap.add_argument("--concurrent", type=int, default=1,
                    help="--max-concurrent of the sweep (back to back stays sequential; the share divides by it)")
    ap.add_argument("--space", default="admm", choices=sorted(FIXED))
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary folder (results, Tune state, timeline.json) and print where it is")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead of text")
    a = ap.parse_args(argv)
    if a.trials < 1 or a.concurrent < 1:
        ap.error("--trials and --concurrent must be >= 1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here; keep Ray from trying
    folder = tempfile.mkdtemp(prefix="sweep-bench-")
    load = [os.getloadavg()[0]]
    try:
        b2b = run_back_to_back(trial_config(a.space), a.trials, os.path.join(folder, "back_to_back"))
        import_s = import_sweep_modules()
        ray_start_s = start_ray()
        import ray

        try:
            sweep_s, start, end, experiment = run_sweep_timed(
                sweep_argv(a.space, a.trials, a.concurrent, os.path.join(folder, "sweeps"), "bench"))
            events = ray.timeline()
        finally:
            ray.shutdown()
        in_trial = sweep_trial_times(experiment)
        if len(in_trial) != a.trials or any(x != x for x in in_trial):  # x != x: NaN, a failed trial's row
            print(f"warning: {len(in_trial)} trial rows, expected {a.trials} finished ones; see the sweep's "
                  "errors above (--keep keeps its folder)", file=sys.stderr)
        where = breakdown(trial_spans(events or []), start, end, a.concurrent)
        load.append(os.getloadavg()[0])
        f = figures(a.trials, a.concurrent, import_s, ray_start_s, sweep_s, in_trial, b2b, where, load)
        print(json.dumps(f, indent=1) if a.json else render(f))
        if a.keep:
            with open(os.path.join(folder, "timeline.json"), "w") as fh:  # chrome://tracing, Perfetto
                json.dump(events or [], fh)
            print(f"kept: {folder} (timeline.json: Ray's task timeline of the sweep)", file=sys.stderr)
    finally:
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
