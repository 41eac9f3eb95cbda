"""FederatedCallback, ServerFederation and compare_with_standalone: Keras nodes federating
inside ``model.fit``, through a shared folder or an asynchronous FL_Server.

The end-to-end tests run every node and the server as real processes on 127.0.0.1
(compare_with_standalone's own, or tests/serverless_roles.py for the server), ended by PID.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from procs import ProcessGroup, free_port
from test_imports import loaded_after

from pyfed.errors import ConfigurationError, ModelMismatchError, ServerUnreachable
from pyfed.models import SoftmaxRegression
from pyfed.serverless import ServerFederation, compare_with_standalone
from pyfed.serverless import compare

ROLES = Path(__file__).with_name("serverless_roles.py")


def scalars(directory) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def start_server(group: ProcessGroup, port: int, test: str, logdir: Path, *, model="digits",
                 strategy="FedBuff", options='{"buffer_size": 2}', rounds=5, clients=2):
    return group.start("server", [sys.executable, ROLES, "server", "--port", port, "--model",
                                  model, "--strategy", strategy, "--strategy-options", options,
                                  "--rounds", rounds, "--clients", clients, "--test", test,
                                  "--logdir", logdir, "--run-name", "async"],
                       env=compare.child_environment())


def server_result(group: ProcessGroup) -> dict:
    assert group.wait("server", 180) == 0, group.dump()
    line = [l for l in group.output("server").splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# ---------------------------------------------------------------------------------------------
# The Done-when: a label split, standalone against federated through a folder (sync)
# ---------------------------------------------------------------------------------------------

def test_label_split_nodes_stay_under_half_alone_and_pass_085_federated_in_sync(tmp_path):
    result = compare_with_standalone(nodes=2, epochs=8, split="label", mode="sync",
                                     workdir=tmp_path / "compare")
    assert result["nodes"] == ["node_1", "node_2"]
    # Alone, a node has seen five of the ten digits: it cannot pass about one half.
    assert all(accuracy < 0.55 for accuracy in result["standalone"]), result["standalone"]
    assert all(accuracy > 0.85 for accuracy in result["federated"]), result["federated"]
    # Sync mode: every node aggregates the same updates the same way, so they end as one model.
    assert result["federated"][0] == pytest.approx(result["federated"][1], abs=1e-6)
    history = result["details"]["federated"][0]["history"]
    assert history["nodes_fed"] == [2.0] * 8  # both nodes took part in every epoch
    assert len(history["accuracy"]) == 8 and len(history["accuracy_fed"]) == 8


# ---------------------------------------------------------------------------------------------
# The same callback through an asynchronous FL_Server
# ---------------------------------------------------------------------------------------------

def test_keras_nodes_federate_inside_fit_through_a_fedbuff_server(tmp_path):
    trains, test = compare.prepare_data(tmp_path / "data", 2, "iid", seed=0)
    logdir = tmp_path / "logs"
    port = free_port()
    federation = {"kind": "server", "server_ip": "127.0.0.1", "server_port": port,
                  "options": {"timeout": 120, "connect_timeout": 120}}
    jobs = [{"name": f"node_{i + 1}", "train": trains[i], "test": test, "epochs": 8,
             "seed": 0, "federation": federation, "logdir": None} for i in range(2)]
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, test, logdir, rounds=4)
        nodes = compare.run_nodes(jobs, tmp_path / "nodes", timeout=300)
        result = server_result(group)
    history = result["history"]["history"]
    assert result["history"]["rounds"] == [1, 2, 3, 4]
    assert set(history["client_updates"][-1]) == {"node_1", "node_2"}
    final = history["test_accuracy"][-1]
    assert final > 0.8, history["test_accuracy"]
    for node in nodes:
        # Each node ends holding the server's final model (FINISH), and its later updates
        # returned it unchanged: its test accuracy is the server's last one.
        assert node["accuracy"] == pytest.approx(final, abs=1e-4), (node, final)
        assert node["history"]["finished_fed"][-1] == 1.0
        versions = node["history"].get("version_fed", [])
        assert versions and versions == sorted(versions), node["history"]
    # Each node's curves are in the server's run, PyFed's layout: clients/<name>/epoch_*.
    run_dir = Path(result["run_dir"])
    for name in ("node_1", "node_2"):
        curves = scalars(run_dir / "clients" / name)
        assert {"epoch_loss", "epoch_accuracy", "epoch_finished_fed"} <= set(curves), curves
        assert [step for step, _ in curves["epoch_accuracy"]] == list(range(8))


def test_server_federation_returns_each_next_version_then_the_final_model(tmp_path):
    """Numpy weights and a numpy server: update() is exactly FedAsync's next version."""
    _, test = compare.prepare_data(tmp_path / "data", 1, "iid", seed=0)
    port = free_port()
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, test, tmp_path / "logs", model="softmax", strategy="FedAsync",
                     options='{"mixing": 0.5}', rounds=3, clients=1)
        # A node that brings a model of another shape is refused at the handshake.
        wrong = ServerFederation("127.0.0.1", port, "wrong_model", connect_timeout=60,
                                 model=SoftmaxRegression(32, 10))
        with pytest.raises(ModelMismatchError, match="refused the connection"):
            wrong.current_weights()
        with ServerFederation("127.0.0.1", port, "numpy_node", connect_timeout=60, timeout=60,
                              model=SoftmaxRegression(64, 10)) as node:
            start = node.current_weights()
            with pytest.raises(ModelMismatchError, match="tensor 0"):
                node.update([np.zeros((3, 3), np.float32), start[1]], 10)
            weights, metrics = node.update([w + 1 for w in start], 10)
            assert metrics == {"version": 1.0}
            for new, old in zip(weights, start):  # 0.5 x + 0.5 (x + 1), staleness 0
                np.testing.assert_allclose(new, old + 0.5, atol=1e-6)
            weights, metrics = node.update([w + 1 for w in weights], 10, epoch=1)
            assert metrics == {"version": 2.0}
            final, metrics = node.update([w + 1 for w in weights], 10, epoch=2)
            assert metrics == {"finished": 1.0} and node.finished
            for new, old in zip(final, weights):
                np.testing.assert_allclose(new, old + 0.5, atol=1e-6)
            again, metrics = node.update([w + 7 for w in final], 10, epoch=3)
            assert metrics == {"finished": 1.0}
            assert all(np.array_equal(a, b) for a, b in zip(again, final))
        with pytest.raises(ConfigurationError, match="numpy_node: this ServerFederation is closed"):
            node.update(final, 10)
        result = server_result(group)
    assert result["history"]["rounds"] == [1, 2, 3]


