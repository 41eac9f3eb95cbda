"""Model adapters: scikit-learn's SGDClassifier, LogisticRegression and MLPClassifier.

In process, no sockets: shapes and specs, the JSON description a client rebuilds from, and a
hand-rolled 3-client FedAvg loop on digits. The end-to-end run with real processes lives with
the server tests.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.linear_model import LogisticRegression, Perceptron, SGDClassifier
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from pyfed.data import load_digits
from pyfed.errors import ConfigurationError, ModelMismatchError
from pyfed.models import as_adapter
from pyfed.models.sklearn_adapter import SklearnAdapter, sklearn_from_description
from pyfed.wire.spec import spec_hash
from pyfed.strategy.aggregate import weighted_average

# name -> (estimator factory, fit config): small enough that 5 rounds take well under a second.
ESTIMATORS = {
    "sgd": (lambda: SGDClassifier(loss="log_loss", random_state=0), {"epochs": 2}),
    "logreg": (lambda: LogisticRegression(max_iter=20), {"epochs": 1}),
    "mlp": (lambda: MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01,
                                  random_state=0), {"epochs": 3, "batch_size": 32}),
}
KINDS = sorted(ESTIMATORS)


@pytest.fixture(scope="module")
def digits():
    """Held-out test set plus 3 client shards, split by hand (IID)."""
    x, y = load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:360], order[360:]
    shards = [(x[part], y[part]) for part in np.array_split(train, 3)]
    return shards, (x[test], y[test])


@pytest.fixture(autouse=True)
def one_blas_thread():
    # Tiny matrices: BLAS threads only add contention (several times slower on a busy machine).
    with threadpool_limits(limits=1):
        yield


def new_adapter(kind: str) -> SklearnAdapter:
    return SklearnAdapter(ESTIMATORS[kind][0](), n_features=64, classes=range(10))


# -- shapes, weights, spec ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_spec_matches_weights_exactly(kind):
    adapter = new_adapter(kind)
    assert adapter.initialized
    weights, spec = adapter.get_weights(), adapter.spec()
    assert len(weights) == len(spec)
    for array, tensor in zip(weights, spec):
        assert array.shape == tensor.shape and array.dtype.str == tensor.dtype == "<f8"
        assert array.flags.c_contiguous
        assert tensor.path == f"{adapter.name}/{tensor.name}"


def test_weight_layouts():
    sgd, logreg, mlp = (new_adapter(kind).spec() for kind in ("sgd", "logreg", "mlp"))
    assert [(s.name, s.shape) for s in sgd] == [("coef", (10, 64)), ("intercept", (10,))]
    assert [(s.name, s.shape) for s in logreg] == [("coef", (10, 64)), ("intercept", (10,))]
    # Interleaved per layer, like a Keras Dense stack.
    assert [(s.name, s.shape) for s in mlp] == [
        ("coefs_0", (64, 32)), ("intercepts_0", (32,)),
        ("coefs_1", (32, 10)), ("intercepts_1", (10,))]


def test_initial_weights():
    assert all(not w.any() for w in new_adapter("sgd").get_weights())
    assert all(not w.any() for w in new_adapter("logreg").get_weights())
    first, second = new_adapter("mlp").get_weights(), new_adapter("mlp").get_weights()
    # Seeded Glorot-uniform: reproducible, not symmetric, small.
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert len(np.unique(first[0])) > 1000 and np.abs(first[0]).max() < 0.3


def test_binary_shapes():
    for kind in KINDS:
        adapter = SklearnAdapter(ESTIMATORS[kind][0](), n_features=5, classes=["no", "yes"])
        shapes = [s.shape for s in adapter.spec()]
        assert shapes[:2] == ([(5, 32), (32,)] if kind == "mlp" else [(1, 5), (1,)])
        assert shapes[-1] == (1,)


@pytest.mark.parametrize("kind", KINDS)
def test_set_get_round_trip(kind):
    adapter = new_adapter(kind)
    rng = np.random.default_rng(1)
    new = [rng.normal(size=w.shape) for w in adapter.get_weights()]
    # As received from the network: read-only views of one buffer.
    frozen = [np.frombuffer(w.tobytes(), dtype="<f8").reshape(w.shape) for w in new]
    adapter.set_weights(frozen)
    got = adapter.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(got, new))
    got[0][...] = 0  # a copy: changing it does not change the model
    assert np.array_equal(adapter.get_weights()[0], new[0])


def test_set_weights_refuses_wrong_shapes():
    adapter = new_adapter("sgd")
    with pytest.raises(ModelMismatchError, match=r"coef has shape \[10, 64\]; received \[10, 63\]"):
        adapter.set_weights([np.zeros((10, 63)), np.zeros(10)])
    with pytest.raises(ModelMismatchError, match="has 2 weight tensors; received 1"):
        adapter.set_weights([np.zeros((10, 64))])


# -- describe / rebuild -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_describe_round_trips_through_json(kind):
    adapter = new_adapter(kind)
    description = adapter.describe()
    wire = json.loads(json.dumps(description, allow_nan=False))
    assert wire["kind"] == "sklearn" and wire["estimator"] == adapter.name
    assert wire["n_features"] == 64 and wire["classes"] == list(range(10))
    rebuilt = sklearn_from_description(wire)
    assert rebuilt.spec() == adapter.spec()
    assert spec_hash(rebuilt.spec()) == spec_hash(adapter.spec())
    assert rebuilt.estimator.get_params() == adapter.estimator.get_params()


def test_describe_keeps_infinite_floats_and_drops_objects():
    estimator = LogisticRegression(C=float("inf"), random_state=np.random.RandomState(0))
    description = SklearnAdapter(estimator, n_features=3, classes=[0, 1, 2]).describe()
    wire = json.loads(json.dumps(description, allow_nan=False))
    assert wire["params"]["C"] == {"float": "inf"} and "random_state" not in wire["params"]
    assert sklearn_from_description(wire).estimator.C == float("inf")


@pytest.mark.parametrize("name", ["RandomForestClassifier", "os.system", "Pipeline", None, 3])
def test_rebuild_refuses_other_estimators(name):
    description = {**new_adapter("sgd").describe(), "estimator": name}
    with pytest.raises(ModelMismatchError, match="refusing to build estimator"):
        sklearn_from_description(description)


@pytest.mark.parametrize("params, message", [
    ({"no_such_param": 1}, "unknown SGDClassifier parameter 'no_such_param'"),
    ({"alpha": {"__class__": "x"}}, "parameter 'alpha' must be a number"),
    ({"alpha": [[1]]}, "parameter 'alpha' must be a number"),
    ({"loss": "no_such_loss"}, "cannot build the server's SGDClassifier"),
    ({"alpha": "high"}, "cannot build the server's SGDClassifier"),
    ({"average": True}, "average=False"),
])
def test_rebuild_refuses_bad_params(params, message):
    description = new_adapter("sgd").describe()
    description["params"] = {**description["params"], **params}
    with pytest.raises(ModelMismatchError, match=message):
        sklearn_from_description(description)


@pytest.mark.parametrize("change", [
    {"n_features": 0}, {"n_features": True}, {"n_features": "64"}, {"classes": [1]},
    {"classes": [[0], [1]]}, {"classes": "0123"}, {"kind": "keras"}, {"params": []}])
def test_rebuild_refuses_bad_shapes(change):
    with pytest.raises(ModelMismatchError):
        sklearn_from_description({**new_adapter("sgd").describe(), **change})


def test_rebuild_refuses_huge_models():
    description = new_adapter("mlp").describe()
    description["params"]["hidden_layer_sizes"] = [10**6, 10**6]
    with pytest.raises(ModelMismatchError, match="parameters; PyFed's limit"):
        sklearn_from_description(description)


# -- initialisation -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_unfitted_without_shapes_says_what_to_pass(kind):
    adapter = SklearnAdapter(ESTIMATORS[kind][0]())
    assert not adapter.initialized
    for method in (adapter.spec, adapter.get_weights, adapter.describe):
        with pytest.raises(ConfigurationError,
                           match=r"n_features=.*classes=.*initialize_from_data"):
            method()
    with pytest.raises(ConfigurationError, match="classes is missing"):
        SklearnAdapter(ESTIMATORS[kind][0](), n_features=64)


def test_as_adapter_wraps_estimators_and_initialize_from_data(digits):
    _, (x, y) = digits
    adapter = as_adapter(SGDClassifier(loss="log_loss"))
    assert isinstance(adapter, SklearnAdapter) and not adapter.initialized
    assert adapter.initialize_from_data(x, y) is adapter
    assert adapter.initialized and adapter.spec() == new_adapter("sgd").spec()
    adapter.initialize_from_data(x[:5], y[:5])  # already initialised: only checked
    with pytest.raises(ConfigurationError, match="63 features"):
        adapter.initialize_from_data(x[:, 1:], y)
    assert as_adapter(adapter) is adapter


def test_unsupported_estimators_and_settings():
    # A close relative of SGDClassifier, but not one of the three: refused by name.
    with pytest.raises(ConfigurationError, match=r"sklearn\.linear_model\._perceptron\.Perceptron"):
        as_adapter(Perceptron())
    with pytest.raises(ConfigurationError, match="average=False"):
        SklearnAdapter(SGDClassifier(average=True))
    with pytest.raises(ConfigurationError, match="balanced"):
        SklearnAdapter(SGDClassifier(class_weight="balanced"))
    with pytest.raises(ConfigurationError, match="liblinear"):
        SklearnAdapter(LogisticRegression(solver="liblinear"))
    with pytest.raises(ConfigurationError, match="early_stopping"):
        SklearnAdapter(MLPClassifier(early_stopping=True))


def test_fitted_estimator_is_adopted(digits):
    x, y = digits[0][0]
    estimator = LogisticRegression(max_iter=300).fit(x, y)  # float32 data
    adapter = SklearnAdapter(estimator)
    assert adapter.initialized and [s.shape for s in adapter.spec()] == [(10, 64), (10,)]
    assert all(w.dtype == np.float64 for w in adapter.get_weights())
    assert adapter.evaluate(x, y, {})[2]["accuracy"] > 0.9
    with pytest.raises(ConfigurationError, match="fitted on 64 features"):
        SklearnAdapter(LogisticRegression().fit(x, y), n_features=10)


# -- training -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_fedavg_three_clients(kind, digits):
    shards, (x_test, y_test) = digits
    factory, config = ESTIMATORS[kind]
    server = SklearnAdapter(factory(), n_features=64, classes=range(10))
    description = json.loads(json.dumps(server.describe()))
    clients = [sklearn_from_description(description) for _ in shards]
    epochs = config["epochs"]
    for server_round in range(1, 6):
        global_weights = server.get_weights()
        updates, counts = [], []
        for client, (x, y) in zip(clients, shards):
            client.set_weights(global_weights)
            outcome = client.fit(x, y, {**config, "round": server_round})
            assert outcome.num_examples == len(x)
            assert outcome.first_epoch == (server_round - 1) * epochs
            assert set(outcome.history) == {"loss", "accuracy"}
            assert all(len(v) == epochs for v in outcome.history.values())
            assert outcome.metrics == {k: v[-1] for k, v in outcome.history.items()}
            updates.append(client.get_weights())
            counts.append(outcome.num_examples)
        server.set_weights(weighted_average(updates, counts))
    loss, count, metrics = server.evaluate(x_test, y_test, {})
    assert count == len(x_test) and np.isfinite(loss)
    assert metrics["accuracy"] >= 0.85, (kind, loss, metrics)


def test_hinge_loss_falls_back_and_says_so(digits):
    x, y = digits[0][0]
    adapter = SklearnAdapter(SGDClassifier(random_state=0), n_features=64, classes=range(10))
    outcome = adapter.fit(x, y, {"epochs": 2, "round": 1})
    assert set(outcome.history) == {"hinge_loss", "accuracy"}
    loss, _, metrics = adapter.evaluate(x, y, {})
    assert metrics["hinge_loss"] == loss and metrics["accuracy"] > 0.8


@pytest.mark.parametrize("estimator", [
    SGDClassifier(loss="log_loss", random_state=0), LogisticRegression(max_iter=20),
    MLPClassifier(hidden_layer_sizes=(8,), random_state=0),
    MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=20, random_state=0)],
    ids=["sgd", "logreg", "mlp-adam", "mlp-lbfgs"])
def test_client_missing_classes_keeps_the_shape(estimator, digits):
    x, y = digits[0][0]
    adapter = SklearnAdapter(estimator, n_features=64, classes=range(10))
    spec = adapter.spec()
    local = np.isin(y, [3, 7])
    outcome = adapter.fit(x[local], y[local], {"epochs": 1, "round": 1})
    assert adapter.spec() == spec and outcome.num_examples == local.sum()
    assert np.isfinite(adapter.evaluate(x, y, {})[0])


def test_fit_refuses_unknown_labels_and_wrong_width(digits):
    x, y = digits[0][0]
    adapter = SklearnAdapter(SGDClassifier(), n_features=64, classes=range(5))
    with pytest.raises(ConfigurationError, match=r"labels \[5, 6, 7, 8, 9\]"):
        adapter.fit(x, y, {"epochs": 1})
    with pytest.raises(ConfigurationError, match="data has 60 features"):
        adapter.evaluate(x[:, :60], y, {})


def test_lr_from_config_reaches_the_estimator(digits):
    x, y = digits[0][0]
    adapter = SklearnAdapter(MLPClassifier(hidden_layer_sizes=(8,), random_state=0),
                             n_features=64, classes=range(10))
    adapter.fit(x, y, {"epochs": 1, "lr": 0.05})
    assert adapter.estimator.learning_rate_init == 0.05
    assert adapter.estimator._optimizer.learning_rate_init == 0.05
    adapter.compile(loss="sparse_categorical_crossentropy", lr=0.02)
    assert adapter.estimator._optimizer.learning_rate_init == 0.02


# -- imports ------------------------------------------------------------------------------------

def test_lazy_exports():
    import pyfed.models

    assert pyfed.models.SklearnAdapter is SklearnAdapter
    assert pyfed.models.sklearn_from_description is sklearn_from_description


def test_import_pyfed_does_not_import_sklearn():
    code = ("import sys, pyfed, pyfed.models\n"
            "assert 'sklearn' not in sys.modules, 'import pyfed imported sklearn'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_client_estimator_takes_shapes_from_the_server_description():
    server = new_adapter("sgd")
    client = SklearnAdapter(SGDClassifier(loss="log_loss", alpha=1e-3))
    assert client.initialize_like(server.describe()) is client
    assert client.spec() == server.spec() and client.estimator.alpha == 1e-3
    client.initialize_like(server.describe())  # same shapes: fine
    with pytest.raises(ModelMismatchError, match="server trains 'MLPClassifier'"):
        SklearnAdapter(SGDClassifier()).initialize_like(new_adapter("mlp").describe())
    with pytest.raises(ModelMismatchError, match="the server's has 64"):
        SklearnAdapter(SGDClassifier(), n_features=8, classes=[0, 1]).initialize_like(
            server.describe())


# ---------------------------------------------------------------------------------------------
# End to end: a scikit-learn estimator federated by real server and client processes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["SGDClassifier", "LogisticRegression"])
def test_sklearn_estimator_federates_end_to_end(tmp_path, estimator):
    from conftest import tagged
    from procs import ProcessGroup, free_port

    port = free_port()
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", "sklearn-server", "--estimator", estimator, "--port", port,
                   "--clients", 3, "--rounds", 5, "--logdir", tmp_path / "logs")
        for i in range(1, 4):
            # No model on the client: it rebuilds the estimator from WELCOME (JSON, allow-listed).
            group.role(f"client_{i}", "sklearn-client", "--port", port, "--clients", 3,
                       "--index", i, "--epochs", 2, "--logdir", tmp_path / "logs")
        codes = group.wait_all(timeout=180)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        assert result["test"]["accuracy"] >= 0.85, result["test"]
        assert result["history"]["history"]["participants"] == [3] * 5
        for i in range(1, 4):
            assert tagged(group.output(f"client_{i}"), "CLIENT")["weights"] == result["weights"]


# -- the data against the model, before round 1 (issue 10, B2) ----------------------------------

def test_softmax_regression_checks_width_and_labels():
    from pyfed.models import SoftmaxRegression

    model = SoftmaxRegression(64, 10)
    model.check_data(np.zeros((5, 64)), [0, 1, 2, 3, 9])
    with pytest.raises(ConfigurationError, match=r"^data has 32 features per example; the model "
                                                 r"expects 64 \(input shape \(None, 64\)\)$"):
        model.check_data(np.zeros((5, 32)), [0] * 5)
    with pytest.raises(ConfigurationError, match=r"labels include 10 \(they range over 0..10\); "
                                                 r"the model expects class numbers 0..9 "
                                                 r"\(SoftmaxRegression\(64, 10\)\)"):
        model.check_data(np.zeros((5, 64)), [0, 1, 10, 3, 4])
    with pytest.raises(ConfigurationError, match="labels are not numbers"):
        model.check_data(np.zeros((2, 64)), np.array([1, None], dtype=object))


def test_sklearn_adapter_check_data_names_both_widths(digits):
    (x, y), _ = digits[0][0], None
    adapter = new_adapter("sgd")
    adapter.check_data(x, y)
    with pytest.raises(ConfigurationError, match=r"the data has 32 features per example; the "
                                                 r"SGDClassifier expects 64 \(n_features=64\)"):
        adapter.check_data(x[:, :32], y)
    with pytest.raises(ConfigurationError, match="cannot be read as numbers"):
        adapter.check_data(np.array([["a"] * 64] * 3), y[:3])
