"""The arithmetic of user-level DP-FedAvg, pure numpy and socket-free.

- Clipping (McMahan et al. 2018): each client's delta from the global model is scaled to L2
  norm <= C, the norm taken over all its float tensors together.
- Noise: the fixed-denominator estimator adds N(0, (z*C/(q*N))^2) to the averaged delta, q*N
  being the expected number of sampled clients.
- Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
  Clipping", Algorithm 1 and Theorem 1): C follows the target quantile gamma of the update norms
  by the geometric step ``C <- C * exp(-lr * (b_noised - gamma))`` where ``b_noised`` is the
  noised fraction of unclipped updates, ``(sum_i (1[||d_i|| <= C] - 1/2) + N(0, sigma_b^2))
  / m + 1/2`` (each bit centred, so one client moves the sum by 1/2). The count is a second
  Gaussian query on the same clients, so the delta's noise multiplier is raised to
  ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``; the pair then costs exactly what one query of
  multiplier z would (Theorem 1), and the accountant keeps using z. The paper suggests
  ``sigma_b = m / 20``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pyfed.errors import ConfigurationError


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def validate_dp_config(noise_multiplier=None, clipping_norm=None, sampling_rate=None) -> None:
    """Refuse a configuration that makes no sense; arguments left as None are not checked."""
    if noise_multiplier is not None and (not _is_number(noise_multiplier)
                                         or not math.isfinite(noise_multiplier)
                                         or noise_multiplier < 0):
        raise ConfigurationError(f"noise_multiplier must be a finite number >= 0, "
                                 f"got {noise_multiplier!r}")
    if clipping_norm is not None and (not _is_number(clipping_norm)
                                      or not math.isfinite(clipping_norm) or clipping_norm <= 0):
        raise ConfigurationError(f"clipping_norm must be a finite number > 0, "
                                 f"got {clipping_norm!r}")
    if sampling_rate is not None and (not _is_number(sampling_rate)
                                      or not 0 < sampling_rate <= 1):
        raise ConfigurationError(f"the sampling rate q (fraction_fit) must be in (0, 1], "
                                 f"got {sampling_rate!r}")


def _is_float_tensor(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def clip_delta(update: Sequence[np.ndarray], reference: Sequence[np.ndarray],
               clipping_norm: float) -> tuple[list[np.ndarray], float]:
    """Clip ``update - reference`` to L2 norm <= ``clipping_norm``.

    Returns ``(clipped, norm)``: ``clipped`` are weights ``reference + scale * (update -
    reference)`` (the clipped update, ready to average like any other), and ``norm`` is the
    delta's norm before clipping. Non-float tensors (step counters) are not part of the norm and
    are passed through as the update has them.
    """
    validate_dp_config(clipping_norm=clipping_norm)
    if len(update) != len(reference):
        raise ConfigurationError(f"update has {len(update)} tensors, the reference has "
                                 f"{len(reference)}")
    update = [np.asarray(u) for u in update]
    reference = [np.asarray(r) for r in reference]
    deltas = []
    for index, (u, r) in enumerate(zip(update, reference)):
        if u.shape != r.shape:
            raise ConfigurationError(f"tensor {index}: update shape {u.shape} differs from "
                                     f"reference shape {r.shape}")
        # float64 for the norm so a float16/32 model with huge deltas does not overflow
        deltas.append(u.astype(np.float64) - r.astype(np.float64) if _is_float_tensor(u) else None)
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in deltas if d is not None))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    clipped = []
    for u, r, d in zip(update, reference, deltas):
        if d is None:
            clipped.append(u.copy())
        else:
            clipped.append((r.astype(np.float64) + d * scale).astype(u.dtype))
    return clipped, norm


def delta_norm(update: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """L2 norm of ``update - reference`` over the float tensors."""
    return math.sqrt(sum(float(np.sum((np.asarray(u, np.float64) - np.asarray(r, np.float64)) ** 2))
                         for u, r in zip(update, reference) if _is_float_tensor(np.asarray(u))))


def gaussian_noise_std(noise_multiplier: float, clipping_norm: float, sampling_rate: float,
                       num_clients: int) -> float:
    """Standard deviation ``z*C/(q*N)`` of the noise added to the averaged delta."""
    validate_dp_config(noise_multiplier, clipping_norm, sampling_rate)
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) \
            or num_clients < 1:
        raise ConfigurationError(f"the number of clients N must be an int >= 1, "
                                 f"got {num_clients!r}")
    return noise_multiplier * clipping_norm / (sampling_rate * num_clients)


def default_count_stddev(expected_clients: float) -> float:
    """The paper's suggestion for sigma_b: the expected number of clients per round over 20."""
    if not _is_number(expected_clients) or expected_clients <= 0:
        raise ConfigurationError(f"expected clients per round must be > 0, "
                                 f"got {expected_clients!r}")
    return expected_clients / 20.0


