"""Robust aggregation: every update at once (median, trimmed mean, Krum), one tensor at a
time, so the float64 scratch is O(largest tensor x clients), not O(model x clients)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .weighted_sum import Update


def _stacked(updates: Sequence[Update]):
    """Yield, per tensor, the (clients, *shape) float64 stack of that tensor."""
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    count = len(updates[0])
    for index, update in enumerate(updates):
        if len(update) != count:
            raise ValueError(f"update {index} has {len(update)} arrays; expected {count}")
    for tensor in range(count):
        shapes = {np.shape(update[tensor]) for update in updates}
        if len(shapes) != 1:
            raise ValueError(f"tensor {tensor} has different shapes across updates: "
                             f"{sorted(shapes)}")
        yield np.stack([np.asarray(update[tensor], dtype=np.float64) for update in updates])


def median(updates: Sequence[Update]) -> list[np.ndarray]:
    """Coordinate-wise median (unweighted, as Flower's FedMedian; Yin et al., 2018)."""
    return [np.median(stack, axis=0) for stack in _stacked(updates)]


def trimmed_mean(updates: Sequence[Update], beta: float) -> list[np.ndarray]:
    """Coordinate-wise mean after cutting ``int(beta * n)`` values from EACH end (unweighted).

    ``beta`` must be in [0, 0.5), so at least one value per coordinate survives.
    """
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5); received {beta}")
    cut = int(beta * len(updates))
    result = []
    for stack in _stacked(updates):
        stack.sort(axis=0)  # the stack is our own float64 copy
        result.append(stack[cut: stack.shape[0] - cut].mean(axis=0))
    return result


def pairwise_sq_distances(updates: Sequence[Update]) -> np.ndarray:
    """``D[i, j] = ||u_i - u_j||^2`` over all tensors, in float64 (by differences, not via the
    Gram matrix, so nearly equal updates are not swamped by cancellation)."""
    n = len(updates)
    distances = np.zeros((n, n), dtype=np.float64)
    for stack in _stacked(updates):
        flat = stack.reshape(n, -1)
        for i in range(n - 1):
            diff = flat[i + 1:] - flat[i]
            distances[i, i + 1:] += np.einsum("ij,ij->i", diff, diff)
    return distances + distances.T


def krum_scores(updates: Sequence[Update], num_malicious: int) -> np.ndarray:
    """Krum score of each update: the sum of its squared distances to its ``n - f - 2``
    nearest other updates (Blanchard et al., 2017).

    As Flower, at least 1 neighbour counts when ``n - f - 2 < 1`` (and at most ``n - 1``).
    """
    n = len(updates)
    distances = pairwise_sq_distances(updates)
    neighbours = min(max(1, n - num_malicious - 2), n - 1)
    scores = np.zeros(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:neighbours].sum()
    return scores


def krum_select(updates: Sequence[Update], num_malicious: int, num_to_keep: int) -> list[int]:
    """Indices of the updates Krum keeps: the ``num_to_keep`` lowest scores (MultiKrum), or the
    single lowest when ``num_to_keep`` is 0 (Krum). Ties go to the lower index."""
    if num_to_keep < 0:
        raise ValueError(f"num_to_keep must be >= 0; received {num_to_keep}")
    scores = krum_scores(updates, num_malicious)
    keep = min(max(num_to_keep, 1), len(updates))
    return sorted(np.argsort(scores, kind="stable")[:keep].tolist())