def test_server_federation_names_the_server_it_cannot_reach():
    port = free_port()  # nothing listens there
    node = ServerFederation("127.0.0.1", port, "lonely", connect_timeout=0.5)
    with pytest.raises(ServerUnreachable, match=f"127.0.0.1:{port}"):
        node.update([np.zeros(3, np.float32)], 1)
    node.close()


# ---------------------------------------------------------------------------------------------
# Staleness: the node's weighting against flwr-serverless's unweighted mixing
# ---------------------------------------------------------------------------------------------

def test_staleness_weighting_beats_unweighted_mixing_when_one_node_is_much_slower(tmp_path):
    from benchmarks.serverless_staleness import run

    weighted = run("polynomial", seed=0, workdir=tmp_path / "polynomial")
    unweighted = run("constant", seed=0, workdir=tmp_path / "constant")
    fast, fast_unweighted = weighted["nodes"][0], unweighted["nodes"][0]
    assert fast["staleness_max"] >= 10 and fast_unweighted["staleness_max"] >= 10
    # Mixing the slow node's old update in at full weight every epoch drags the fast node's
    # model back toward it; discounted by its staleness, it costs much less.
    assert fast["loss"] < 0.75 * fast_unweighted["loss"], (weighted, unweighted)
    assert fast["accuracy"] > fast_unweighted["accuracy"], (weighted, unweighted)


# ---------------------------------------------------------------------------------------------
# The callback itself, in this process
# ---------------------------------------------------------------------------------------------

class Recorder:
    """A federation that records what the callback gives it and answers with fixed weights."""

    name = "recorder"

    def __init__(self, answer=None, metrics=None):
        self.calls = []
        self.answer = answer
        self.metrics = metrics if metrics is not None else {"accuracy": 0.25, "nodes": 2}

    def update(self, weights, num_examples, metrics=None, epoch=None):
        self.calls.append({"num_examples": num_examples, "metrics": dict(metrics),
                           "epoch": epoch})
        return (self.answer(weights) if self.answer else weights), dict(self.metrics)