def adaptive_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (Andrew et al. 2021, Theorem 1).

    Needs ``2 sigma_b > z``: otherwise the count alone would spend the whole budget.
    ``z = 0`` (no privacy) gives 0.
    """
    validate_dp_config(noise_multiplier=noise_multiplier)
    if not _is_number(count_stddev) or count_stddev <= 0:
        raise ConfigurationError(f"the clipped-count noise sigma_b must be > 0, "
                                 f"got {count_stddev!r}")
    if noise_multiplier == 0:
        return 0.0
    if 2 * count_stddev <= noise_multiplier:
        raise ConfigurationError(
            f"adaptive clipping needs 2*sigma_b > noise_multiplier: sigma_b={count_stddev!r}, "
            f"noise_multiplier={noise_multiplier!r}; sample more clients per round or lower z")
    return (noise_multiplier ** -2 - (2 * count_stddev) ** -2) ** -0.5


def noised_clipped_fraction(norms: Sequence[float], clipping_norm: float, count_stddev: float,
                            expected_clients: float, rng: np.random.Generator) -> float:
    """The private estimate of the fraction of updates left unclipped (``norm <= C``), with
    the fixed denominator m = q*N (expected clients); see :func:`noised_unclipped_fraction`."""
    validate_dp_config(clipping_norm=clipping_norm)
    norms = np.asarray(norms, dtype=np.float64)
    unclipped = int(np.sum(norms <= clipping_norm))
    return noised_unclipped_fraction(unclipped, int(norms.size), count_stddev, expected_clients,
                                     rng)


def noised_unclipped_fraction(unclipped: float, count: int, count_stddev: float,
                              expected_clients: float, rng: np.random.Generator) -> float:
    """``(sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2`` for ``unclipped = sum_i b_i`` over
    ``count`` updates: the paper's estimate of the unclipped fraction.

    Each bit is centred (``b_i - 1/2``) before it is summed, so adding or removing one client
    moves the sum by 1/2: that sensitivity is what makes the count cost ``(2 sigma_b)^-2`` in
    :func:`adaptive_noise_multiplier` (summing the raw bits would have sensitivity 1 and spend
    four times as much). Its expectation is the unclipped fraction, since E[count] = m under
    Poisson sampling."""
    if not _is_number(count_stddev) or count_stddev < 0:
        raise ConfigurationError(f"sigma_b must be >= 0, got {count_stddev!r}")
    if not _is_number(expected_clients) or expected_clients <= 0:
        raise ConfigurationError(f"expected clients per round must be > 0, "
                                 f"got {expected_clients!r}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ConfigurationError(f"the number of updates must be an int >= 0, got {count!r}")
    if not _is_number(unclipped) or not 0 <= unclipped <= count:
        raise ConfigurationError(f"the unclipped count must be in [0, {count}], "
                                 f"got {unclipped!r}")
    noise = float(rng.normal(0.0, count_stddev)) if count_stddev > 0 else 0.0
    return (float(unclipped) - count / 2 + noise) / expected_clients + 0.5


def update_clipping_norm(clipping_norm: float, clipped_fraction: float, target_quantile: float,
                         learning_rate: float) -> float:
    """The geometric step ``C * exp(-lr * (b - gamma))``: C shrinks when more than the target
    quantile of updates fit under it, and grows when fewer do."""
    validate_dp_config(clipping_norm=clipping_norm)
    if not _is_number(target_quantile) or not 0 <= target_quantile <= 1:
        raise ConfigurationError(f"target_quantile must be in [0, 1], got {target_quantile!r}")
    if not _is_number(learning_rate) or learning_rate <= 0:
        raise ConfigurationError(f"clip_norm_lr must be > 0, got {learning_rate!r}")
    return float(clipping_norm * math.exp(-learning_rate * (clipped_fraction - target_quantile)))
