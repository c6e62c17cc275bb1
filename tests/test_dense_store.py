"""The sweep's shared dense store (sweep.ray_tune.DenseStoreActor + RayDenseStore) on a real local Ray.

Issue 3: the dense checkpoint for each key is trained once, also when two trials ask for it at the same
time; a builder that dies (its node lost) must not leave the others waiting forever.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import ray

from sweep.ray_tune import RayDenseStore, start_dense_store


pytestmark = pytest.mark.usefixtures("ray_session")  # the session's local Ray (conftest.py), never another


def test_two_concurrent_askers_build_once_and_both_get_the_model(tmp_path):
    actor = start_dense_store("ds-concurrent", str(tmp_path))
    calls = []

    def build() -> bytes:
        calls.append(threading.get_ident())
        time.sleep(1.0)  # the second asker arrives while the first builds
        return b"dense-weights"

    got = []
    threads = [threading.Thread(target=lambda: got.append(RayDenseStore("ds-concurrent", poll_s=0.05)
                                                          .get_or_build("k", build))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got == [b"dense-weights"] * 2 and len(calls) == 1
    assert ray.get(actor.stats.remote()) == {"k": 1}
    assert (tmp_path / "dense" / "k.bin").read_bytes() == b"dense-weights"
    assert json.loads((tmp_path / "dense" / "builds.json").read_text()) == {"k": 1}


def test_a_dead_builders_lease_expires_and_another_trial_builds(tmp_path):
    actor = start_dense_store("ds-lease", str(tmp_path), lease_s=0.5)
    state, _token = ray.get(actor.acquire.remote("k"))  # a builder that then dies: it never renews or puts
    assert state == "build"
    assert ray.get(actor.acquire.remote("k"))[0] == "wait"  # within the lease, others wait
    t0 = time.monotonic()
    payload = RayDenseStore("ds-lease", poll_s=0.05).get_or_build("k", lambda: b"rebuilt")
    assert payload == b"rebuilt" and time.monotonic() - t0 >= 0.4
    assert ray.get(actor.stats.remote()) == {"k": 2}


def test_a_live_builder_keeps_its_lease_while_building(tmp_path):
    actor = start_dense_store("ds-renew", str(tmp_path), lease_s=0.4)  # the handle keeps it alive
    store = RayDenseStore("ds-renew", poll_s=0.05)
    other = []

    def slow_build() -> bytes:
        # three leases long: without renewal another asker would be granted a second build
        t = threading.Thread(target=lambda: other.append(store.get_or_build("k", lambda: b"second")))
        t.start()
        time.sleep(1.2)
        return b"first"

    assert store.get_or_build("k", slow_build) == b"first"
    deadline = time.time() + 30
    while not other and time.time() < deadline:
        time.sleep(0.05)
    assert other == [b"first"] and ray.get(actor.stats.remote()) == {"k": 1}


def test_a_new_store_on_the_same_experiment_reuses_the_persisted_model(tmp_path):
    first = start_dense_store("ds-persist-1", str(tmp_path))
    RayDenseStore("ds-persist-1").get_or_build("k", lambda: b"weights")
    ray.kill(first)
    second = start_dense_store("ds-persist-2", str(tmp_path))  # e.g. `python -m sweep resume`
    assert RayDenseStore("ds-persist-2").get_or_build("k", lambda: pytest.fail("rebuilt")) == b"weights"
    assert ray.get(second.stats.remote()) == {"k": 1}  # the count carried over from builds.json
