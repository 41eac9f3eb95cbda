"""The values inside arrays from the network: finite, and within a bound.

One scan serves both sides: the server checks every update's values (``rounds``), and a client
checks the weights a server sends it (``client_checks``). Pure numpy; no sockets.
"""

from __future__ import annotations

import numpy as np

# Largest magnitude accepted in a floating-point update. Far beyond any trained weight, and low
# enough that summing a million updates of it (weighted, see strategy.aggregate) stays finite in
# float32; a value beyond it is a corrupt or hostile update, refused like NaN.
MAX_ABS_VALUE = 1e18

# Elements checked per step (4 MiB of float32): few enough steps that Python's per-call cost
# is small, and no model-sized temporary is made on the slow path (a connection thread's
# temporaries stay in glibc's per-thread arenas, which made the server's RSS grow with the
# number of clients). A chunk's sum of squares can only overflow (to the exact slow path) when
# its values reach about 1e16, far beyond trained weights.
CHECK_CHUNK = 1 << 20


def first_bad_value(array: np.ndarray, bound: float = MAX_ABS_VALUE):
    """The first value that is NaN, +-Inf or beyond ``bound`` (``math.inf``: finiteness only),
    or None.

    Fast path: one BLAS dot product per chunk, in the array's own dtype. ``sum(x*x) <= bound**2``
    (and finite) implies every ``|x| <= bound``, and NaN or Inf anywhere makes the sum NaN or
    Inf, which fails the test; only a failing chunk is looked at value by value (so the two
    paths agree). A float64 sum instead cost a client about 5 ms a round on the README model."""
    flat = array.reshape(-1)
    limit = bound * bound
    with np.errstate(over="ignore", invalid="ignore"):  # overflow here is the signal, not a bug
        for start in range(0, flat.size, CHECK_CHUNK):
            part = flat[start:start + CHECK_CHUNK]
            square = np.dot(part, part)
            if square <= limit and square != np.inf:
                continue
            bad = part[~(np.isfinite(part) & (np.abs(part) <= bound))]
            if bad.size:
                return bad[0]
    return None