@pytest.fixture(scope="module")
def digits():
    from pyfed.data import load_digits

    x, y = load_digits()
    return x[:320], y[:320]


def compiled_model():
    from pyfed.data import digits_model

    model = digits_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_the_callback_federates_every_n_epochs_and_logs_the_federated_metrics(tmp_path, digits):
    from pyfed.keras import FederatedCallback

    zeros = Recorder(answer=lambda weights: [np.zeros_like(w) for w in weights])
    model = compiled_model()
    callback = FederatedCallback(zeros, every_n_epochs=2, logdir=tmp_path, run_name="mine")
    history = model.fit(*digits, epochs=4, batch_size=32, verbose=0, callbacks=[callback])
    assert [call["epoch"] for call in zeros.calls] == [1, 3]
    # By default a node weighs as the batches it trained in the epoch: 320 / 32.
    assert [call["num_examples"] for call in zeros.calls] == [10, 10]
    assert {"loss", "accuracy"} <= set(zeros.calls[0]["metrics"])
    assert not any(key.endswith("_fed") for key in zeros.calls[1]["metrics"])
    assert history.history["accuracy_fed"] == [0.25, 0.25]  # the epochs that federated
    assert all(not w.any() for w in model.get_weights())  # the federation's weights were set
    curves = scalars(tmp_path / "mine" / "clients" / "recorder")
    assert [step for step, _ in curves["epoch_accuracy"]] == [0, 1, 2, 3]
    assert [step for step, _ in curves["epoch_nodes_fed"]] == [1, 3]


def test_the_callback_uses_the_given_example_count_and_can_write_no_curves(tmp_path, digits,
                                                                          monkeypatch):
    from pyfed.keras import FederatedCallback

    monkeypatch.chdir(tmp_path)
    recorder = Recorder()
    compiled_model().fit(*digits, epochs=1, batch_size=64, verbose=0, callbacks=[
        FederatedCallback(recorder, num_examples_per_epoch=320, logdir=False)])
    assert recorder.calls[0]["num_examples"] == 320
    assert list(tmp_path.iterdir()) == []


def test_a_federation_with_another_model_is_named_not_set(digits):
    from pyfed.keras import FederatedCallback

    wrong = Recorder(answer=lambda weights: [w[..., :1] for w in weights])
    with pytest.raises(ModelMismatchError, match="tensor 0 has shape"):
        compiled_model().fit(*digits, epochs=1, verbose=0,
                             callbacks=[FederatedCallback(wrong, logdir=False)])


@pytest.mark.parametrize("arguments,message", [
    ({"federation": object()}, "federation must be a pyfed.serverless.FederatedNode"),
    ({"num_examples_per_epoch": 0}, "num_examples_per_epoch must be None or an integer >= 1"),
    ({"every_n_epochs": 0}, "every_n_epochs must be an integer >= 1; received 0"),
    ({"postfix": ""}, "postfix must be a non-empty string"),
    ({"run_name": "../x"}, "run_name"),
])
def test_the_callback_refuses_bad_arguments_when_built(arguments, message):
    from pyfed.keras import FederatedCallback

    with pytest.raises(ConfigurationError, match=message):
        FederatedCallback(**{"federation": Recorder(), **arguments})


def test_compare_refuses_a_model_function_a_node_cannot_import():
    with pytest.raises(ConfigurationError, match="module-level function"):
        compare_with_standalone(model_fn=lambda: None)
    with pytest.raises(ConfigurationError, match="'module:function'"):
        compare_with_standalone(model_fn="no_colon")


def test_label_split_gives_each_node_a_block_of_whole_classes():
    labels = np.repeat(np.arange(10), 5)
    first, second = compare.split_by_label(labels, 2)
    assert set(labels[first]) == {0, 1, 2, 3, 4} and set(labels[second]) == {5, 6, 7, 8, 9}


@pytest.mark.parametrize("statement", ["import pyfed.serverless",
                                       "from pyfed.serverless import ServerFederation",
                                       "from pyfed.serverless import compare_with_standalone"])
def test_serverless_imports_load_no_tensorflow(statement):
    loaded = loaded_after(statement)
    assert "tensorflow" not in loaded and "keras" not in loaded, statement
