"""The report's figures read the same with 2 epochs or 200: integer epoch ticks, the phases marked, markers
where there are few points, log axes where values span orders of magnitude; per-layer sparsity shows the
layers a set leaves dense; accuracy against nonzero MACs shows the dense control. Every figure comes from a
data function and a renderer that returns a Figure (nothing saved), with alt text.

Data is built in memory, shaped as analysis.load gives it.
"""

from __future__ import annotations

import matplotlib
import matplotlib.figure
import numpy as np
import pandas as pd
import pytest
from matplotlib.ticker import MaxNLocator

from result_rows import ARCH
from result_rows import trial_rows as _trial_rows

matplotlib.use("Agg")


def _frames(specs) -> dict[str, pd.DataFrame]:
    """The four tables of the trials in ``specs`` ((tid, method, seed, sparsity, lr, kwargs) tuples)."""
    tables = {"trials": [], "epochs": [], "layers": [], "weights": []}
    for tid, method, seed, sparsity, lr, kw in specs:
        for name, rows in _trial_rows(tid, method, seed, sparsity, lr, **kw).items():
            tables[name] += [dict(r, arch=ARCH, method=method) for r in rows]
    return {name: pd.DataFrame(rows) for name, rows in tables.items()}


@pytest.fixture(scope="module")
def small():
    """Two seeds of each method at 0.5 (dense 1 epoch, sparsify 2, fine-tune 1), control on admm's rows."""
    return _frames([(f"{m}{s}", m, s, 0.5, 1e-3, {"control": 0.9 if m == "admm" else None})
                    for m in ("admm", "magnitude") for s in (0, 1)])


def _integer_ticks(ax) -> bool:
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    return isinstance(ax.xaxis.get_major_locator(), MaxNLocator) and all(float(t).is_integer() for t in ticks)


def test_curves_have_integer_epochs_and_the_phases_marked(small):
    from analysis.plots import curves_alt, curves_data, phase_spans, plot_curves

    data = curves_data(small["trials"], small["epochs"], 0.5)
    spans = phase_spans(data[data["method"] == "admm"])
    assert spans.values.tolist() == [["dense", 1, 1], ["sparsify", 2, 3], ["finetune", 4, 4]]
    fig = plot_curves(data)
    objective, accuracy = fig.axes[0], fig.axes[1]
    for ax in (objective, accuracy):
        assert _integer_ticks(ax)
        boundaries = sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":")
        assert boundaries == [1.5, 3.5]  # between dense | sparsify | fine-tune
        assert all(line.get_marker() == "o" for line in ax.lines if line.get_linestyle() == "-")
    assert [t.get_text() for t in objective.texts] == ["dense", "sparsify", "fine-tune"]
    assert accuracy.get_ylabel() == "val accuracy (%)"
    assert max(max(line.get_ydata()) for line in accuracy.lines if line.get_linestyle() == "-") > 1  # percent
    assert "epochs 1 to 4" in curves_alt(data)
    assert isinstance(fig, matplotlib.figure.Figure)


def _admm_epochs(n: int, residual_span: float, rho_growth: float, dual_ratio: float = 0.01) -> pd.DataFrame:
    """``n`` sparsify epochs of two seeds: residuals falling geometrically by ``residual_span`` overall (the
    dual ``dual_ratio`` times the primal), rho growing by ``rho_growth`` overall."""
    epochs = np.arange(2, n + 2)
    fall = residual_span ** (-np.linspace(0, 1, n))
    rows = [{"arch": ARCH, "trial_id": f"a{seed}", "seed": seed, "epoch": int(e), "primal_residual": 100.0 * f,
             "dual_residual": 100.0 * dual_ratio * f, "rho": 0.01 * rho_growth ** (i / max(n - 1, 1))}
            for seed in (0, 1) for i, (e, f) in enumerate(zip(epochs, fall))]
    return pd.DataFrame(rows)


def test_admm_plot_reads_with_two_points():
    from analysis.plots import plot_admm

    fig = plot_admm(_admm_epochs(2, residual_span=2.0, rho_growth=1.0, dual_ratio=0.5))
    residual, rho = fig.axes
    assert all(line.get_marker() == "o" for line in residual.lines + rho.lines)
    assert {line.get_linestyle() for line in residual.lines} == {"-", "--"}  # primal and dual
    assert residual.get_yscale() == "linear"  # a factor 4 is no reason for a log axis
    assert rho.get_ylim() == pytest.approx((0, 0.02)) and "rho constant at 0.01" in rho.texts[0].get_text()
    assert _integer_ticks(residual) and _integer_ticks(rho)


def test_admm_plot_reads_with_two_hundred_points():
    from analysis.plots import admm_alt, plot_admm

    data = _admm_epochs(200, residual_span=1e4, rho_growth=100.0)
    fig = plot_admm(data)
    residual, rho = fig.axes
    assert all(line.get_marker() in (None, "None", "") for line in residual.lines + rho.lines)
    assert residual.get_yscale() == "log" and rho.get_yscale() == "log"
    assert _integer_ticks(residual) and len(residual.get_xticks()) < 15
    assert "sparsify epochs 2 to 201" in admm_alt(data)


