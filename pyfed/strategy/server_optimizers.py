"""Server-side optimizers applied to the averaged update: FedAvgM, FedAdam, FedYogi and
FedAdagrad, as Flower computes them, in float64."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _f64(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def fedavgm_update(current: Sequence[np.ndarray], average: Sequence[np.ndarray],
                   momentum: Sequence[np.ndarray] | None, *, server_learning_rate: float,
                   server_momentum: float) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """FedAvgM (Hsu et al., 2019), as Flower: SGD with heavy-ball momentum on the server.

    ``g = current - average`` (the pseudo-gradient), ``v = momentum * v + g`` (``v = g`` the
    first time), ``new = current - server_learning_rate * v``. Returns ``(new, v)``; ``v`` is
    None when ``server_momentum`` is 0.
    """
    current = _f64(current)
    gradient = [c - a for c, a in zip(current, _f64(average))]
    if server_momentum > 0:
        if momentum is None:
            momentum = gradient
        else:
            momentum = [server_momentum * v + g for v, g in zip(_f64(momentum), gradient)]
        step = momentum
    else:
        momentum, step = None, gradient
    return [c - server_learning_rate * s for c, s in zip(current, step)], momentum


def _fedopt(current, average, m, beta_1, second_moment, learning_rate, tau):
    current = _f64(current)
    delta = [a - c for a, c in zip(_f64(average), current)]
    m = [np.zeros_like(d) for d in delta] if m is None else _f64(m)
    m = [beta_1 * m_i + (1.0 - beta_1) * d for m_i, d in zip(m, delta)]
    v = second_moment(delta)
    new = [c + learning_rate * m_i / (np.sqrt(v_i) + tau) for c, m_i, v_i in zip(current, m, v)]
    return new, m, v


def _zeros_or(v, delta):
    return [np.zeros_like(d) for d in delta] if v is None else _f64(v)


def fedadam_update(current, average, m, v, *, server_round: int, eta: float, beta_1: float,
                   beta_2: float, tau: float):
    """FedAdam (Reddi et al., 2021) as in current Flower: WITH a bias-corrected step.

    ``delta = average - current``; ``m = b1*m + (1-b1)*delta``; ``v = b2*v + (1-b2)*delta**2``;
    ``new = current + eta_t * m / (sqrt(v) + tau)`` with the bias-corrected rate
    ``eta_t = eta * sqrt(1 - b2**(server_round + 1)) / (1 - b1**(server_round + 1))``.
    The exponent is ``server_round + 1`` (rounds start at 1), exactly as Flower's code (both
    ``flwr.server.strategy.FedAdam`` and ``flwr.serverapp.strategy.FedAdam``). Flower releases
    before PR flwrlabs/flower#4362 (late 2024) used plain ``eta``, with no bias correction.
    ``m``/``v`` None means zeros (the first round). Returns ``(new, m, v)``, all float64.
    """
    exponent = server_round + 1.0
    rate = eta * np.sqrt(1.0 - beta_2 ** exponent) / (1.0 - beta_1 ** exponent)

    def second(delta):
        return [beta_2 * v_i + (1.0 - beta_2) * d * d for v_i, d in zip(_zeros_or(v, delta), delta)]
    return _fedopt(current, average, m, beta_1, second, rate, tau)


def fedyogi_update(current, average, m, v, *, eta: float, beta_1: float, beta_2: float,
                   tau: float):
    """FedYogi, as Flower (no bias correction): ``v = v - (1-b2) * d**2 * sign(v - d**2)``;
    otherwise as :func:`fedadam_update` with the plain ``eta``."""
    def second(delta):
        return [v_i - (1.0 - beta_2) * d * d * np.sign(v_i - d * d)
                for v_i, d in zip(_zeros_or(v, delta), delta)]
    return _fedopt(current, average, m, beta_1, second, eta, tau)


def fedadagrad_update(current, average, m, v, *, eta: float, tau: float):
    """FedAdagrad, as Flower: ``beta_1 = 0`` (so ``m = delta``) and ``v = v + d**2``."""
    def second(delta):
        return [v_i + d * d for v_i, d in zip(_zeros_or(v, delta), delta)]
    return _fedopt(current, average, m, 0.0, second, eta, tau)
