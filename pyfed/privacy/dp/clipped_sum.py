"""One round's sum of clipped deltas for DP-FedAvg: one model-sized float64 accumulator, never a
copy of a client's update, fed either update by update or (under secure aggregation) with the
sum itself; and the noised fixed-denominator mean it turns into."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ...errors import ConfigurationError


class ClippedSum:
    """``sum_i clip(w_i - global, C)`` over the float tensors, with the count and the number of
    updates that were within C (the adaptive-clipping bits)."""

    def __init__(self, current: Sequence[np.ndarray]) -> None:
        self.current = [np.asarray(p) for p in current]
        self.is_float = [np.issubdtype(p.dtype, np.floating) for p in self.current]
        self.totals = [np.zeros(p.shape, np.float64) if f else None
                       for p, f in zip(self.current, self.is_float)]
        self.count = 0
        self.unclipped = 0

    def add(self, weights: Sequence[np.ndarray], norm: float, clip: float,
            unclipped_below: float) -> None:
        """Fold one update whose delta norm is ``norm``, scaled down to ``clip`` if beyond it;
        it counts as unclipped when ``norm <= unclipped_below``."""
        scale = min(1.0, clip / norm) if norm > 0 else 1.0
        for total, new, base in zip(self.totals, weights, self.current):
            if total is not None:
                delta = np.subtract(new, base, dtype=np.float64)
                if scale != 1.0:
                    delta *= scale
                total += delta
        self.count += 1
        self.unclipped += int(norm <= unclipped_below)

    def add_sum(self, summed: Sequence[np.ndarray], count: int, unclipped: float | None) -> None:
        """Fold a sum of ``count`` clipped deltas made elsewhere (secure aggregation), with the
        sum of their bits (a quantized sum: rounded to the count it is, within [0, count])."""
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ConfigurationError(f"count must be an int >= 0; received {count!r}")
        if len(summed) != len(self.totals):
            raise ConfigurationError(f"the secure sum has {len(summed)} tensors; the model "
                                     f"has {len(self.totals)}")
        arrays = [np.asarray(s, dtype=np.float64) for s in summed]
        for index, (total, values) in enumerate(zip(self.totals, arrays)):
            if total is not None and values.shape != total.shape:
                raise ConfigurationError(f"secure sum tensor {index} has shape {values.shape}; "
                                         f"the model has {total.shape}")
        for total, values in zip(self.totals, arrays):
            if total is not None:
                total += values
        self.count += int(count)
        if unclipped is not None:
            self.unclipped += min(max(round(float(unclipped)), 0), int(count))

    def norm(self) -> float:
        return math.sqrt(sum(float(np.sum(t * t)) for t in self.totals if t is not None))

    def noised_weights(self, expected: float, noise_std: float,
                       rng: np.random.Generator) -> list[np.ndarray]:
        """``global + sum / expected + N(0, noise_std^2)`` per float coordinate (float64); the
        other tensors as the global model has them."""
        new = []
        for base, total in zip(self.current, self.totals):
            if total is None:
                new.append(base)
                continue
            mean = total / expected
            if noise_std > 0:
                mean += rng.normal(0.0, noise_std, size=mean.shape)
            new.append(base.astype(np.float64) + mean)
        return new
