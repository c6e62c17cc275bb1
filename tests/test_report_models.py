"""The chosen models in the report (issues 15/18): their compressed file size beside nonzero parameters and
MACs, the command that exports each, and a flag wherever a prunable layer was pruned to zero (a cut network);
and the report's structure: one record per section, and no matplotlib backend chosen at import.

Trial rows come from tests/result_rows.py (a real TrialConfig's hyperparameter columns), built in memory as
analysis.load gives them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from result_rows import ARCH
from result_rows import trial_rows as _trial_rows

EXPERIMENT = "experiments/cut"


def _rows(tid, method, seed, empty_layers=0) -> dict[str, list[dict]]:
    """The four tables' rows of one trial at 50% (lr 1e-3), as analysis.load gives them."""
    tables = _trial_rows(tid, method, seed, 0.5, 1e-3)
    extra = dict(arch=ARCH, method=method, experiment_dir=EXPERIMENT)
    out = {name: [dict(r, **extra) for r in rows] for name, rows in tables.items()}
    out["trials"][0].update(model_bytes=150_000 + seed, dense_bytes=900_000, empty_layers=empty_layers)
    return out


def _trials(cut_seed: int | None = None) -> dict[str, pd.DataFrame]:
    """Two seeds of one ADMM and one magnitude configuration at 50%; ``cut_seed``: that seed's ADMM model has
    two prunable layers pruned to zero."""
    tables: dict[str, list[dict]] = {"trials": [], "epochs": [], "layers": [], "weights": []}
    for seed in (0, 1):
        for tid, method, empty in ((f"a{seed}", "admm", 2 * (seed == cut_seed)), (f"m{seed}", "magnitude", 0)):
            for name, rows in _rows(tid, method, seed, empty).items():
                tables[name] += rows
    return {name: pd.DataFrame(rows) for name, rows in tables.items()}


def _report(frames: dict[str, pd.DataFrame]):
    from analysis import build_report
    from analysis.load import Tables

    return build_report(Tables(**frames, experiments=[EXPERIMENT]), 0.5)


def _chosen_display(report) -> pd.DataFrame:
    return report.displays["best_hyperparameters"].frame.set_index("Method")


def test_chosen_configurations_show_the_model_file_beside_nonzero_parameters_and_macs():
    display = _chosen_display(_report(_trials()))
    # mean of 150,000 and 150,001 bytes against a 900,000-byte dense file
    assert display.loc["admm", "Model file"] == "150 kB (17% of dense)"
    assert display.loc["admm", "Nonzero params"] == "550"  # 1000 - 900 * 0.5, from result_rows
    assert display.loc["admm", "Nonzero MACs"] == "2.5 k"
    raw = _report(_trials()).tables["best_hyperparameters"].set_index("method")
    assert raw.loc["admm", "model_bytes_mean"] == pytest.approx(150_000.5)
    assert raw.loc["admm", "dense_bytes_mean"] == 900_000


def test_results_without_model_bytes_say_so_instead_of_a_number():
    frames = _trials()
    frames["trials"] = frames["trials"].drop(columns=["model_bytes", "dense_bytes"])
    report = _report(frames)
    cell = _chosen_display(report).loc["admm", "Model file"]
    footnotes = report.displays["best_hyperparameters"].footnotes
    assert cell.startswith("—") and any("model_bytes" in f for f in footnotes)


def _with_latency(frames, **by_method) -> dict[str, pd.DataFrame]:
    """``by_method``: method -> (dense_ms, sparse_ms, note) for all its trials."""
    trials = frames["trials"].copy()
    for method, (dense, sparse, note) in by_method.items():
        rows = trials["method"] == method
        trials.loc[rows, "latency_dense_ms"], trials.loc[rows, "latency_sparse_ms"] = dense, sparse
        trials.loc[rows, "latency_speedup"], trials.loc[rows, "latency_note"] = dense / sparse, note
    return dict(frames, trials=trials)


def test_chosen_configurations_show_2to4_latency_or_why_there_is_none():
    nan = float("nan")
    cpu = "no CUDA device: semi-structured sparse kernels run on NVIDIA GPUs only"
    report = _report(_with_latency(_trials(), admm=(0.8, 0.5, ""), magnitude=(nan, nan, cpu)))
    display = _chosen_display(report)
    assert display.loc["admm", "2:4 latency"] == "0.5 ms vs 0.8 ms dense (1.60x)"
    cell = display.loc["magnitude", "2:4 latency"]
    footnotes = report.displays["best_hyperparameters"].footnotes
    assert cell.startswith("—") and cpu in footnotes  # empty, and the report says why
    # results from before the latency columns: empty, and the footnote names the schema
    old = _report(_trials())
    assert _chosen_display(old).loc["admm", "2:4 latency"].startswith("—")
    assert any("latency columns" in f for f in old.displays["best_hyperparameters"].footnotes)


def test_each_chosen_configuration_prints_its_export_command():
    from analysis.export import export_hint

    display = _chosen_display(_report(_trials()))
    for method in ("admm", "magnitude"):
        assert display.loc[method, "Export"] == export_hint(EXPERIMENT, ARCH, method, 0.5)
    assert display.loc["admm", "Export"].startswith("python -m analysis export experiments/cut --arch")


def test_a_cut_network_is_flagged_in_the_table_and_beside_the_answer(tmp_path):
    from analysis import render_html, render_markdown

    report = _report(_trials(cut_seed=1))
    display = _chosen_display(report)
    assert display.loc["admm", "Empty layers"] == "2: network cut"
    assert display.loc["magnitude", "Empty layers"] == "0"
    note = [n for n in report.cautions if "pruned to zero" in n]
    assert len(note) == 1 and "1 finished trial" in note[0] and "admm" in note[0] and "chosen" in note[0]
    markdown = render_markdown(report)
    summary = markdown.split("\n## ")[1]  # the first section: the answer
    assert "pruned to zero" in summary
    html = render_html(report)
    summary = html.split("<section id='summary'>")[1].split("</section>")[0]
    assert "pruned to zero" in summary


def test_no_note_when_no_layer_was_emptied():
    report = _report(_trials())
    assert not [n for n in report.cautions + report.notes if "pruned to zero" in n]
    assert set(_chosen_display(report)["Empty layers"]) == {"0"}


def test_every_section_is_one_record_with_its_title_and_caption():
    from analysis import report as report_module

    names = [s.name for s in report_module.SECTIONS]
    assert len(names) == len(set(names)) and names[0] == "summary"
    figures = [s for s in report_module.SECTIONS if isinstance(s, report_module.FigureSection)]
    assert {s.name for s in figures} >= {"sparsity", "macs", "layers", "curves", "admm", "weights", "importance"}
    assert all(s.title and s.caption and callable(s.data) and callable(s.render) and callable(s.alt)
               for s in figures)
    report = _report(_trials())
    assert set(report.figures) <= {s.name for s in figures}
    assert report_module.sections(report)[0] == "summary"


def test_importing_the_figures_selects_no_matplotlib_backend_and_rendering_needs_none():
    code = ("import sys, matplotlib; import analysis.plots, analysis.report; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
            "assert 'matplotlib.pyplot' not in sys.modules; "
            "import pandas as pd; from analysis.plots import plot_macs, macs_data; "
            "from analysis.report import figure_bytes; "
            "png = figure_bytes(plot_macs(pd.DataFrame(columns=['arch']), pd.DataFrame()), 'png'); "
            "assert png[:4] == b'\\x89PNG', png[:8]; print('ok')")
    env = dict(os.environ, MPLBACKEND="svg")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
