"""Aggregation math as pure numpy functions: no sockets, no TensorFlow, tested on their own.

Updates are folded one at a time (:class:`WeightedSum`), so the server never holds more than one
accumulator plus the update being folded, whatever the number of clients.

An *update* is one client's list of arrays (one per model tensor). Functions that need every
update at once (median, trimmed mean, Krum) take ``updates[client][tensor]`` and work one tensor
at a time, so their float64 scratch is O(largest tensor x clients), not O(model x clients).

Functions here never modify their inputs. The robust and server-optimizer functions return
float64 arrays; strategies cast the final result back to the model's dtypes with
:func:`cast_to`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .async_rules import fedasync_mix, fedbuff_accumulate, fedbuff_step
from .chunks import CHUNK_ELEMENTS, windows
from .robust_aggregate import (krum_scores, krum_select, median, pairwise_sq_distances,
                               trimmed_mean)
from .server_optimizers import (fedadagrad_update, fedadam_update, fedavgm_update,
                                fedyogi_update)
from .weighted_sum import RecycledBlocks, Update, WeightedSum, cast_to

# Re-exported: strategies and tests import the math from here (the streaming sum, the robust
# functions, the server optimizers and the async update rules live in modules of their own).
__all__ = ["CHUNK_ELEMENTS", "RecycledBlocks", "Update", "WeightedSum", "cast_to", "clip_delta",
           "common_metrics", "fedadagrad_update", "fedadam_update", "fedasync_mix",
           "fedavgm_update", "fedbuff_accumulate", "fedbuff_step",
           "fedyogi_update", "krum_scores", "krum_select", "median", "pairwise_sq_distances",
           "trimmed_mean", "update_norm", "weighted_average", "weighted_loss", "weighted_metrics"]


def update_norm(update: Update, reference: Update) -> float:
    """The L2 norm of ``update - reference`` over the floating-point tensors (integer and bool
    tensors are counts, not directions, and are left out), accumulated in float64.

    One pass over both, chunk by chunk with one chunk of scratch: no model-sized temporary.
    Each chunk's sum of squares is one BLAS dot product in the tensor's dtype; a chunk whose
    float32 dot overflows (values near 1e18, far beyond trained weights) is summed again in
    float64, so the norm is right for every finite input."""
    if len(update) != len(reference):
        raise ValueError(f"update has {len(update)} arrays; the reference has {len(reference)}")
    total = 0.0
    for index, (array, base) in enumerate(zip(update, reference)):
        values, base = np.asarray(array), np.asarray(base)
        if values.dtype.kind != "f":
            continue
        if values.shape != base.shape:
            raise ValueError(f"array {index} has shape {values.shape}; the reference has "
                             f"{base.shape}")
        flat, flat_base = values.reshape(-1), base.reshape(-1)
        scratch = np.empty(min(CHUNK_ELEMENTS, flat.size),
                           dtype=np.float64 if values.dtype == np.float64 else np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow picks the slow path
            for window in windows(flat.size):
                part = scratch[: window.stop - window.start]
                np.subtract(flat[window], flat_base[window], out=part, dtype=part.dtype)
                square = float(np.dot(part, part))
                if not math.isfinite(square):
                    exact = flat[window].astype(np.float64) - flat_base[window]
                    square = float(np.dot(exact, exact))
                total += square
    return math.sqrt(total)


def clip_delta(array: np.ndarray, reference: np.ndarray, scale: float) -> None:
    """In place, chunk by chunk: ``array = reference + scale * (array - reference)`` (for a
    float array the caller owns, e.g. a robust strategy's copy of an update)."""
    flat, flat_base = array.reshape(-1), np.asarray(reference).reshape(-1)
    scale = array.dtype.type(scale)
    for window in windows(flat.size):
        part = flat[window]
        np.subtract(part, flat_base[window], out=part)
        np.multiply(part, scale, out=part)
        np.add(part, flat_base[window], out=part)


def common_metrics(results: list[tuple[int, dict]], limit: int) -> list[tuple[int, dict]]:
    """``results`` with at most ``limit`` distinct metric names in all: those reported by the
    most clients (then by the most examples, then by name). Clients may each report a few
    names of their own; the union over a round stays bounded, and names that every honest
    client reports win over one client's inventions."""
    names: dict[str, list] = {}
    for num_examples, metrics in results:
        for name in metrics:
            entry = names.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += num_examples
    if len(names) <= limit:
        return results
    kept = set(sorted(names, key=lambda n: (-names[n][0], -names[n][1], n))[:limit])
    return [(n, {k: v for k, v in metrics.items() if k in kept}) for n, metrics in results]


def weighted_average(updates: Iterable[Update], weights: Iterable[float]) -> list[np.ndarray]:
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
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                    value, (bool, np.bool_)):
                sums[name] = sums.get(name, 0.0) + num_examples * float(value)
                weights[name] = weights.get(name, 0.0) + num_examples
    return {name: sums[name] / weights[name] for name in sums if weights[name] > 0}


def weighted_loss(results: Iterable[tuple[int, float]]) -> float | None:
    """Examples-weighted mean loss; results with no examples (or no loss) do not count."""
    total = weight = 0.0
    for num_examples, loss in results:
        if loss is None or num_examples <= 0:
            continue
        total += num_examples * float(loss)
        weight += num_examples
    return total / weight if weight > 0 else None
