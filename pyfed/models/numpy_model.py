"""A model that is only a list of numpy arrays: for benchmarks, tests and TF-free clients."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..spec import TensorSpec, spec_of_arrays
from .base import FitOutcome


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
