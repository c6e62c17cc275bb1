"""Shared test helpers (import them from here, never from another test file).

TINY is the one small trial config of the suite: a MobileNetV3-Small at width 0.25 on 256 synthetic images,
1 dense + 2 sparsify + 1 fine-tune epochs, no dense control (a test that needs the control sets
``dense_control=True``). Override fields with ``{**TINY, "method": "magnitude"}``.
"""

TINY = {"dataset": "synthetic", "synthetic_train": 256, "synthetic_test": 64, "width": 0.25, "dense_epochs": 1,
        "sparsify_epochs": 2, "finetune_epochs": 1, "batch_size": 64, "bn_recal_batches": 2,
        "arch": "mobilenet_v3_small", "device": "cpu", "dense_control": False}


def train_args(cfg: dict) -> list[str]:
    """``python -m trainables train`` flags for a config dict (one ``--key-with-dashes`` per field, booleans as
    ``--flag`` / ``--no-flag``), e.g. ``train_args(TINY)``."""
    args = []
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def sweep_set_args(cfg: dict) -> list[str]:
    """``python -m sweep run`` flags that fix these fields for every trial: ``--set key=value`` each."""
    return [a for key, value in cfg.items() for a in ("--set", f"{key}={value}")]

SHARED_RAY_CPUS = 2  # the CPUs of the session's shared local Ray (conftest.py's ray_session)


def register(monkeypatch, table: str, line: str, name: str):
    """Run ``line`` (a newcomer's one registration line) against a copy of ``vocabulary.registry.<table>``
    (METHODS or SETS), restored after the test; returns the entry ``name`` it added."""
    from vocabulary import registry

    entries = dict(getattr(registry, table))
    monkeypatch.setattr(registry, table, entries)
    exec(line, {**vars(registry), table: entries})
    return entries[name]
