"""``python -m analysis report EXPERIMENT [EXPERIMENT ...] [--out DIR] [--sparsity S] [--reference METHOD] [--strict]``
``python -m analysis export EXPERIMENT --arch A --method M --sparsity S [--seed K] --out FILE [--format pt|onnx]``

An EXPERIMENT is a local experiment folder or an object-store URI (``s3://bucket/path``, with pyarrow's
options such as ``?endpoint_override=host:port&scheme=http``), read where it is; several are merged into one
report. The only place in ``analysis`` that writes files. Output goes to ``--out`` (default
``./reports/<name of the first experiment>``), never inside an experiment folder: a report must not change
the results it reports on. Exit codes: 0 ok, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys

from .export import FORMATS, export_command
from .importance import importance_data
from .load import (ExperimentError, check_experiment, display_name, load_tables, read_sweep_options,
                   require_finished, sweep_trials)
from .report import (build_report, figure_bytes, latex_notes, render_html, render_latex, render_markdown,
                     table_caption)
from .summary import search_info
from .tables import DEFAULT_REFERENCE, method_order, methods_of, reference_method, with_sweep_options

log = logging.getLogger("analysis")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="tables, figures, Markdown and HTML from experiment folders")
    rep.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                     help="experiment folder or object-store URI (s3://bucket/path[?endpoint_override=...]); "
                          "several are merged into one report")
    rep.add_argument("--out", help="output folder (default ./reports/<first experiment name>); "
                                   "must be outside every experiment folder")
    rep.add_argument("--sparsity", type=float, default=0.5,
                     help="sparsity level of the comparison table, a fraction in [0, 1) (default 0.5); a trial's "
                          "level is its nominal sparsity when its sparsity set reaches it, else its exact target "
                          "(N:M 2:4 on MobileNetV2: about 0.47)")
    rep.add_argument("--reference", metavar="METHOD",
                     help="the method every other method is compared with, each pair on its own (default: the "
                          f"experiments' sweep.json \"reference\", else {DEFAULT_REFERENCE}); it must have rows")
    rep.add_argument("--strict", action="store_true", help="fail on the first unreadable results file")
    rep.add_argument("--no-importance", action="store_true", help="skip Optuna hyperparameter importance")
    exp = sub.add_parser("export", help="the chosen configuration's pruned model as a standalone file "
                                        "(torch.export program, or ONNX)")
    exp.add_argument("experiment", metavar="EXPERIMENT", help="experiment folder or object-store URI")
    exp.add_argument("--arch", required=True, help="architecture, e.g. mobilenet_v2")
    exp.add_argument("--method", required=True, help="pruning method, e.g. admm")
    exp.add_argument("--sparsity", type=float, required=True, help="comparison level, a fraction in [0, 1)")
    exp.add_argument("--seed", type=int, help="which seed's model (default: the chosen configuration's lowest)")
    exp.add_argument("--out", required=True, help="file to write (its folder must exist)")
    exp.add_argument("--format", choices=FORMATS, default="pt",
                     help="pt: a torch.export program (torch.export.load(FILE).module()); onnx: ONNX "
                          "(input 'images', float NCHW in [0, 1], any batch) [default: pt]")
    return parser


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def _validate(args) -> tuple[list[str], str]:
    """Check every option before any work; raises ExperimentError naming the field."""
    if not 0.0 <= args.sparsity < 1.0:
        raise ExperimentError(f"--sparsity: {args.sparsity} is not a fraction in [0, 1)")
    exps = [check_experiment(e) for e in args.experiments]
    name = posixpath.basename(display_name(exps[0]).rstrip("/" + os.sep))
    out = os.path.abspath(args.out or os.path.join("reports", name))
    for exp in exps:
        if "://" not in exp and _inside(out, exp):
            raise ExperimentError(f"--out: {out} is inside the experiment folder {exp}; choose a folder outside it")
    return exps, out


def _reference(chosen: str | None, options: list[dict], trials) -> str:
    """The reference method: ``--reference`` (refused unless it has rows), else the one the experiments'
    sweep.json name (tables.reference_method; merged experiments naming different ones are refused)."""
    present = ", ".join(methods_of(trials))
    if chosen is not None:
        if chosen not in methods_of(trials):
            raise ExperimentError(f"--reference: {chosen!r} has no rows in these experiments; methods present: "
                                  f"{present}")
        return chosen
    named = method_order(reference_method(o) for o in options)
    if len(named) > 1:
        raise ExperimentError(f"--reference: the experiments' sweep.json name different reference methods "
                              f"({', '.join(named)}); choose one with --reference (methods present: {present})")
    return named[0]


def write_report(report, out: str) -> list[str]:
    """Write every table (raw CSV at full precision, LaTeX as shown), figure (PNG, SVG), report.md and
    report.html under ``out``; return the paths written."""
    os.makedirs(os.path.join(out, "tables"), exist_ok=True)
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    written = []
    for name, frame in report.tables.items():
        base = os.path.join(out, "tables", name)
        frame.to_csv(base + ".csv", index=False)
        with open(base + ".tex", "w") as fh:
            fh.write(render_latex(report.displays[name], table_caption(name, report), latex_notes(name, report)))
        written += [base + ".csv", base + ".tex"]
    figure_files = {}
    for name, fig in report.figures.items():
        for fmt in ("png", "svg"):
            path = os.path.join(out, "figures", f"{name}.{fmt}")
            with open(path, "wb") as fh:
                fh.write(figure_bytes(fig, fmt))
            written.append(path)
        figure_files[name] = f"figures/{name}.png"
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write(render_markdown(report, figure_files))
    with open(os.path.join(out, "report.html"), "w") as fh:
        fh.write(render_html(report))
    return written + [os.path.join(out, "report.md"), os.path.join(out, "report.html")]


def report_command(args) -> int:
    exps, out = _validate(args)
    tables = load_tables(exps, strict=args.strict)
    require_finished(tables)
    options = [read_sweep_options(e) for e in exps]
    reference = _reference(args.reference, options, tables.trials)
    for path, reason in tables.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    importances = None if args.no_importance else importance_data(exps)
    search = search_info(options)
    # the sweep's --seeds: a configuration is judged on all of them (results.selection, DESIGN rule 15)
    tables.trials = with_sweep_options(tables.trials, {display_name(e): o for e, o in zip(exps, options)})
    report = build_report(tables, args.sparsity, importances, search, reference)
    write_report(report, out)
    print(f"report: {os.path.join(out, 'report.html')} ({len(tables.trials)} trials, "
          f"{len(tables.skipped)} files skipped)")
    return 0


def export(args) -> int:
    if not 0.0 <= args.sparsity < 1.0:
        raise ExperimentError(f"--sparsity: {args.sparsity} is not a fraction in [0, 1)")
    experiment = check_experiment(args.experiment)
    done = export_command(experiment, sweep_trials(experiment), arch=args.arch, method=args.method,
                          sparsity=args.sparsity, seed=args.seed, out=args.out, fmt=args.format)
    print(f"exported {args.arch} {args.method} at sparsity {args.sparsity:g}: trial {done['trial_id']} (seed "
          f"{done['seed']}, final val acc {done['final_val_acc']:.4f}, test {done['final_test_acc']:.4f}) -> "
          f"{done['out']} ({args.format})")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return export(args) if args.command == "export" else report_command(args)
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

