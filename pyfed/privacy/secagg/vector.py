"""What one client's vector in a secure round holds, and how the server reads the sum back.

A vector is ``[r, r * x..., extras...]`` (float64, flattened over the model's tensors):

- ``"weights"`` (FedAvg and the strategies built on it): x is the trained weights, each clipped
  to ``[-c, c]``, and r = min(n / max_weight, 1) with n the client's examples. The sum gives
  ``sum r_i w_i`` and ``sum r_i``, so the server computes the examples-weighted mean without
  seeing one n (Flower's SecAgg+ weighs the same way).
- ``"clipped_delta"`` (``DifferentialPrivacy(clipping="client")``): x is the client's change to
  the global model clipped to L2 norm C on the client, and r = 1 (user-level DP counts users);
  with ``clipped_bit`` one more coordinate is 1 when the change was within C (adaptive
  clipping's count, which stays inside the secure sum too).

The quantizer clips every coordinate to ``max(c, 1)``, so r (at most 1) always fits.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ProtocolError, RoundError
from ..dp.calibration import clip_delta

VECTORS = ("weights", "clipped_delta")


def quantizer_range(clipping_range: float) -> float:
    """The range the quantizer clips to: the weights' ``c``, and never below r's 1."""
    return max(float(clipping_range), 1.0)


def encode(trained: list, reference: list, num_examples: int, request: dict,
           clipping_range: float, max_weight: float) -> np.ndarray:
    """The client's vector (see the module docstring), before quantization and masking."""
    kind = request.get("vector")
    extras = []
    if kind == "weights":
        weight = min(max(float(num_examples), 0.0) / max_weight, 1.0)
        values = [np.clip(np.asarray(w, dtype=np.float64).ravel(), -clipping_range,
                          clipping_range) * weight for w in trained]
    elif kind == "clipped_delta":
        clip_norm = request.get("clip_norm")
        clipped, norm = clip_delta(trained, reference, clip_norm)
        weight = 1.0
        values = [np.asarray(c, dtype=np.float64).ravel() - np.asarray(r, dtype=np.float64).ravel()
                  for c, r in zip(clipped, reference)]
        if request.get("clipped_bit"):
            extras.append(1.0 if norm <= clip_norm else 0.0)
    else:
        raise ProtocolError(f"the server asked for a secure vector of kind {str(kind)[:40]!r}; "
                            f"this client knows {', '.join(VECTORS)}")
    return np.concatenate([[weight], *values, extras]).astype(np.float64)


def check_request(request, what: str) -> dict:
    """The FIT config's ``secagg`` entry from the network: a dict naming a known vector kind
    (with a positive finite ``clip_norm`` for clipped deltas) and the peers to mask with."""
    if not isinstance(request, dict):
        raise ProtocolError(f"{what}: config secagg must be an object")
    kind = request.get("vector")
    if kind not in VECTORS:
        raise ProtocolError(f"{what}: config secagg vector must be one of {list(VECTORS)}; "
                            f"received {str(kind)[:40]!r}")
    if kind == "clipped_delta":
        clip_norm = request.get("clip_norm")
        if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)) \
                or not math.isfinite(clip_norm) or clip_norm <= 0:
            raise ProtocolError(f"{what}: config secagg clip_norm must be a finite number > 0; "
                                f"received {clip_norm!r:.40}")
    peers = request.get("peers")
    if not isinstance(peers, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in peers):
        raise ProtocolError(f"{what}: config secagg peers must be a list of indices")
    return request


class VectorLayout:
    """The server's view: the vector's length for ``parameters`` and ``request``, and the sum
    split back into its weight, its model-shaped arrays and its extras."""

    def __init__(self, parameters: list, request: dict) -> None:
        self.shapes = [np.shape(p) for p in parameters]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.extras = ["unclipped"] if request.get("clipped_bit") else []
        self.request = request
        self.length = 1 + sum(self.sizes) + len(self.extras)

    def split(self, total: np.ndarray, count: int, clipping_range: float):
        """``(sum of r, [model-shaped sums], {extra: sum})`` from the unmasked sum of ``count``
        vectors, after checking it could be a sum of such vectors. A sum that could not (r out
        of (0, count], a coordinate beyond r·c) means a mask was not removed: a client sent a
        malformed vector or share that no check caught, and the round must not apply it."""
        total = np.asarray(total, dtype=np.float64)
        if total.shape != (self.length,):
            raise RoundError(f"the unmasked sum has {total.size} values; expected {self.length}")
        weight = float(total[0])
        slack = 1e-3 * count + 1e-6  # quantization error, far below what a stray mask leaves
        if not 0 < weight <= count + slack:
            raise RoundError(f"unmasking could not be verified: the weights sum to {weight:g}, "
                             f"outside (0, {count}] for {count} clients")
        bound = quantizer_range(clipping_range) * (weight if self.request.get("vector") ==
                                                   "weights" else count) + slack
        body = total[1:1 + sum(self.sizes)]
        if body.size and float(np.max(np.abs(body))) > bound:
            raise RoundError(f"unmasking could not be verified: a coordinate of the sum is "
                             f"{float(np.max(np.abs(body))):g}, beyond the {bound:g} that "
                             f"{count} clipped vectors can reach")
        arrays, start = [], 1
        for shape, size in zip(self.shapes, self.sizes):
            arrays.append(total[start:start + size].reshape(shape))
            start += size
        extras = {}
        for name in self.extras:
            extras[name] = float(total[start])
            if not -slack <= extras[name] <= count + slack:
                raise RoundError(f"unmasking could not be verified: {name} sums to "
                                 f"{extras[name]:g}, outside [0, {count}]")
            start += 1
        return weight, arrays, extras
