"""analysis: tables checked against values recomputed by hand from the same Parquet rows, the CLI's
outputs, bad input, and the rule that a report never touches the experiment folder.

Results come from a small schema-valid generator (tests/result_rows.py) written through
results.schema.write_trial_table (the real writer); see test_analysis_real.py for results of a real tiny trial.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from result_rows import ARCH, write_trial
from results import schema

SEEDS = (0, 1, 2)
CONTROL = {0: 0.91, 1: 0.92, 2: 0.94}  # the dense control's accuracy per seed in the `experiment` fixture
FIGURES = ("sparsity", "macs", "layers", "curves", "admm", "weights")  # every report's figures but importance


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """An experiment: 2 methods x 2 sparsities x 2 lrs x 3 seeds, plus one diverged trial."""
    root = tmp_path_factory.mktemp("exp")
    n = 0
    for method in ("admm", "magnitude"):
        for sparsity in (0.5, 0.8):
            for lr in (1e-4, 1e-3):
                for seed in SEEDS:
                    # the first trial of each seed built the dense control; the others' rows lack it
                    first = (method, sparsity, lr) == ("admm", 0.5, 1e-4)
                    write_trial(root, f"t{n:03d}", method, seed, sparsity, lr,
                                control=CONTROL[seed] if first else None)
                    n += 1
    write_trial(root, "tdiv", "admm", 0, 0.5, 10.0, status="diverged")
    return root


def _hand_trials(root):
    """The trials table recomputed with pyarrow directly, file by file (independent of analysis.load)."""
    rows = []
    for path in glob.glob(os.path.join(root, "results", "trials", "arch=*", "method=*", "*.parquet")):
        method = path.split("method=")[1].split(os.sep)[0]
        for r in pq.read_table(path).to_pylist():
            rows.append({**r, "method": method})
    return rows


def test_load_tables_reads_every_file_with_partitions(experiment):
    from analysis import load_tables

    tables = load_tables(str(experiment))
    assert len(tables.trials) == len(_hand_trials(experiment)) == 25
    assert set(tables.trials["method"]) == {"admm", "magnitude"}
    assert set(tables.trials["arch"]) == {ARCH}
    assert len(tables.weights) == 25 * 4 * (schema.HIST_BINS + 1)
    assert tables.skipped == []


def _hand_best(rows, method, sparsity):
    """Best config by mean final_val_acc over seeds, recomputed by hand; returns its rows."""
    ok = [r for r in rows if r["status"] == "ok" and r["method"] == method and r["target_sparsity"] == sparsity]
    by_lr = {}
    for r in ok:
        by_lr.setdefault(r["lr"], []).append(r)
    return max(by_lr.values(), key=lambda rs: np.mean([r["final_val_acc"] for r in rs]))


def test_comparison_table_matches_hand_computation(experiment):
    from analysis import comparison_table, load_tables

    full = comparison_table(load_tables(str(experiment)).trials, 0.5)
    table = full[full["row"] == "pruned"]
    rows = _hand_trials(experiment)
    assert len(table) == 2 and len(full) == 3  # and one dense control row
    for method in ("admm", "magnitude"):
        best = _hand_best(rows, method, 0.5)
        got = table[table["method"] == method].iloc[0]
        for stage in ("dense", "pre_prune", "post_prune", "post_prune_stale_bn", "final"):
            vals = [r[f"{stage}_test_acc"] for r in best]
            column = "dense_start" if stage == "dense" else stage  # the dense phase's end, not the control
            assert got[f"{column}_test_acc_mean"] == pytest.approx(np.mean(vals))
            assert got[f"{column}_test_acc_std"] == pytest.approx(np.std(vals, ddof=1))
        # each seed's control comes from the one row of its (arch, seed, control_key) that carries it
        assert got["control_test_acc_mean"] == pytest.approx(np.mean([CONTROL[r["seed"]] for r in best]))
        assert got["n_seeds"] == 3
        assert got["trial_ids"] == ",".join(sorted(r["trial_id"] for r in best))
        assert got["reported_on"] == "test" and got["selected_on"].startswith("val")
    # The diverged trial (lr 10) is never selected, never scored.
    assert "tdiv" not in ",".join(table["trial_ids"])


def test_no_trial_at_the_requested_sparsity_gives_empty_tables_not_an_error(experiment):
    # seen on a real compare sweep whose searched sparsities never hit 0.5 exactly
    from analysis import best_hyperparameters, comparison_table, load_tables

    trials = load_tables(str(experiment)).trials
    assert comparison_table(trials, 0.33).empty and best_hyperparameters(trials, 0.33).empty
    assert len(comparison_table(trials, 0.5).query("row == 'pruned'")) == 2  # the same trials at a level they have
    # figures fall back to each method's best configuration at any sparsity instead of going blank
    from analysis.plots import best_trial_ids

    assert best_trial_ids(trials, 0.33) == best_trial_ids(trials, None)
    assert {m for _, m in best_trial_ids(trials, 0.33)} == {"admm", "magnitude"}


def test_selection_ignores_test_accuracy(experiment):
    """Swap in a config that is best on test but worst on val: it must not be chosen."""
    from analysis import best_configs, load_tables

    trials = load_tables(str(experiment)).trials.copy()
    cheat = (trials["method"] == "admm") & (trials["lr"] == 1e-4)
    trials.loc[cheat, "final_test_acc"] = 1.0
    trials.loc[cheat, "final_val_acc"] = 0.0
    best = best_configs(trials, 0.5)
    assert best[best["method"] == "admm"]["lr"].iloc[0] == 1e-3


def test_paired_comparison_matches_scipy(experiment):
    from analysis import load_tables, paired_comparison

    table = paired_comparison(load_tables(str(experiment)).trials)
    rows = _hand_trials(experiment)
    assert sorted(table["sparsity_level"]) == [0.5, 0.8]
    for sparsity in (0.5, 0.8):
        a = {r["seed"]: r["final_test_acc"] for r in _hand_best(rows, "admm", sparsity)}
        m = {r["seed"]: r["final_test_acc"] for r in _hand_best(rows, "magnitude", sparsity)}
        diff = np.array([a[s] - m[s] for s in sorted(a)])
        got = table[table["sparsity_level"] == sparsity].iloc[0]
        assert got["n_pairs"] == 3
        assert got["mean_diff"] == pytest.approx(diff.mean())
        assert got["t_p_value"] == pytest.approx(stats.ttest_rel([a[s] for s in sorted(a)],
                                                               [m[s] for s in sorted(m)]).pvalue)
        half = stats.t.ppf(0.975, 2) * diff.std(ddof=1) / math.sqrt(3)
        assert got["ci95_lo"] == pytest.approx(diff.mean() - half)
        # the verdict's p-value: the exact sign-flip test (3 pairs: 1/4 when all share a sign, else 3/4 or 1)
        assert got["test"].startswith("exact sign-flip") and got["p_value"] in (0.25, 0.75, 1.0)


def test_paired_comparison_with_one_seed_says_na(tmp_path):
    from analysis import load_tables, paired_comparison

    write_trial(tmp_path, "a", "admm", 0, 0.5, 1e-3)
    write_trial(tmp_path, "m", "magnitude", 0, 0.5, 1e-3)
    table = paired_comparison(load_tables(str(tmp_path)).trials)
    assert table["n_pairs"].tolist() == [1]
    assert table["note"].iloc[0] == "n/a (n < 2)" and math.isnan(table["p_value"].iloc[0])


def test_accounting_counts_diverged_and_compute(experiment):
    from analysis import accounting, diverged_trials, load_tables

    trials = load_tables(str(experiment)).trials
    acc = accounting(trials).set_index("method")
    rows = _hand_trials(experiment)
    assert acc.loc["admm", "diverged"] == 1 and acc.loc["admm", "ok"] == 12 and acc.loc["admm", "trials"] == 13
    assert acc.loc["magnitude", "diverged"] == 0
    assert acc.loc["admm", "compute_s"] == pytest.approx(sum(r["wall_time_s"] for r in rows if r["method"] == "admm"))
    assert diverged_trials(trials)["trial_id"].tolist() == ["tdiv"]


def test_pareto_front_is_non_dominated_with_dense_control(experiment):
    from analysis import load_tables, pareto_front

    front = pareto_front(load_tables(str(experiment)).trials)
    control = front[front["row"] == "control"]
    assert len(control) == 1 and control["nonzero_params"].iloc[0] == 1000
    assert control["final_test_acc"].iloc[0] == pytest.approx(np.mean(list(CONTROL.values())))
    for method, rows in front[front["row"] == "pareto"].groupby("method"):
        pts = rows[["achieved_sparsity", "final_val_acc"]].to_numpy()
        for s, a in pts:  # no front point dominates another
            assert not ((pts[:, 0] >= s) & (pts[:, 1] > a)).any()
        assert rows["nonzero_macs"].notna().all()


def _hash_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "analysis", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def cli_report(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    before = _hash_tree(experiment)
    proc = _cli("report", str(experiment), "--out", str(out))
    return proc, out, before


def test_cli_writes_every_output_and_leaves_experiment_unchanged(experiment, cli_report):
    proc, out, before = cli_report
    assert proc.returncode == 0, proc.stderr
    assert _hash_tree(experiment) == before
    for name in ("summary", "comparison", "best_hyperparameters", "fixed_hyperparameters", "pareto", "paired",
                 "accounting", "not_ok"):
        assert os.path.getsize(out / "tables" / f"{name}.csv") > 0
        assert "\\begin{tabular}" in (out / "tables" / f"{name}.tex").read_text()
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (out / "figures" / f"{name}.svg").read_bytes()[:400]
    # no Optuna storage in this experiment: no importance figure, words instead
    assert not (out / "figures" / "importance.png").exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES) and "src='http" not in html
    markdown = (out / "report.md").read_text()
    assert "tdiv" in markdown  # the diverged trial is listed
    assert "No hyperparameter importance figure" in markdown and "no Optuna storage found" in markdown


def test_analysis_imports_neither_torch_nor_ray():
    code = ("import sys, analysis, analysis.load, analysis.tables, analysis.plots, analysis.report, "
            "analysis.__main__; bad = [m for m in ('torch', 'ray') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_not_an_experiment_exits_2(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    proc = _cli("report", str(tmp_path), "--out", str(tmp_path.parent / "r_notexp"))
    assert proc.returncode == 2 and "not an experiment folder" in proc.stderr
    assert not (tmp_path.parent / "r_notexp").exists()


def test_out_inside_experiment_is_refused(experiment):
    before = _hash_tree(experiment)
    proc = _cli("report", str(experiment), "--out", str(experiment / "report"))
    assert proc.returncode == 2 and "--out" in proc.stderr
    assert _hash_tree(experiment) == before


def test_bad_sparsity_exits_2(experiment, tmp_path):
    proc = _cli("report", str(experiment), "--sparsity", "1.5", "--out", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    assert proc.returncode == 2 and "--sparsity" in proc.stderr


@pytest.fixture()
def damaged(tmp_path):
    """An experiment with one corrupt file and one file of an unknown schema version."""
    for i, seed in enumerate(SEEDS):
        write_trial(tmp_path, f"a{i}", "admm", seed, 0.5, 1e-3)
        write_trial(tmp_path, f"m{i}", "magnitude", seed, 0.5, 1e-3)
    corrupt = tmp_path / "results" / "trials" / f"arch={ARCH}" / "method=admm" / "a0.parquet"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    future = tmp_path / "results" / "trials" / f"arch={ARCH}" / "method=magnitude" / "m0.parquet"
    table = pq.read_table(future)
    pq.write_table(table.replace_schema_metadata({schema.VERSION_KEY: b"99"}), future)
    return tmp_path, str(corrupt), str(future)


def test_corrupt_and_unknown_version_are_skipped_with_warning(damaged, tmp_path_factory):
    from analysis import load_tables

    root, corrupt, future = damaged
    tables = load_tables(str(root))
    skipped = dict(tables.skipped)
    assert set(skipped) == {corrupt, future}
    assert "schema version 99" in skipped[future]
    assert len(tables.trials) == 4
    out = tmp_path_factory.mktemp("r")
    proc = _cli("report", str(root), "--out", str(out), "--no-importance")
    assert proc.returncode == 0, proc.stderr
    assert corrupt in proc.stderr and future in proc.stderr


def test_an_older_readable_version_is_read_with_the_new_columns_null(tmp_path):
    """Results written before the distance columns existed (schema 2) still make a report: the columns added
    since are null, every other value is read as written; a version never released is still refused."""
    from analysis import load_tables

    for i, seed in enumerate(SEEDS):
        write_trial(tmp_path, f"a{i}", "admm", seed, 0.5, 1e-3)
    path = tmp_path / "results" / "trials" / f"arch={ARCH}" / "method=admm" / "a0.parquet"
    new = pq.read_table(path)
    old = new.drop_columns(["dense_distance", "pre_prune_distance"])
    pq.write_table(old.replace_schema_metadata({schema.VERSION_KEY: b"2"}), path)
    tables = load_tables(str(tmp_path))
    assert tables.skipped == [] and len(tables.trials) == len(SEEDS)
    row = tables.trials[tables.trials["trial_id"] == "a0"].iloc[0]
    assert math.isnan(row["dense_distance"]) and math.isnan(row["pre_prune_distance"])
    assert row["final_test_acc"] == new.column("final_test_acc")[0].as_py()
    pq.write_table(old.replace_schema_metadata({schema.VERSION_KEY: b"1"}), path)
    assert "schema version 1" in dict(load_tables(str(tmp_path)).skipped)[str(path)]


def test_strict_fails_on_corrupt_file(damaged, tmp_path_factory):
    root, corrupt, _ = damaged
    proc = _cli("report", str(root), "--strict", "--out", str(tmp_path_factory.mktemp("r")))
    assert proc.returncode == 2 and "a0.parquet" in proc.stderr


def test_no_finished_trial_exits_2(tmp_path):
    write_trial(tmp_path, "d", "admm", 0, 0.5, 10.0, status="diverged")
    proc = _cli("report", str(tmp_path), "--out", str(tmp_path.parent / "r_nofinish"))
    assert proc.returncode == 2 and "no finished trial" in proc.stderr


def test_several_experiments_are_combined(experiment, tmp_path):
    from analysis import load_tables

    write_trial(tmp_path, "extra", "admm", 5, 0.5, 1e-3)
    tables = load_tables([str(experiment), str(tmp_path)])
    assert len(tables.trials) == 26
    assert set(tables.trials["experiment_dir"]) == {str(experiment), str(tmp_path)}


def test_importance_from_optuna_journal(tmp_path):
    """A journal storage in the experiment folder gives importances, and the folder stays unchanged."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from analysis import importance_data

    write_trial(tmp_path, "a", "admm", 0, 0.5, 1e-3)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))
    study = optuna.create_study(study_name=f"{ARCH}-admm", storage=storage, directions=["maximize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    # The first objective depends on lr only, so lr must come out as the more important parameter.
    study.optimize(lambda t: (math.log10(t.suggest_float("lr", 1e-4, 1e-2, log=True))
                              + 0.0 * t.suggest_float("rho", 0, 1), 0.5), n_trials=12)
    before = _hash_tree(tmp_path)
    imp = importance_data([str(tmp_path)]).studies[f"{ARCH}-admm"].importances
    assert set(imp) == {"lr", "rho"}
    assert imp["lr"] > imp["rho"]
    assert _hash_tree(tmp_path) == before


def test_html_report_renders_in_chromium(cli_report, tmp_path):
    """Open the self-contained HTML in real headless Chromium: every figure decodes, a screenshot exists."""
    import browser

    if browser.chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    proc, out, _ = cli_report
    assert proc.returncode == 0, proc.stderr
    widths = browser.image_widths(str(out / "report.html"))
    assert len(widths) == len(FIGURES) and all(w > 100 for w in widths), widths
    shot = tmp_path / "report.png"
    browser.screenshot(str(out / "report.html"), str(shot))
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    keep = os.environ.get("ANALYSIS_SCREENSHOT")  # lets a human look at the page
    if keep:
        shutil.copy(shot, keep)


def test_partial_multi_arch_sweep_with_sqlite_storage(tmp_path, tmp_path_factory):
    """A running sweep: two archs, one has only magnitude results, a half-written temp file exists,
    and the Optuna storage is SQLite named in sweep.json. The report builds; missing pairs are absent."""
    import json

    import optuna

    for seed in (0, 1):
        write_trial(tmp_path, f"a{seed}", "admm", seed, 0.5, 1e-3)
        write_trial(tmp_path, f"m{seed}", "magnitude", seed, 0.5, 1e-3)
        write_trial(tmp_path, f"s{seed}", "magnitude", seed, 0.5, 1e-3, arch="mobilenet_v3_small")
    half = tmp_path / "results" / "trials" / f"arch={ARCH}" / "method=admm" / ".tmp-a9-123.parquet"
    half.write_bytes(b"PAR1 half")
    (tmp_path / "sweep.json").write_text(json.dumps({"storage": "studies.db"}))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="mobilenet_v3_small-magnitude", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2) + 0.0 * t.suggest_int("k", 1, 3), n_trials=12)
    del study
    before = _hash_tree(tmp_path)
    out = tmp_path_factory.mktemp("partial_report")
    proc = _cli("report", str(tmp_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert _hash_tree(tmp_path) == before
    comparison = (out / "tables" / "comparison.csv").read_text().splitlines()
    assert len(comparison) == 1 + 3 + 2  # (v2, admm), (v2, magnitude), (v3_small, magnitude), a control per arch
    paired = (out / "tables" / "paired.csv").read_text().splitlines()
    assert len(paired) == 2 and paired[1].startswith(ARCH)  # v3_small has no ADMM partner yet
    from analysis import importance_data

    assert set(importance_data([str(tmp_path)]).studies["mobilenet_v3_small-magnitude"].importances) == {"lr", "k"}
    assert _hash_tree(tmp_path) == before
