"""A model that is only a list of numpy arrays: for benchmarks, tests and TF-free clients."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..wire.spec import TensorSpec, spec_of_arrays
from ..errors import ConfigurationError
from .base import FitOutcome
from .data_checks import check_features, check_labels


# The largest SoftmaxRegression rebuilt from a server's description: 1 GiB of float32 weights.
MAX_PARAMETERS = 1 << 28


class NumpyModel:
    """Weights without training: ``fit`` returns them unchanged (an "echo" client).

    Subclass and override :meth:`fit` to train something real with numpy alone.
    """

    def __init__(self, weights: list[np.ndarray], num_examples: int = 1):
        self.weights = [np.asarray(w) for w in weights]
        self.num_examples = num_examples

    def get_weights(self) -> list[np.ndarray]:
        return self.weights

    def set_weights(self, weights: list[np.ndarray]) -> None:
        # Keep the received arrays as they are: fit() echoes them straight back, with no copy.
        self.weights = list(weights)

    def fit(self, data: Any, target: Any, config: dict) -> FitOutcome:
        return FitOutcome(num_examples=self.num_examples)

    def evaluate(self, data: Any, target: Any, config: dict) -> tuple[float, int, dict]:
        return 0.0, self.num_examples, {}

    def spec(self) -> list[TensorSpec]:
        return spec_of_arrays(self.weights)

    def describe(self) -> dict:
        return {"kind": "numpy"}


class SoftmaxRegression(NumpyModel):
    """Multinomial logistic regression trained with minibatch SGD in numpy alone.

    A real model with no TensorFlow: clients start in milliseconds, which is what the scale and
    strategy tests need, and it shows how little a :class:`ModelAdapter` takes.
    """

    def __init__(self, n_features: int, n_classes: int, lr: float = 0.5, seed: int = 0):
        rng = np.random.default_rng(seed)
        super().__init__([rng.normal(0, 0.01, (n_features, n_classes)).astype(np.float32),
                          np.zeros(n_classes, dtype=np.float32)])
        self.lr = lr
        self.seed = seed

    def set_weights(self, weights: list[np.ndarray]) -> None:
        # Training updates in place, so take a private copy of the (possibly read-only) arrays.
        self.weights = [np.array(w, dtype=np.float32) for w in weights]

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.weights[0] + self.weights[1]
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def _loss_and_accuracy(self, x, y) -> tuple[float, float]:
        p = self._probabilities(np.asarray(x, dtype=np.float32))
        y = np.asarray(y)
        loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
        return loss, float((p.argmax(axis=1) == y).mean())

    def fit(self, data: Any, target: Any, config: dict) -> FitOutcome:
        x, y = np.asarray(data, dtype=np.float32), np.asarray(target)
        epochs, batch = int(config.get("epochs", 1)), int(config.get("batch_size", 32))
        lr = float(config.get("lr") or self.lr)
        mu = float(config.get("proximal_mu", 0.0))
        anchors = [w.copy() for w in self.weights] if mu > 0 else None
        server_round = int(config.get("round", 1))
        rng = np.random.default_rng((self.seed, server_round))
        history: dict[str, list] = {"loss": [], "accuracy": []}
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), batch):
                idx = order[start:start + batch]
                p = self._probabilities(x[idx])
                p[np.arange(len(idx)), y[idx]] -= 1.0  # d(cross-entropy)/d(logits)
                grad_w, grad_b = x[idx].T @ p / len(idx), p.mean(axis=0)
                if anchors is not None:  # FedProx's proximal term mu/2 ||w - w_global||^2
                    grad_w += mu * (self.weights[0] - anchors[0])
                    grad_b += mu * (self.weights[1] - anchors[1])
                self.weights[0] -= lr * grad_w
                self.weights[1] -= lr * grad_b
            loss, accuracy = self._loss_and_accuracy(x, y)
            history["loss"].append(loss)
            history["accuracy"].append(accuracy)
        return FitOutcome(num_examples=len(y), metrics={"loss": history["loss"][-1],
                                                        "accuracy": history["accuracy"][-1]},
                          history=history, first_epoch=(server_round - 1) * epochs)

    def check_data(self, data: Any, target: Any) -> None:
        """Before round 1: ``n_features`` columns, labels in ``0..n_classes-1``."""
        n_features, n_classes = self.weights[0].shape
        check_features(data, (None, n_features))
        check_labels(target, n_classes, f"SoftmaxRegression({n_features}, {n_classes})")

    def evaluate(self, data: Any, target: Any, config: dict) -> tuple[float, int, dict]:
        loss, accuracy = self._loss_and_accuracy(data, target)
        return loss, len(target), {"accuracy": accuracy}

    def describe(self) -> dict:
        n_features, n_classes = self.weights[0].shape
        return {"kind": "numpy", "model": "SoftmaxRegression", "n_features": int(n_features),
                "n_classes": int(n_classes), "lr": float(self.lr)}

    @classmethod
    def from_description(cls, description: dict) -> "SoftmaxRegression":
        """Rebuild the server's model from WELCOME: its numbers come from the network, so
        they are checked (type, range, size) before anything is allocated."""
        n_features, n_classes = description.get("n_features"), description.get("n_classes")
        lr = description.get("lr", 0.5)
        for name, value in (("n_features", n_features), ("n_classes", n_classes)):
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not whole or not 1 <= value <= MAX_PARAMETERS:
                raise ConfigurationError(f"bad SoftmaxRegression description: {name} must be a "
                                         f"whole number in [1, {MAX_PARAMETERS}]; received "
                                         f"{value!r:.60}")
        if (n_features + 1) * n_classes > MAX_PARAMETERS:
            raise ConfigurationError(
                f"bad SoftmaxRegression description: {n_features} features x {n_classes} classes "
                f"is more than {MAX_PARAMETERS} parameters")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise ConfigurationError(f"bad SoftmaxRegression description: lr must be a finite "
                                     f"number > 0; received {lr!r:.60}")
        return cls(n_features, n_classes, lr=float(lr))
