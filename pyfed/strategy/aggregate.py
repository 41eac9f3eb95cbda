"""Aggregation math as pure numpy functions: no sockets, no TensorFlow, tested on their own.

Sums are kept in float64 so that averaging many float32 updates does not lose precision, and
they are folded one update at a time (:class:`WeightedSum`), so the server never holds more than
one accumulator plus the update being folded, whatever the number of clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

# Elements per chunk when folding: 64 Ki float64 = 512 KiB, which stays in L2 cache and bounds
# the scratch memory to one chunk instead of one whole layer.
_CHUNK = 1 << 16


class WeightedSum:
    """Running ``sum(w_i * x_i)`` and ``sum(w_i)`` over lists of arrays, in float64."""

    def __init__(self, template: Sequence[np.ndarray]):
        self.dtypes = [np.asarray(a).dtype for a in template]
        self.shapes = [np.shape(a) for a in template]
        self.sums = [np.zeros(shape, dtype=np.float64) for shape in self.shapes]
        self.total_weight = 0.0
        self.count = 0
        self._scratch = np.empty(_CHUNK, dtype=np.float64)

    def add(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        if len(arrays) != len(self.sums):
            raise ValueError(f"expected {len(self.sums)} arrays; received {len(arrays)}")
        for index, (total, array) in enumerate(zip(self.sums, arrays)):
            if np.shape(array) != total.shape:
                raise ValueError(
                    f"array {index} has shape {np.shape(array)}; expected {total.shape}")
            _fold(total.reshape(-1), np.asarray(array).reshape(-1), float(weight), self._scratch)
        self.total_weight += float(weight)
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        """The weighted mean, cast back to each tensor's original dtype."""
        if self.total_weight <= 0:
            raise ValueError("cannot average: no weight was added")
        return [_cast_back(total / self.total_weight, dtype)
                for total, dtype in zip(self.sums, self.dtypes)]


def _fold(total: np.ndarray, values: np.ndarray, weight: float, scratch: np.ndarray) -> None:
    for start in range(0, total.size, _CHUNK):
        stop = min(start + _CHUNK, total.size)
        part = scratch[: stop - start]
        np.multiply(values[start:stop], weight, out=part)
        np.add(total[start:stop], part, out=total[start:stop])


def _cast_back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iub":
        return np.rint(values).astype(dtype)
    return values.astype(dtype)


def weighted_average(updates: Iterable[Sequence[np.ndarray]], weights: Iterable[float]) -> list[np.ndarray]:
    """FedAvg's ``sum(n_k * w_k) / sum(n_k)`` over whole updates (non-streaming convenience)."""
    accumulator = None
    for arrays, weight in zip(updates, weights):
        if accumulator is None:
            accumulator = WeightedSum(arrays)
        accumulator.add(arrays, weight)
    if accumulator is None:
        raise ValueError("cannot average zero updates")
    return accumulator.mean()


def weighted_metrics(results: Iterable[tuple[int, dict]]) -> dict[str, float]:
    """Mean of each numeric metric, weighted by the number of examples behind it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for num_examples, metrics in results:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                sums[name] = sums.get(name, 0.0) + num_examples * float(value)
                weights[name] = weights.get(name, 0.0) + num_examples
    return {name: sums[name] / weights[name] for name in sums if weights[name] > 0}
