"""The Keras adapter: compiled once, optimizer kept, FedProx's proximal term really applied."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pyfed import data  # noqa: E402
from pyfed.errors import ConfigurationError  # noqa: E402
from pyfed.models.keras_adapter import KerasAdapter, make_optimizer, model_from_description  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits()
    return x[:256], y[:256]


def adapter():
    keras.utils.set_random_seed(0)
    a = KerasAdapter(data.digits_model())
    a.compile("sparse_categorical_crossentropy", "adam", 0.01, ["accuracy"])
    return a


def test_proximal_term_changes_the_loss_by_exactly_mu_half_squared_distance(digits):
    x, y = digits
    a = adapter()
    global_weights = a.get_weights()
    a.set_weights(global_weights)
    a.fit(x, y, {"epochs": 1, "round": 1, "proximal_mu": 2.0, "verbose": 0})  # w moves from w_global
    local = a.get_weights()
    distance = sum(float(((w.astype(np.float64) - g) ** 2).sum()) for w, g in zip(local, global_weights))
    assert distance > 0
    with_term = a.evaluate(x, y, {})[0]          # mu = 2.0, same batch, same weights
    a._mu.assign(0.0)
    without_term = a.evaluate(x, y, {})[0]
    assert with_term - without_term == pytest.approx(0.5 * 2.0 * distance, rel=1e-3)


def test_mu_zero_leaves_the_loss_alone(digits):
    x, y = digits
    a, b = adapter(), adapter()
    a.fit(x, y, {"epochs": 1, "round": 1, "verbose": 0})
    b.fit(x, y, {"epochs": 1, "round": 1, "proximal_mu": 0.0, "verbose": 0})
    assert b._anchors is None  # no FedProx machinery unless a round asks for it
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def test_compiled_once_and_the_optimizer_keeps_its_state_across_rounds(digits):
    x, y = digits
    a = adapter()
    optimizer = a.model.optimizer
    for server_round in (1, 2, 3):
        a.set_weights(a.get_weights())
        a.compile("sparse_categorical_crossentropy", "adam", 0.01, ["accuracy"])  # a no-op now
        outcome = a.fit(x, y, {"epochs": 2, "round": server_round, "batch_size": 64, "verbose": 0})
        assert outcome.first_epoch == (server_round - 1) * 2
    assert a.model.optimizer is optimizer
    assert int(optimizer.iterations.numpy()) == 3 * 2 * 4  # 3 rounds x 2 epochs x 4 batches


def test_lr_from_the_server_config_is_applied(digits):
    x, y = digits
    a = adapter()
    a.fit(x, y, {"epochs": 1, "round": 1, "lr": 0.001, "verbose": 0})
    assert float(a.model.optimizer.learning_rate.numpy()) == pytest.approx(0.001)


def test_optimizer_as_class_instance_or_string():
    assert isinstance(make_optimizer(keras.optimizers.SGD, 0.1), keras.optimizers.SGD)
    assert float(make_optimizer("adam", 0.02).learning_rate.numpy()) == pytest.approx(0.02)
    instance = keras.optimizers.RMSprop()
    assert make_optimizer(instance, 0.03) is instance
    assert float(instance.learning_rate.numpy()) == pytest.approx(0.03)


def test_architecture_travels_as_json_and_is_rebuilt_in_safe_mode():
    model = data.digits_model()
    rebuilt = model_from_description(KerasAdapter(model).describe())
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]
    lambda_model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2)])
    with pytest.raises(Exception, match="(?i)lambda|unsafe|safe_mode"):
        model_from_description({"kind": "keras", "json": lambda_model.to_json()})


def test_a_model_without_weights_is_refused_clearly():
    with pytest.raises(ConfigurationError, match="no weights yet; give it an input shape"):
        KerasAdapter(keras.Sequential([keras.layers.Dense(3)]))


def test_check_data_names_the_data_and_the_model_before_any_training():
    a = adapter()  # digits_model: input (None, 64), 10 softmax outputs, sparse categorical loss
    x, y = np.zeros((8, 64), np.float32), np.arange(8)
    a.check_data(x, y)  # fits
    with pytest.raises(ConfigurationError, match=r"^data has 32 features per example; the model "
                                                 r"expects 64 \(input shape \(None, 64\)\)$"):
        a.check_data(np.zeros((8, 32), np.float32), y)
    with pytest.raises(ConfigurationError, match=r"data has examples of shape \(8, 8\); the "
                                                 r"model expects \(64,\)"):
        a.check_data(np.zeros((8, 8, 8), np.float32), y)
    with pytest.raises(ConfigurationError, match=r"labels are strings \(e.g. 'cat'\)"):
        a.check_data(x, np.array(["cat"] * 8))
    with pytest.raises(ConfigurationError, match=r"labels include 10 \(they range over 0..12\); "
                                                 r"the model expects class numbers 0..9 "
                                                 r"\(output shape \(None, 10\)\)"):
        a.check_data(x, np.array([0, 1, 10, 12, 3, 4, 5, 6]))
    with pytest.raises(ConfigurationError, match="labels include -1"):
        a.check_data(x, np.array([0, -1] * 4))
    with pytest.raises(ConfigurationError, match="labels include 2.5, which is not a class"):
        a.check_data(x, np.array([0.0, 2.5] * 4))


def test_check_data_follows_the_loss_one_hot_targets_and_unknown_inputs():
    one_hot = KerasAdapter(data.digits_model())
    one_hot.compile("categorical_crossentropy", "adam", 0.01)
    x = np.zeros((4, 64), np.float32)
    one_hot.check_data(x, np.eye(10, dtype=np.float32)[:4])  # one-hot rows of 10: fine
    with pytest.raises(ConfigurationError, match="labels have 12 columns per example; the model "
                                                 "outputs 10"):
        one_hot.check_data(x, np.zeros((4, 12), np.float32))
    regression = KerasAdapter(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]))
    regression.compile("mse", "adam", 0.01)
    regression.check_data(np.zeros((4, 3)), np.array([0.5, 7.0, -3.0, 1e6]))  # any real target
    a = adapter()
    a.check_data(iter([]), None)  # a generator or dataset has no shape: left to Keras
