"""TrialConfig: the one place a flat dict becomes typed config."""

import numpy as np
import pytest

from vocabulary.config import ConfigError, TrialConfig, field_owners


def test_round_trip_flat_dict():
    cfg = TrialConfig.from_dict({"arch": "mobilenet_v3_small", "rho": 0.1, "lr": 3e-4, "seed": 4})
    flat = cfg.to_dict()
    assert flat["arch"] == "mobilenet_v3_small" and flat["rho"] == 0.1 and flat["seed"] == 4
    assert TrialConfig.from_dict(flat) == cfg


def test_every_field_is_a_unique_flat_key():
    owners = field_owners()
    assert set(TrialConfig().to_dict()) == set(owners)


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("arch", "resnet50", "mobilenet_v2"),
        ("method", "no-such-method", "admm"),  # never a method name (test_contracts: names are words)
        ("dataset", "imagenet", "cifar10"),
        ("sparsity", 1.0, "[0.0, 1.0)"),
        ("sparsity", -0.1, "[0.0, 1.0)"),
        ("rho", 0.0, "(0.0"),
        ("lr", 50.0, "10.0"),
        ("dense_epochs", -1, "[0"),
        ("sparsify_epochs", 1.5, "integer"),
        ("augment", "yes", "true or false"),
        ("rho", float("nan"), "finite"),
        ("nm_n", 5, "[1, 4]"),
    ],
)
def test_bad_values_name_the_field(key, value, needle):
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict({key: value})
    assert err.value.field == key
    assert needle in str(err.value)


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict({"learning_rate": 0.1})
    assert err.value.field == "learning_rate"
    assert "unknown" in str(err.value)


def test_numpy_scalars_and_ints_are_accepted():
    cfg = TrialConfig.from_dict({"lr": np.float64(0.01), "rho": 1, "dense_epochs": np.int64(3)})
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 0.01
    assert isinstance(cfg.prune.rho, float) and cfg.dense.dense_epochs == 3


def test_dense_key_shared_by_methods_and_split_by_recipe():
    base = {"arch": "mobilenet_v2", "seed": 1}
    admm = TrialConfig.from_dict({**base, "method": "admm", "rho": 0.5, "lr": 1e-4, "sparsity": 0.9})
    mag = TrialConfig.from_dict({**base, "method": "magnitude", "schedule": "gradual", "lr": 1e-2})
    assert admm.dense_key() == mag.dense_key()  # DESIGN rule 1: same dense start for both methods
    assert TrialConfig.from_dict({**base, "seed": 2}).dense_key() != admm.dense_key()
    assert TrialConfig.from_dict({**base, "dense_lr": 0.1}).dense_key() != admm.dense_key()
    assert TrialConfig.from_dict({**base, "arch": "mobilenet_v3_small"}).dense_key() != admm.dense_key()


def test_nm_target_sparsity():
    cfg = TrialConfig.from_dict({"sparsity_set": "nm", "nm_n": 2, "nm_m": 4})
    assert cfg.prune.nominal_sparsity == 0.5


def test_gradual_schedule_with_nm_pattern_is_refused():
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict({"method": "magnitude", "schedule": "gradual", "sparsity_set": "nm"})
    assert err.value.field == "schedule" and "uniform or global" in str(err.value)
    TrialConfig.from_dict({"method": "admm", "schedule": "gradual", "sparsity_set": "nm"})  # ADMM ignores it
