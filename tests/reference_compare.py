"""Compare the project's trial (trainables.trial.run_trial) with the independent reference loop.

Runs magnitude (per_step), ADMM rho=0.01 and ADMM rho=1.0 with BOTH implementations over the given seeds
(the dense phase of a seed is shared between its methods in each implementation) and prints one Markdown
table of mean stage accuracies (project, reference, difference in points) plus the ADMM primal residuals
over the sparsify phase. The two implementations use different random streams, so they agree in
distribution, not bit for bit: judge a difference against the seed-to-seed spread (the sd columns).

    python tests/reference_compare.py --make-data data/photo --seeds 0,1,2 --out reference_compare.md
    python tests/reference_compare.py --data-dir data/photo --seeds 0 --dense-epochs 1 --sparsify-epochs 3 \\
        --finetune-epochs 1 --threads 1 --out smoke.md          # a quick smoke run

The project refuses an ADMM sparsify phase with fewer than 2 Z/U updates before its last step, i.e. fewer
than 3 sparsify epochs at admm_interval 1 epoch; every project configuration is checked before anything
runs. On a busy 2-core machine prefer --threads 1 (two intra-op threads competing with other processes
were several times slower per step than one).

--paired hands the project's random draws to the reference (its init seed, the global seed at each
phase's start, every epoch's order, crop offsets and flips, and the BN-recalibration order; see
reference_loop.Draws): the seed-to-seed spread then drops out of the comparison, and the two runs of a seed
must agree to floating-point noise at every stage. --optimizer sgd --lr 0.05 runs the sparsify and
fine-tune phases with SGD instead of Adam (the ADMM primal residual's behaviour depends on it).

Raw per-run numbers go to a JSON file beside --out (``--json`` to choose it), rewritten after every run, so
``--resume`` skips the runs it already holds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from tests.photo_cifar import write_photo_cifar  # noqa: E402
from tests.reference_loop import STAGES, Draws, run_reference  # noqa: E402

# (label, method, rho) of the compared configurations
RUNS = (("magnitude per_step", "magnitude", 0.01), ("admm rho=0.01", "admm", 0.01), ("admm rho=1.0", "admm", 1.0))
SPLITS = ("val", "test")


def project_config(args, method: str, rho: float, seed: int) -> dict:
    from vocabulary.config import field_owners

    cfg = {"dataset": "cifar10", "data_dir": args.data_dir, "arch": args.arch, "width": args.width,
           "method": method, "schedule": "per_step", "sparsity_set": "uniform", "sparsity": args.sparsity,
           "optimizer": args.optimizer, "lr": args.lr, "dense_epochs": args.dense_epochs,
           "sparsify_epochs": args.sparsify_epochs, "finetune_epochs": args.finetune_epochs, "rho": rho,
           "rho_max": max(rho, 1.0), "admm_interval": 1, "admm_interval_unit": "epoch", "seed": seed,
           "device": "cpu", "max_threads": args.threads, "batch_size": getattr(args, "batch_size", 128)}
    if "dense_control" in field_owners():
        cfg["dense_control"] = False
    return cfg


def check_project_configs(args, seeds) -> None:
    """Validate every project configuration (and, where the project has it, its data-dependent check)."""
    from vocabulary.config import TrialConfig
    from trainables.data import load_splits

    for seed in seeds:
        for _, method, rho in RUNS:
            cfg = TrialConfig.from_dict(project_config(args, method, rho, seed))
            try:
                from trainables.trial import check_trial
            except ImportError:
                continue
            check_trial(cfg, load_splits(cfg.data))


def run_project(args, method: str, rho: float, seed: int, store_dir: str) -> dict:
    from trainables.dense_store import FileDenseStore
    from trainables.trial import run_trial

    t0 = time.monotonic()
    res = run_trial(project_config(args, method, rho, seed), dense_store=FileDenseStore(store_dir))
    accs = {f"{st}_{sp}_acc": float(res.summary.get(f"{st}_{sp}_acc", math.nan)) for st in STAGES for sp in SPLITS}
    primal = [float(r["primal_residual"]) for r in res.epochs if r.get("phase") == "sparsify"]
    return dict(accs, primal_residuals=primal, status=res.summary.get("status"),
                dense_distance=res.summary.get("dense_distance"), pre_prune_distance=res.summary.get("pre_prune_distance"),
                achieved_sparsity=res.summary.get("achieved_sparsity"), seconds=time.monotonic() - t0)


def project_draws(args, seed: int) -> Draws:
    """The random draws the project makes for ``seed`` (init and phase seeds, every epoch's plan, the
    recalibration order), as plain values for a paired reference run. Reads the project's loaders; the
    reference only receives numbers and tensors."""
    import torch

    from vocabulary.config import TrialConfig
    from trainables.data import load_splits
    from trainables.trial import Loaders, seed_everything

    cfg = TrialConfig.from_dict(project_config(args, "magnitude", 0.01, seed))
    loaders = Loaders(cfg, load_splits(cfg.data), torch.device("cpu"))
    seeds = {}
    for phase in ("init", "dense", "sparsify", "finetune"):
        seed_everything(seed, phase)
        seeds[phase] = torch.initial_seed()
    d, s, f = args.dense_epochs, args.sparsify_epochs, args.finetune_epochs
    plans = {(phase, e): tuple(None if v is None else v.cpu() for v in loaders.train.epoch_plan(epoch0 + e))
             for phase, epoch0, n in (("dense", 0, d), ("sparsify", d, s), ("finetune", d + s, f))
             for e in range(n)}
    return Draws(seeds, plans, loaders.recal.epoch_plan(0)[0].cpu())


def run_ref(args, method: str, rho: float, seed: int, dense_dir: str) -> dict:
    import torch

    tag = "-paired" if args.paired else ""
    path = os.path.join(dense_dir, f"{args.arch}-w{args.width}-s{seed}-d{args.dense_epochs}{tag}.pt")
    dense = torch.load(path, weights_only=False) if os.path.exists(path) else None
    res = run_reference(args.data_dir, method=method, seed=seed, rho=rho, sparsity=args.sparsity, arch=args.arch,
                        width=args.width, dense_epochs=args.dense_epochs, sparsify_epochs=args.sparsify_epochs,
                        finetune_epochs=args.finetune_epochs, dense_state=dense, threads=args.threads,
                        optimizer=args.optimizer, lr=args.lr, batch_size=getattr(args, "batch_size", 128),
                        draws=project_draws(args, seed) if args.paired else None,
                        log=(lambda m: print(f"  [reference] {m}", file=sys.stderr, flush=True)))
    if dense is None:
        torch.save(res["dense_state"], path)
    keep = [f"{st}_{sp}_acc" for st in STAGES for sp in SPLITS] + ["primal_residuals", "achieved_sparsity", "seconds",
                                                                   "dense_distance", "pre_prune_distance"]
    return {k: res[k] for k in keep}


# ----------------------------------------------------------------------------------------------- report

def _stats(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan), len(vals)


def _pct(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{100 * v:.2f}"


def render(results: dict, seeds: list[int], args) -> str:
    def get(impl, label, key):
        return [results.get(f"{impl}|{label}|{s}", {}).get(key) for s in seeds]

    mode = "paired (the reference uses the project's random draws)" if getattr(args, "paired", False) else \
        "independent random streams"
    lines = [f"## Project vs reference: {args.arch} width {args.width}, sparsity {args.sparsity}, epochs "
             f"{args.dense_epochs}/{args.sparsify_epochs}/{args.finetune_epochs}, sparsify/fine-tune "
             f"{getattr(args, 'optimizer', 'adam')} lr {getattr(args, 'lr', 1e-3):g}, seeds "
             f"{','.join(map(str, seeds))}, {mode}",
             "", "Accuracies in %, mean over seeds (sd: standard deviation over seeds); difference = project - "
                 "reference in points; largest = the largest |project - reference| of one seed.", "",
             "| method | stage | split | n (project/ref) | project mean | project sd | reference mean | reference sd "
             "| difference (points) | largest per seed (points) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, _, _ in RUNS:
        for stage in STAGES:
            for split in SPLITS:
                key = f"{stage}_{split}_acc"
                pm, psd, pn = _stats(get("project", label, key))
                rm, rsd, rn = _stats(get("reference", label, key))
                diff = f"{100 * (pm - rm):+.2f}" if math.isfinite(pm) and math.isfinite(rm) else "—"
                pairs = [abs(p - r) for p, r in zip(get("project", label, key), get("reference", label, key))
                         if p is not None and r is not None and math.isfinite(p) and math.isfinite(r)]
                largest = f"{100 * max(pairs):.2f}" if pairs else "—"
                lines.append(f"| {label} | {stage} | {split} | {pn}/{rn} | {_pct(pm)} | {_pct(psd)} | {_pct(rm)} | "
                             f"{_pct(rsd)} | {diff} | {largest} |")
    lines += ["", "### ADMM primal residual sum ||W - Z||_F^2 after each Z/U update (mean over seeds)", "",
              "Epoch 0: the dense model's distance to the sparse set, sum ||W - Proj(W)||^2 (the residual before "
              "any update); \"pre-prune\": the same distance right before the hard projection.", "",
              "| method | sparsify epoch | project | reference | project / reference |", "|---|---|---|---|---|"]

    def row(label, name, p, r):
        ratio = f"{p / r:.3f}" if math.isfinite(p) and math.isfinite(r) and r != 0 else "—"
        return f"| {label} | {name} | {p:.5g} | {r:.5g} | {ratio} |"

    for label, method, _ in RUNS:
        if method != "admm":
            continue
        lines.append(row(label, "0 (dense)", _stats(get("project", label, "dense_distance"))[0],
                         _stats(get("reference", label, "dense_distance"))[0]))
        for e in range(args.sparsify_epochs):
            def at(impl):
                vals = [r[e] if r is not None and len(r) > e else None for r in get(impl, label, "primal_residuals")]
                return _stats(vals)[0]
            lines.append(row(label, str(e + 1), at("project"), at("reference")))
        lines.append(row(label, "pre-prune", _stats(get("project", label, "pre_prune_distance"))[0],
                         _stats(get("reference", label, "pre_prune_distance"))[0]))
    per_seed = {}  # mean seconds of each run, summed over the methods (the first of a seed trains the dense model)
    for impl in ("project", "reference"):
        means = [_stats(get(impl, label, "seconds"))[0] for label, _, _ in RUNS]
        per_seed[impl] = sum(m for m in means if math.isfinite(m))
    lines += ["", f"Wall time per seed (all three methods, dense phase included once): project "
                  f"{per_seed['project']:.0f} s, reference {per_seed['reference']:.0f} s."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Project vs independent reference loop on a CIFAR-layout dataset.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", help="folder holding cifar-10-batches-py (or that folder itself)")
    src.add_argument("--make-data", metavar="DIR", help="build the photo dataset into DIR first, then use it")
    ap.add_argument("--n-train", type=int, default=2000, help="--make-data: training images (default 2000)")
    ap.add_argument("--n-test", type=int, default=500, help="--make-data: test images (default 500)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated trial seeds (default 0,1,2)")
    ap.add_argument("--dense-epochs", type=int, default=8)
    ap.add_argument("--sparsify-epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--arch", default="mobilenet_v3_small")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="sparsify/fine-tune optimizer")
    ap.add_argument("--lr", type=float, default=1e-3, help="sparsify/fine-tune learning rate (default 1e-3)")
    ap.add_argument("--paired", action="store_true", help="the reference uses the project's random draws")
    ap.add_argument("--runs", type=lambda v: [x.strip() for x in v.split(",")],
                    help="comma-separated subset of: " + ", ".join(label for label, _, _ in RUNS))
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both implementations (default 2)")
    ap.add_argument("--only", choices=("project", "reference"), help="run one implementation only")
    ap.add_argument("--out", default="reference_compare.md", help="where the Markdown table is written")
    ap.add_argument("--json", help="raw per-run results (default: --out with .json)")
    ap.add_argument("--work-dir", help="dense checkpoints of both implementations (default: a temporary folder, "
                                       "removed at the end); reuse only with unchanged code")
    ap.add_argument("--resume", action="store_true", help="skip the runs already in the JSON file")
    args = ap.parse_args(argv)
    unknown = [r for r in args.runs or [] if r not in [label for label, _, _ in RUNS]]
    if unknown:
        ap.error(f"--runs: {', '.join(unknown)} not among {', '.join(label for label, _, _ in RUNS)}")

    if args.make_data:
        t = time.monotonic()
        write_photo_cifar(args.make_data, n_train=args.n_train, n_test=args.n_test, seed=0)
        print(f"photo dataset written to {args.make_data} in {time.monotonic() - t:.1f} s", file=sys.stderr)
        args.data_dir = args.make_data
    args.data_dir = os.path.abspath(args.data_dir)  # the project's dense key includes data_dir
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    json_path = args.json or os.path.splitext(args.out)[0] + ".json"
    results: dict = {}
    if args.resume and os.path.exists(json_path):
        with open(json_path) as f:
            saved = json.load(f)
        same = ("data_dir", "arch", "width", "sparsity", "dense_epochs", "sparsify_epochs", "finetune_epochs",
                "optimizer", "lr", "paired")
        changed = [k for k in same if saved["args"].get(k) != getattr(args, k)]
        if changed:
            ap.error(f"--resume: {json_path} was made with other {', '.join(changed)}")
        results = saved["results"]
    work = args.work_dir or tempfile.mkdtemp(prefix="reference-compare-")
    store_dir, ref_dir = os.path.join(work, "project_dense"), os.path.join(work, "reference_dense")
    os.makedirs(store_dir, exist_ok=True)
    os.makedirs(ref_dir, exist_ok=True)
    impls = [i for i in ("project", "reference") if args.only in (None, i)]
    if "project" in impls:
        check_project_configs(args, seeds)  # fail now, not after an hour of the other runs
    try:
        for seed in seeds:
            for impl in impls:
                for label, method, rho in [r for r in RUNS if args.runs is None or r[0] in args.runs]:
                    key = f"{impl}|{label}|{seed}"
                    if key in results:
                        continue
                    print(f"[{impl}] {label} seed {seed} ...", file=sys.stderr, flush=True)
                    run = run_project if impl == "project" else run_ref
                    results[key] = run(args, method, rho, seed, store_dir if impl == "project" else ref_dir)
                    r = results[key]
                    print(f"[{impl}] {label} seed {seed}: final val {r['final_val_acc']:.4f} test "
                          f"{r['final_test_acc']:.4f} ({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
                    with open(json_path, "w") as f:
                        json.dump({"args": vars(args), "results": results}, f, indent=1)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    table = render(results, seeds, args)
    with open(args.out, "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
