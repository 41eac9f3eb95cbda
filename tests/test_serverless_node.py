"""FederatedNode in one process, without sockets: threads stand in for the nodes, over
``memory://`` and local folders. The real-process faults are in test_serverless_faults.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

from pyfed.errors import ConfigurationError, DuplicateNameError, UpdateRejected
from pyfed.serverless import FederatedNode
from pyfed.serverless.frames import encode_update, update_path
from pyfed.serverless.storage import open_folder
from pyfed.wire.messages import NodeUpdate
from pyfed.wire.spec import spec_hash, spec_of_arrays

WEIGHTS = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7, np.array([0.5, -1.5], np.float32))
HASH = spec_hash(spec_of_arrays(WEIGHTS))


def stored(weights=WEIGHTS, spec_hash_=HASH, **fields) -> bytes:
    values = {"node": "a", "epoch": 3, "num_examples": 10, "metrics": {"loss": 0.5}, **fields}
    return encode_update(NodeUpdate(spec_hash=spec_hash_, weights=tuple(weights), **values))


def memory_url() -> str:
    return f"memory://pyfed-test-{uuid.uuid4().hex}"



def run_nodes(url: str, updates: dict, **options) -> dict:
    """Each node (a thread) calls update once with its (weights, num_examples, metrics)."""
    results, failures = {}, []

    def one(name):
        try:
            with FederatedNode(url, name, **options) as node:
                results[name] = node.update(*updates[name])
        except Exception as exc:  # noqa: BLE001  (reported below)
            failures.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=one, args=(name,)) for name in updates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    return results


def test_sync_nodes_get_fedavg_of_their_updates_exactly():
    updates = {name: ([np.full((3, 4), value, np.float32), np.array([value, -value], np.float32)],
                      n, {"loss": loss, "note": "text is not published"})
               for name, value, n, loss in (("a", 1.0, 1, 0.5), ("b", 2.0, 1, 1.5),
                                            ("c", 4.0, 2, 0.25))}
    results = run_nodes(memory_url(), updates, mode="sync", num_nodes=3, timeout=60)
    for weights, metrics in results.values():
        np.testing.assert_array_equal(weights[0], np.full((3, 4), 2.75, np.float32))
        np.testing.assert_array_equal(weights[1], np.array([2.75, -2.75], np.float32))
        assert weights[0].dtype == np.float32
        assert metrics == {"loss": pytest.approx((0.5 + 1.5 + 0.5) / 4), "nodes": 3}


def test_sync_nodes_all_compute_the_same_weighted_mean():
    rng = np.random.default_rng(1)
    updates = {f"n{i}": ([rng.normal(size=(5, 3)).astype(np.float32)], 10 * (i + 1), {})
               for i in range(3)}
    results = run_nodes(memory_url(), updates, mode="sync", num_nodes=3)
    expected = sum(n * w[0].astype(np.float64) for w, n, _ in updates.values()) / 60
    first = results["n0"][0][0]
    np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-7)
    for weights, metrics in results.values():
        assert weights[0].tobytes() == first.tobytes() and metrics["nodes"] == 3


def test_sync_goes_on_with_who_is_there_after_the_timeout(caplog):
    url = memory_url()
    updates = {name: ([np.full(3, v, np.float32)], 1, {}) for name, v in (("a", 1.0), ("b", 3.0))}
    with caplog.at_level(logging.WARNING, logger="pyfed"):
        results = run_nodes(url, updates, mode="sync", num_nodes=3, timeout=1)
    for weights, metrics in results.values():
        np.testing.assert_array_equal(weights[0], np.full(3, 2.0, np.float32))
        assert metrics["nodes"] == 2
    warnings = [r.getMessage() for r in caplog.records if "going on with them" in r.getMessage()]
    assert len(warnings) == 2 and all("only 2 of 3 nodes" in w and "(a, b)" in w
                                      for w in warnings), warnings


def test_after_a_timeout_later_epochs_wait_only_for_who_is_there(caplog):
    with caplog.at_level(logging.WARNING, logger="pyfed"):
        with FederatedNode(memory_url(), "a", mode="sync", num_nodes=2, timeout=0.5) as node:
            for _ in range(3):
                weights, metrics = node.update(WEIGHTS, 1)
                assert metrics["nodes"] == 1
    assert sum("going on with them" in r.getMessage() for r in caplog.records) == 1


def test_async_weights_each_node_by_examples_times_staleness():
    arrays = {name: [np.full(4, v, np.float32)] for name, v in (("a", 1.0), ("b", 2.0),
                                                                ("c", 8.0))}
    examples = {"a": 10, "b": 30, "c": 20}
    epochs = {"a": 0, "b": 3, "c": 5}
    results = {}
    for kind in ("polynomial", "constant"):
        url = memory_url()
        for name in ("a", "b"):
            with FederatedNode(url, name) as node:
                node.update(arrays[name], examples[name], metrics={"loss": epochs[name]},
                            epoch=epochs[name])
        with FederatedNode(url, "c", staleness=kind) as node:
            results[kind] = node.update(arrays["c"], examples["c"], metrics={"loss": 5},
                                        epoch=epochs["c"])
    for kind, (weights, metrics) in results.items():
        # (staleness + 1) ** -0.5 with staleness 5 - 0 and 5 - 3; constant: 1.
        factor = ({"a": 6 ** -0.5, "b": 3 ** -0.5, "c": 1.0} if kind == "polynomial"
                  else {"a": 1.0, "b": 1.0, "c": 1.0})
        weight = {n: examples[n] * factor[n] for n in arrays}
        expected = sum(weight[n] * arrays[n][0][0] for n in arrays) / sum(weight.values())
        np.testing.assert_allclose(weights[0], np.full(4, expected), rtol=1e-6)
        assert metrics["nodes"] == 3 and metrics["staleness_max"] == 5
        # Metrics: the examples-weighted mean, as on the server (not staleness-weighted).
        assert metrics["loss"] == pytest.approx((10 * 0 + 30 * 3 + 20 * 5) / 60)
    unweighted = (10 * 1 + 30 * 2 + 20 * 8) / 60
    assert results["constant"][0][0][0] == pytest.approx(unweighted)
    assert results["polynomial"][0][0][0] != pytest.approx(unweighted)


def test_cleanup_keeps_the_last_epochs_only(tmp_path):
    folder = open_folder(tmp_path / "f")
    with FederatedNode(tmp_path / "f", "a", keep_epochs=2) as node:
        for _ in range(6):
            node.update(WEIGHTS, 1)
        assert folder.list("updates") == [update_path("a", e, HASH) for e in (4, 5)]
        node.update(WEIGHTS, 1, epoch=1)  # a count that starts again: later files go too
        assert folder.list("updates") == [update_path("a", 1, HASH)]
    results = run_nodes(str(tmp_path / "g"), {n: (WEIGHTS, 1, {}) for n in "xy"}, mode="sync",
                        num_nodes=2)
    assert len(results) == 2
    with FederatedNode(tmp_path / "h", "z", mode="sync", num_nodes=1, keep_epochs=3) as node:
        for _ in range(7):
            node.update(WEIGHTS, 1)
    assert [p.rsplit("/", 1)[1][:8] for p in open_folder(tmp_path / "h").list("updates")] == [
        "00000004", "00000005", "00000006"]


def test_two_nodes_with_one_name_refuse_each_other(tmp_path):
    url = str(tmp_path / "shared")
    first = FederatedNode(url, "alice", timeout=30)
    with pytest.raises(DuplicateNameError, match=f"'alice'.*{url}"):
        FederatedNode(url, "alice", timeout=30)
    first.update(WEIGHTS, 1)  # the refused one changed nothing
    # One that took the name over (both started at once): the first finds out at its update.
    folder = open_folder(url)
    folder.put("nodes/alice.json", json.dumps({"instance": "someone else", "time": 0}).encode())
    with pytest.raises(DuplicateNameError, match=f"'alice' took over.*{url}"):
        first.update(WEIGHTS, 1)
    first.close()
    assert folder.list("nodes") == ["nodes/alice.json"]  # a successor's marker stays
    # A stale marker (its node stopped longer than timeout ago) frees the name.
    with FederatedNode(url, "alice", timeout=30) as again:
        again.update(WEIGHTS, 1)
    assert folder.list("nodes") == []


def test_bad_files_are_skipped_with_one_warning_each(tmp_path, caplog):
    url = str(tmp_path / "shared")
    folder = open_folder(url)
    other = spec_hash(spec_of_arrays([np.zeros(3, np.float32)]))
    folder.put(f"updates/bad/00000000-{HASH[:16]}.pyfd", stored()[:-5])
    folder.put(f"updates/other/00000000-{other[:16]}.pyfd",
               stored(weights=[np.zeros(3, np.float32)], spec_hash_=other))
    folder.put(f"updates/liar/00000000-{HASH[:16]}.pyfd", stored(node="bob", epoch=0))
    with caplog.at_level(logging.WARNING, logger="pyfed"):
        with FederatedNode(url, "a") as node:
            for _ in range(3):
                weights, metrics = node.update(WEIGHTS, 1)
    assert metrics["nodes"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("truncated" in m for m in messages) == 1, messages
    assert sum(f"spec {other[:16]}" in m and HASH in m for m in messages) == 1, messages
    assert sum("header says node 'bob'" in m for m in messages) == 1, messages


def test_published_metrics_keep_only_what_peers_accept():
    url = memory_url()
    with FederatedNode(url, "a") as a, FederatedNode(url, "b") as b:
        a.update(WEIGHTS, 1, metrics={"loss": float("nan"), "acc": np.float32(0.5), "s": "x",
                                      "n": np.int64(3), "flag": True, "v": [1, [2]]})
        _, metrics = b.update(WEIGHTS, 1, metrics={"acc": 0.75})
    assert metrics == {"acc": pytest.approx(0.625), "n": 3.0, "nodes": 2, "staleness_max": 0}


def test_bad_arguments_and_updates_are_refused_clearly(tmp_path):
    url = str(tmp_path / "f")
    with pytest.raises(ConfigurationError, match="num_nodes"):
        FederatedNode(url, "a", mode="sync")
    with pytest.raises(ConfigurationError, match="mode must be"):
        FederatedNode(url, "a", mode="gossip")
    with pytest.raises(ConfigurationError, match="node name"):
        FederatedNode(url, "../a")
    from pyfed.strategy import FedAdam, FedAsync

    with pytest.raises(ConfigurationError, match="applies to mode='sync' only"):
        FederatedNode(url, "a", strategy=FedAdam())
    with pytest.raises(ConfigurationError, match="synchronous Strategy"):
        FederatedNode(url, "a", mode="sync", num_nodes=2, strategy=FedAsync())
    with pytest.raises(ConfigurationError, match="staleness"):
        FederatedNode(url, "a", staleness="linear")
    with FederatedNode(url, "a") as node:
        with pytest.raises(UpdateRejected, match="nan.*not published"):
            node.update([WEIGHTS[0], np.array([np.nan, 0], np.float32)], 1)
        assert open_folder(url).list("updates") == []
        node.update(WEIGHTS, 1)
        with pytest.raises(ConfigurationError, match="tensor 0"):
            node.update([WEIGHTS[0][:2], WEIGHTS[1]], 1)
        with pytest.raises(ConfigurationError, match="num_examples"):
            node.update(WEIGHTS, 0)


def test_importing_pyfed_serverless_stays_light():
    code = ("import sys, json\nfrom pyfed.serverless import FederatedNode\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [m for m in ("tensorflow", "keras", "s3fs", "botocore", "fsspec") if m in loaded]
