"""Client-side clipping for ``DifferentialPrivacy(clipping="client")``, and for the clipped
deltas a secure-aggregation client sums.

Both clip the client's change to the global model it received, over its floating-point tensors
together, to L2 norm ``clip_norm`` (McMahan et al. 2018). Non-float tensors (step counters)
carry no update under DP: the server keeps its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import ConfigurationError
from .calibration import clip_delta, delta_norm, validate_dp_config


def clip_update(trained: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                clip_norm: float) -> tuple[list[np.ndarray], bool]:
    """``(reference + clipped delta, unclipped)``: weights to send as an ordinary update, in the
    model's dtypes, and whether the delta was within ``clip_norm`` already (the adaptive-clipping
    bit). ``reference`` is the global model as received, before training."""
    clipped, norm = clip_delta(trained, reference, clip_norm)
    return clipped, bool(norm <= clip_norm)


def clipped_delta(trained: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                  clip_norm: float) -> tuple[list[np.ndarray], bool]:
    """``(delta, unclipped)``: the clipped delta itself in float64, one array per tensor (zeros
    for the non-float tensors), for a client that sends the delta rather than the weights."""
    validate_dp_config(clipping_norm=clip_norm)
    if len(trained) != len(reference):
        raise ConfigurationError(f"update has {len(trained)} tensors, the reference has "
                                 f"{len(reference)}")
    norm = delta_norm(trained, reference)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    deltas = []
    for new, base in zip(trained, reference):
        new, base = np.asarray(new), np.asarray(base)
        if np.issubdtype(new.dtype, np.floating):
            # from float64 arithmetic, not from ``clipped`` (rounded to the model's dtype)
            deltas.append((new.astype(np.float64) - base.astype(np.float64)) * scale)
        else:
            deltas.append(np.zeros(new.shape, dtype=np.float64))
    return deltas, bool(norm <= clip_norm)
