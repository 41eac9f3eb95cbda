"""Argument checks shared by the strategies; errors name the offending value."""

from __future__ import annotations

import math
import operator

from ..errors import ConfigurationError


def fraction(name: str, value, *, allow_zero: bool = False) -> float:
    low = "[0" if allow_zero else "(0"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not (
            (0 <= number if allow_zero else 0 < number) and number <= 1):
        raise ConfigurationError(f"{name} must be in {low}, 1]; received {value!r}")
    return number


def integer(name: str, value, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ConfigurationError(
            f"{name} must be an integer >= {minimum}; received {value!r}") from None
    if number < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}; received {value!r}")
    return number


def real(name: str, value, *, low: float, high: float | None = None,
         low_open: bool = False, high_open: bool = True) -> float:
    """A float in the interval given; e.g. ``real("tau", x, low=0, low_open=True)`` is tau > 0."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        number = None
    ok = number is not None and not math.isnan(number)
    if ok:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if not ok:
        interval = ("(" if low_open else "[") + f"{low:g}, " + (
            "inf)" if high is None else f"{high:g}" + (")" if high_open else "]"))
        raise ConfigurationError(f"{name} must be in {interval}; received {value!r}")
    return number


def optional_callable(name: str, value):
    if value is not None and not callable(value):
        raise ConfigurationError(f"{name} must be callable or None; received {value!r}")
    return value
