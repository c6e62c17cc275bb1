"""Faults and resumes: Optuna, the tables and Tune must tell the same story after a driver dies (issue 15).

Real parts only: a real Optuna journal, real Parquet rows, real Tune experiments (a tiny function trainable,
or the real sweep through its CLI for the slow tests), a real flock held by another open file.
"""

from __future__ import annotations

import fcntl
import os

import pytest

from trainables.trial import FileDenseStore


# -- FileDenseStore: only an unfinished build returns None (item 4) -----------------------------------------
def test_dense_store_without_waiting_reads_a_finished_payload_while_another_holds_the_lock(tmp_path):
    store = FileDenseStore(str(tmp_path))
    assert store.get_or_build("k", lambda: b"control") == b"control"
    with open(os.path.join(tmp_path, "k.pt.lock"), "a") as other:  # another process reading the payload
        fcntl.flock(other, fcntl.LOCK_EX)
        got = store.get_or_build("k", lambda: pytest.fail("built twice"), wait=False)
    assert got == b"control"


def test_dense_store_without_waiting_returns_none_only_while_the_build_is_unfinished(tmp_path):
    store = FileDenseStore(str(tmp_path))
    with open(os.path.join(tmp_path, "k.pt.lock"), "a") as builder:  # another process building "k"
        fcntl.flock(builder, fcntl.LOCK_EX)
        assert store.get_or_build("k", lambda: pytest.fail("built while another builds"), wait=False) is None
    assert store.get_or_build("k", lambda: b"built", wait=False) == b"built"
