"""How much a stale update counts: FedAsync's staleness functions (Xie et al., 2019, sec. 5.2),
also FedBuff's down-weighting (Nguyen et al., 2022, whose ``1 / sqrt(1 + staleness)`` is the
polynomial with exponent 0.5). Pure functions; no numpy needed.

``staleness`` is the current global version minus the version the client trained from: 0 for an
update computed on the newest model.
"""

from __future__ import annotations

import math
import operator

from ..errors import ConfigurationError
from . import _checks

#: The staleness functions ``s``: constant ``1``; polynomial ``(s + 1) ** -a``; hinge ``1`` while
#: ``s <= b``, then ``1 / (a * (s - b) + 1)``.
STALENESS_KINDS = ("constant", "polynomial", "hinge")


def staleness_weight(staleness: int, kind: str = "polynomial", exponent: float = 0.5,
                     hinge_a: float = 10, hinge_b: float = 4) -> float:
    """``s(staleness)``, in (0, 1]: the factor a stale update's influence is multiplied by.

    ``exponent`` is the polynomial's ``a``; ``hinge_a`` and ``hinge_b`` the hinge's ``a`` and
    ``b`` (the paper's defaults, 10 and 4). Raises ValueError for a negative staleness (an
    update from a version after the current one has no weight to give) and
    :class:`~pyfed.errors.ConfigurationError` for an unknown ``kind``.
    """
    try:
        if isinstance(staleness, bool):
            raise TypeError
        staleness = operator.index(staleness)
    except TypeError:
        raise ValueError(f"staleness must be an integer >= 0; received {staleness!r}") from None
    if staleness < 0:
        raise ValueError(f"staleness must be an integer >= 0; received {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((staleness + 1.0) ** -float(exponent))
    if kind == "hinge":
        if staleness <= hinge_b:
            return 1.0
        return 1.0 / (float(hinge_a) * (staleness - float(hinge_b)) + 1.0)
    raise ConfigurationError(_kind_message(kind))


def check_staleness_options(kind: str = "polynomial", exponent: float = 0.5,
                            hinge_a: float = 10, hinge_b: float = 4,
                            max_staleness: int | None = None, *, mixing: float | None = None,
                            buffer_size: int | None = None,
                            server_learning_rate: float | None = None) -> None:
    """Raise :class:`~pyfed.errors.ConfigurationError` naming the option, the value received
    and what is expected, for the first bad one. ``mixing``, ``buffer_size`` and
    ``server_learning_rate`` are checked when given (FedAsync has the first, FedBuff the
    others). Messages use the strategies' option names (``staleness``, ``staleness_exponent``)."""
    if not isinstance(kind, str) or kind not in STALENESS_KINDS:
        raise ConfigurationError(_kind_message(kind))
    _checks.real("staleness_exponent", exponent, low=0.0, high=math.inf)
    _checks.real("hinge_a", hinge_a, low=0.0, high=math.inf)
    _checks.real("hinge_b", hinge_b, low=0.0, high=math.inf)
    if max_staleness is not None:
        try:
            _checks.integer("max_staleness", max_staleness, 0)
        except ConfigurationError:
            raise ConfigurationError("max_staleness must be None or an integer >= 0; "
                                     f"received {max_staleness!r}") from None
    if mixing is not None:
        _checks.real("mixing", mixing, low=0.0, low_open=True, high=1.0, high_open=False)
    if buffer_size is not None:
        _checks.integer("buffer_size", buffer_size, 1)
    if server_learning_rate is not None:
        _checks.real("server_learning_rate", server_learning_rate, low=0.0, low_open=True,
                     high=math.inf)


def _kind_message(kind) -> str:
    names = ", ".join(repr(k) for k in STALENESS_KINDS[:-1]) + f" or {STALENESS_KINDS[-1]!r}"
    return f"staleness must be {names}; received {kind!r}"
