"""Shared test helpers (import them from here, never from another test file).

TINY is the one small trial config of the suite: a MobileNetV3-Small at width 0.25 on 256 synthetic images,
1 dense + 2 sparsify + 1 fine-tune epochs, no dense control (a test that needs the control sets
``dense_control=True``). Override fields with ``{**TINY, "method": "magnitude"}``.
"""

TINY = {"dataset": "synthetic", "synthetic_train": 256, "synthetic_test": 64, "width": 0.25, "dense_epochs": 1,
        "sparsify_epochs": 2, "finetune_epochs": 1, "batch_size": 64, "bn_recal_batches": 2,
        "arch": "mobilenet_v3_small", "device": "cpu", "dense_control": False}
