"""FedAvg (McMahan et al., 2017): the examples-weighted mean of the clients' weights."""

from __future__ import annotations

import numpy as np

from .aggregate import WeightedSum, weighted_metrics
from .base import FitResult, Strategy


class FedAvg(Strategy):
    """Every connected client trains each round; their weights are averaged by ``num_examples``.

    The average streams: each result is folded into a float64 running sum as it arrives, so the
    server holds O(model) state however many clients there are.
    """

    def __init__(self) -> None:
        self._sum: WeightedSum | None = None
        self._metrics: list[tuple[int, dict]] = []

    def configure_fit(self, server_round, parameters, clients):
        return [(client, {}) for client in clients]

    def begin(self, server_round: int, parameters: list[np.ndarray]) -> None:
        self._sum = WeightedSum(parameters)
        self._metrics = []

    def add(self, result: FitResult) -> None:
        if self._sum is None:
            raise RuntimeError("FedAvg.add called before begin()")
        self._sum.add(result.weights, result.num_examples)
        self._metrics.append((result.num_examples, dict(result.metrics)))

    def finish(self) -> tuple[list[np.ndarray], dict]:
        if self._sum is None or self._sum.count == 0:
            raise RuntimeError("FedAvg.finish called with no results")
        parameters = self._sum.mean()
        self._sum = None
        return parameters, weighted_metrics(self._metrics)