def test_admm_plot_marks_where_the_residual_started():
    """The dense model's distance to the sparse set (the residual before any Z/U update) is drawn per seed,
    so a reader sees whether ADMM brought W nearer the set; trials tables without it draw nothing."""
    from analysis.plots import admm_data, plot_admm

    frames = _frames([(f"a{s}", "admm", s, 0.5, 1e-3, {}) for s in (0, 1)])
    trials = frames["trials"].assign(dense_distance=[400.0, 420.0])
    data = admm_data(trials, frames["epochs"])
    assert sorted(data.drop_duplicates("trial_id")["dense_distance"]) == [400.0, 420.0]
    residual = plot_admm(data).axes[0]
    dotted = sorted(line.get_ydata()[0] for line in residual.lines if line.get_linestyle() == ":")
    assert dotted == [400.0, 420.0] and residual.get_ylim()[1] >= 420.0
    assert not [ln for ln in plot_admm(_admm_epochs(4, 2.0, 1.0)).axes[0].lines if ln.get_linestyle() == ":"]


def _layers(method: str, tid: str, nm: bool) -> list[dict]:
    """A MobileNet-like layer list: stem conv (kept dense), then pointwise / depthwise pairs, classifier.
    Under N:M the depthwise layers stay dense (their target is 0)."""
    kinds = ["conv"] + ["pointwise", "depthwise"] * 4 + ["linear"]
    rows = []
    for i, kind in enumerate(kinds):
        dense = kind == "conv" or (nm and kind == "depthwise")
        target = 0.0 if dense else 0.5
        rows.append({"arch": ARCH, "method": method, "trial_id": tid, "seed": 0, "layer": f"features.{i}.weight",
                     "kind": kind, "shape": "8x8x1x1", "prunable": kind != "conv", "numel": 64,
                     "nonzero": int(64 * (1 - target)), "sparsity": target, "target_sparsity": target,
                     "dense_macs": 1000, "nonzero_macs": int(1000 * (1 - target))})
    return rows


def test_per_layer_sparsity_shows_the_layers_a_set_leaves_dense():
    from analysis.plots import layer_sparsity_alt, layer_sparsity_data, plot_layer_sparsity

    frames = _frames([("nm0", "admm", 0, 0.5, 1e-3, {"target": 0.45, "sparsity_set": "nm"}),
                      ("u0", "magnitude", 0, 0.5, 1e-3, {})])
    layers = pd.DataFrame(_layers("admm", "nm0", nm=True) + _layers("magnitude", "u0", nm=False))
    data = layer_sparsity_data(frames["trials"], layers)
    admm = data[data["method"] == "admm"].sort_values("position")
    assert admm["layer"].tolist() == [f"features.{i}.weight" for i in range(10)]  # model order kept
    assert admm["dense"].sum() == 5 and data[data["method"] == "magnitude"]["dense"].sum() == 1
    fig = plot_layer_sparsity(data)
    for ax, method, n_dense in zip(fig.axes, ("admm", "magnitude"), (5, 1)):
        bars = [p for p in ax.patches if p.get_hatch() is None]
        shaded = [p for p in ax.patches if p.get_hatch() == "///"]
        assert len(bars) == 10 and len(shaded) == n_dense  # one bar per layer; dense slots visible
        assert f"{n_dense} kept dense" in ax.get_title()
        assert ax.get_xticklabels()[2].get_text() == "f2"
    assert "mobilenet_v2 admm: 10 layers, 5 kept dense" in layer_sparsity_alt(data)


def test_accuracy_against_macs_has_the_dense_control(small):
    from analysis.plots import macs_alt, macs_data, plot_macs

    points, controls = macs_data(small["trials"])
    assert len(points) == 2 and points["nonzero_macs"].tolist() == [2500, 2500]
    assert len(controls) == 1 and controls["final_test_acc"].iloc[0] == pytest.approx(0.9)
    ax = plot_macs(points, controls).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["admm", "magnitude", "dense control (same budget)", "dense start"]
    star = [c for c in ax.collections if c.get_label() == "dense control (same budget)"][0]
    assert star.get_offsets()[0].tolist() == pytest.approx([5000 / 1e6, 90.0])
    assert ax.get_xlabel() == "nonzero MACs per image (millions)" and ax.get_ylabel() == "final test accuracy (%)"
    assert "dense control as a star" in macs_alt(points, controls)


def test_build_report_gives_every_figure_alt_text_and_keeps_figures_in_memory(small, tmp_path):
    from analysis import build_report
    from analysis.load import Tables

    tables = Tables(**small, experiments=[str(tmp_path)])
    report = build_report(tables, 0.5)
    assert set(report.figures) == {"sparsity", "macs", "layers", "curves", "admm", "weights"}
    assert set(report.alts) == set(report.figures) and all(len(a) > 40 for a in report.alts.values())
    assert list(tmp_path.iterdir()) == []  # building writes nothing
