"""Byzantine-robust aggregation: FedMedian, FedTrimmedAvg, Krum and MultiKrum.

These rules compare the updates with each other, so they cannot stream: ``add`` copies each
update (``needs_all_updates = True``) and the server's memory for a round becomes
O(model x clients) instead of O(model x pool). The arithmetic is float64, one tensor at a time
(see :mod:`pyfed.strategy.aggregate`); the updates are ordered by client name before
aggregating, so the result does not depend on the order they arrived in.
"""

from __future__ import annotations

import logging

import numpy as np

from . import _checks
from .aggregate import WeightedSum, clip_delta, krum_select, median, trimmed_mean
from .base import FitResult
from .fedavg import FedAvg

logger = logging.getLogger("pyfed")


class BufferedStrategy(FedAvg):
    """FedAvg's sampling, configs and metrics, with every update of a round kept until
    :meth:`finish`. Subclasses implement ``_robust(updates, num_examples) -> float64 list``."""

    needs_all_updates = True

    def _start(self) -> None:
        self._updates: list[tuple[str, tuple[np.ndarray, ...], int]] = []

    def _accumulate(self, result: FitResult) -> None:
        # A copy: result.weights sits in a pooled receive buffer reused once add() returns.
        weights = tuple(np.array(w, copy=True) for w in result.weights)
        scale = self._clip_scale(result)
        if scale != 1.0:  # max_update_norm's clip, in the copy itself
            for copy, base in zip(weights, self._current):
                if copy.dtype.kind == "f":
                    clip_delta(copy, base, scale)
        self._updates.append((result.client, weights, result.num_examples))

    def _combine(self) -> list[np.ndarray]:
        ordered = sorted(self._updates, key=lambda item: item[0])
        self._updates = []
        return self._robust([u for _, u, _ in ordered], [n for _, _, n in ordered],
                            [c for c, _, _ in ordered])

    def _robust(self, updates, num_examples, clients) -> list[np.ndarray]:
        raise NotImplementedError


class FedMedian(BufferedStrategy):
    """Coordinate-wise median of the updates, unweighted (Yin et al., 2018; as Flower).

    Memory: every update of the round is copied, O(model x clients).
    """

    def _robust(self, updates, num_examples, clients):
        return median(updates)


class FedTrimmedAvg(BufferedStrategy):
    """Coordinate-wise trimmed mean: ``int(beta * n)`` values are cut from EACH end, the rest
    averaged without weights (Yin et al., 2018; as Flower). ``beta`` in [0, 0.5).

    Memory: every update of the round is copied, O(model x clients).
    """

    def __init__(self, *, beta: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta = _checks.real("beta", beta, low=0.0, high=0.5)

    def _robust(self, updates, num_examples, clients):
        return trimmed_mean(updates, self.beta)


class Krum(BufferedStrategy):
    """Krum (Blanchard et al., 2017): keep the update closest to its ``n - f - 2`` nearest
    neighbours (squared L2 over all tensors), where ``f = num_malicious``.

    ``num_to_keep = 0`` returns that one update as the new model; ``num_to_keep = m > 0`` keeps
    the ``m`` best and averages them weighted by ``num_examples`` (MultiKrum, as Flower).
    Krum's guarantee needs ``n > 2f + 2`` answers; with fewer it still runs but logs a warning.

    Memory: every update of the round is copied, O(model x clients), plus an n x n matrix.
    """

    def __init__(self, *, num_malicious: int = 0, num_to_keep: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_malicious = _checks.integer("num_malicious", num_malicious, 0)
        self.num_to_keep = _checks.integer("num_to_keep", num_to_keep, 0)

    def _robust(self, updates, num_examples, clients):
        n = len(updates)
        if n <= 2 * self.num_malicious + 2:
            logger.warning("Krum: %d updates with num_malicious=%d; the rule needs more than "
                           "2 * num_malicious + 2 to be robust", n, self.num_malicious)
        if self.num_to_keep > n:
            logger.warning("Krum: num_to_keep=%d but only %d updates; keeping all",
                           self.num_to_keep, n)
        kept = krum_select(updates, self.num_malicious, self.num_to_keep)
        logger.debug("Krum kept %s", ", ".join(clients[i] for i in kept))
        if self.num_to_keep == 0:
            return [np.asarray(a, dtype=np.float64) for a in updates[kept[0]]]
        total = WeightedSum(updates[kept[0]])
        for i in kept:
            total.add(updates[i], num_examples[i])
        return total.mean(cast=False)


class MultiKrum(Krum):
    """Krum keeping the ``num_to_keep`` (>= 1) best updates and averaging them by
    ``num_examples``. Memory: O(model x clients), as :class:`Krum`."""

    def __init__(self, *, num_to_keep: int, num_malicious: int = 0, **kwargs) -> None:
        super().__init__(num_malicious=num_malicious,
                         num_to_keep=_checks.integer("num_to_keep", num_to_keep, 1), **kwargs)
