"""Floats into the ring Z/2^k and a sum of n of them back, for secure aggregation.

Encoding (deterministic rounding to nearest, so equal inputs always give equal outputs and
tests are reproducible): clip x to [-c, c], multiply by the scale

    s = ((2^(k-1) - 1) / n - 1) / c          (n = max_summands, the most vectors ever summed)

round to the nearest integer q (|q| <= c·s + 1/2) and store q mod 2^k (two's complement).
Summing n such values mod 2^k gives the true integer sum S mod 2^k with
|S| <= n(c·s + 1/2) < 2^(k-1), so the sum never wraps ambiguously: a ring value v >= 2^(k-1)
is read as v - 2^k. Division by s gives the float sum back.

Error bound (of the dequantized sum against the sum of the CLIPPED inputs), per coordinate:

    |dequantize_sum(sum of quantize(x_i)) - sum clip(x_i)| <= n_summed / (2 s)

since each rounding moves a value by at most 1/2 (n_summed <= max_summands vectors summed),
plus float64's own rounding in x·s and S/s, at most n_summed·c·2^-50: negligible for k <= 32,
dominant for k = 64, where s·c exceeds float64's 53-bit mantissa. :func:`error_bound` returns
the sum of both. Clipping itself is not an error of this module: the caller
chose c. Coordinates that are NaN are refused rather than silently encoded.
"""

import numpy as np

from pyfed.errors import ConfigurationError
from pyfed.privacy.secagg.crypto import SecAggError, ring_dtype, ring_mask


def scale(clipping_range: float, modulus_bits: int, max_summands: int) -> float:
    """The factor floats are multiplied by before rounding (see the module docstring)."""
    if not (isinstance(clipping_range, (int, float)) and clipping_range > 0
            and np.isfinite(clipping_range)):
        raise ConfigurationError(f"clipping_range must be a positive number, got {clipping_range!r}")
    if not isinstance(max_summands, int) or max_summands < 1:
        raise ConfigurationError(f"max_summands must be a positive int, got {max_summands!r}")
    ring_dtype(modulus_bits)  # validates modulus_bits
    per_summand = ((1 << (modulus_bits - 1)) - 1) / max_summands - 1
    if per_summand < 1:
        raise ConfigurationError(f"a ring of 2^{modulus_bits} is too small to sum "
                                 f"{max_summands} vectors: raise modulus_bits")
    return per_summand / clipping_range


def error_bound(clipping_range: float, modulus_bits: int, max_summands: int,
                summed: int | None = None) -> float:
    """The largest per-coordinate error of a dequantized sum of ``summed`` vectors."""
    summed = max_summands if summed is None else summed
    rounding = summed / (2 * scale(clipping_range, modulus_bits, max_summands))
    return rounding + summed * clipping_range * 2.0 ** -50


def quantize(values, clipping_range: float, modulus_bits: int, max_summands: int) -> np.ndarray:
    """``values`` clipped to [-c, c] and encoded in Z/2^k (uint32 for k <= 32, else uint64)."""
    s = scale(clipping_range, modulus_bits, max_summands)
    x = np.asarray(values, dtype=np.float64)
    if np.isnan(x).any():
        raise SecAggError("cannot quantize NaN")
    q = np.rint(np.clip(x, -clipping_range, clipping_range) * s).astype(np.int64)
    # Float rounding of c·s can overshoot by an ulp for large k; the exact integer cap keeps
    # n·|q| < 2^(k-1), so a sum never wraps.
    limit = ((1 << (modulus_bits - 1)) - 1) // max_summands
    q = np.clip(q, -limit, limit)
    # int64 -> uint64 is two's complement, i.e. already q mod 2^64; the mask reduces mod 2^k.
    dtype = ring_dtype(modulus_bits)
    return (q.astype(np.uint64) & np.uint64((1 << modulus_bits) - 1)).astype(dtype)


def dequantize_sum(ring_sum, clipping_range: float, modulus_bits: int,
                   max_summands: int) -> np.ndarray:
    """The float sum behind ``ring_sum``, the mod-2^k sum of at most ``max_summands`` vectors
    made by :func:`quantize` with the same parameters."""
    s = scale(clipping_range, modulus_bits, max_summands)
    v = np.asarray(ring_sum).astype(np.uint64)
    if np.any(v > np.uint64(ring_mask(modulus_bits))):
        raise SecAggError("ring value out of range")
    signed = v.astype(np.int64)  # for k = 64 this already is the two's-complement reading
    if modulus_bits < 64:
        signed = np.where(signed >= (1 << (modulus_bits - 1)), signed - (1 << modulus_bits), signed)
    return signed.astype(np.float64) / s
