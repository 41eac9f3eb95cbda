"""What :class:`~pyfed.privacy.dp.strategy.DifferentialPrivacy` refuses to wrap, and its arguments'
checks. Every refusal is one ConfigurationError that says why and what to do instead."""

from __future__ import annotations

import math

from ...errors import ConfigurationError
from ...strategy import FedAvg

# Families whose aggregate is not a sum of the clipped updates: the Gaussian mechanism's
# sensitivity argument (one client moves the sum by at most C) does not cover them.
_ROBUST = ("FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "BufferedStrategy")


def _class_names(strategy) -> list[str]:
    return [cls.__name__ for cls in type(strategy).__mro__]


def check_wrappable(strategy) -> None:
    """Refuse anything but a synchronous, streaming FedAvg (or a subclass of it)."""
    names = _class_names(strategy)
    name = type(strategy).__name__
    if "SecureAggregation" in names:
        raise ConfigurationError(
            "DifferentialPrivacy cannot wrap SecureAggregation: put DifferentialPrivacy inside "
            "SecureAggregation: SecureAggregation(DifferentialPrivacy(..., clipping='client'))")
    if "DifferentialPrivacy" in names:
        raise ConfigurationError("DifferentialPrivacy is already applied to this strategy; "
                                 "wrap it once")
    robust = [n for n in _ROBUST if n in names]
    if robust or getattr(strategy, "needs_all_updates", False):
        raise ConfigurationError(
            f"DifferentialPrivacy cannot wrap {name}: it compares individual updates (median, "
            "trimmed mean or Krum), so one client can move its result by more than the clipping "
            "norm and the Gaussian noise does not cover it; wrap FedAvg or a FedAvg variant "
            "(FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad)")
    if getattr(strategy, "asynchronous", False):
        raise ConfigurationError(
            f"DifferentialPrivacy cannot wrap {name}: asynchronous strategies fold updates one "
            "at a time without Poisson-sampled rounds, which the accountant assumes; wrap a "
            "synchronous FedAvg variant")
    if not isinstance(strategy, FedAvg):
        raise ConfigurationError(
            f"DifferentialPrivacy wraps FedAvg and the strategies built on it; received "
            f"{name}")
    if strategy.max_update_norm is not None:
        raise ConfigurationError(
            f"DifferentialPrivacy clips every update itself (clipping_norm); leave the wrapped "
            f"{name}'s max_update_norm unset (it is {strategy.max_update_norm:g})")


def positive(name: str, value) -> float:
    number = _number(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{name} must be a finite number > 0; received {value!r}")
    return number


def within(name: str, value, low: float, high: float) -> float:
    number = _number(value)
    if number is None or not low <= number <= high:
        raise ConfigurationError(f"{name} must be in [{low:g}, {high:g}]; received {value!r}")
    return number


def clipping_mode(value) -> str:
    if value not in ("server", "client"):
        raise ConfigurationError(f"clipping must be 'server' or 'client'; received {value!r}")
    return value


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
