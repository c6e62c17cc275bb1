"""A resumed search continues instead of repeating itself: the sampler's randomness comes from (study, number
of configurations so far), not from the process, so a driver killed and resumed draws new configurations,
and the same sweep re-run draws the same ones (reproducible)."""

from __future__ import annotations

import functools

import pytest

from sweep import spaces as sp
from sweep.searcher import MultiStudySearcher, StudySpec

SPACE = sp.Space("t", "test", ("admm",), {"lr": sp.Dist("float", 1e-4, 1e-2, True),
                                          "rho": sp.Dist("float", 1e-4, 1.0, True)})


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2"])
def test_a_resumed_search_draws_new_configurations_and_a_rerun_the_same(tmp_path, sampler):
    def searcher(folder):
        spec = StudySpec("mobilenet_v2-admm", {"arch": "mobilenet_v2", "method": "admm"},
                         functools.partial(sp.suggest, space=SPACE, method="admm"), ("final_val_acc",))
        return MultiStudySearcher(str(folder / "optuna.journal"), [spec], trials=4, sampler=sampler)

    def params(config):
        return (config["lr"], config["rho"])

    first = searcher(tmp_path / "a")
    drawn = [params(first.suggest(f"r{i}")) for i in range(2)]
    resumed = searcher(tmp_path / "a")  # the driver was killed: a new process opens the same journal
    drawn += [params(resumed.suggest(f"r{i}")) for i in range(2, 4)]
    assert len(set(drawn)) == 4, drawn  # no configuration repeated after the resume
    again = searcher(tmp_path / "b")
    assert [params(again.suggest(f"s{i}")) for i in range(4)] == drawn  # reproducible run to run
