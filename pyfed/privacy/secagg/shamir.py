"""t-of-n Shamir secret sharing of a 32-byte secret over the prime field GF(2^521 - 1).

Written by hand (the issue allows it) rather than taken from pycryptodome: pycryptodome's
``Crypto.Protocol.SecretSharing`` shares only 16-byte secrets over GF(2^128), so a 32-byte
X25519 key or mask seed would need two sharings, and it would add a dependency for 60 lines.
The prime 2^521 - 1 (a Mersenne prime, the NIST P-521 field) is far above 2^256, so every
32-byte secret is a field element. Coefficients come from :func:`secrets.randbelow`, so any
t - 1 shares are independent of the secret (information-theoretic hiding).

Shares are ``(index, value)`` with index in 1..n and value the 66-byte big-endian field element.
"""

import secrets

from pyfed.privacy.secagg.crypto import SecAggError

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66


class ShareError(SecAggError, ValueError):
    """Shares that can't give back a secret: too few, duplicated, malformed or inconsistent."""


def share(secret: bytes, t: int, n: int) -> list[tuple[int, bytes]]:
    """Split ``secret`` into ``n`` shares, any ``t`` of which rebuild it (t - 1 reveal nothing)."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise ShareError(f"the secret must be exactly {SECRET_BYTES} bytes")
    if not (isinstance(t, int) and isinstance(n, int) and 1 <= t <= n):
        raise ShareError(f"need integers 1 <= t <= n, got t={t!r}, n={n!r}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(t - 1)]
    return [(x, _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big")) for x in range(1, n + 1)]


def reconstruct(shares, t: int) -> bytes:
    """The secret behind ``shares`` (Lagrange interpolation at 0), given at least ``t``.

    Interpolates from the first ``t`` shares; any further share must lie on the same
    polynomial, else :class:`ShareError` (a corrupted or forged share is detected when more
    than ``t`` arrive, instead of silently giving a wrong secret). With exactly ``t`` shares a
    forgery can't be detected here, except when it gives a value that isn't 32 bytes."""
    if not isinstance(t, int) or t < 1:
        raise ShareError(f"t must be a positive int, got {t!r}")
    points = [_parse(item) for item in shares]
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise ShareError(f"duplicate share indices: {sorted(xs)}")
    if len(points) < t:
        raise ShareError(f"need at least {t} shares to reconstruct, got {len(points)}")
    base, extra = points[:t], points[t:]
    for x, y in extra:
        if _interpolate(base, x) != y:
            raise ShareError(f"share {x} is inconsistent with the others")
    secret = _interpolate(base, 0)
    if secret >> (8 * SECRET_BYTES):
        raise ShareError("the shares do not encode a 32-byte secret (corrupted share?)")
    return secret.to_bytes(SECRET_BYTES, "big")


def _parse(item) -> tuple[int, int]:
    try:
        x, raw = item
    except (TypeError, ValueError):
        raise ShareError("a share is a pair (index, bytes)") from None
    if not isinstance(x, int) or isinstance(x, bool) or not 1 <= x < PRIME:
        raise ShareError(f"share index must be a positive int, got {x!r}")
    if not isinstance(raw, bytes) or len(raw) != SHARE_BYTES:
        raise ShareError(f"share value must be {SHARE_BYTES} bytes")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise ShareError("share value is not a field element")
    return x, y


def _evaluate(coefficients: list[int], x: int) -> int:
    """The polynomial at x mod PRIME (Horner; coefficients[0] is the constant term)."""
    result = 0
    for c in reversed(coefficients):
        result = (result * x + c) % PRIME
    return result


def _interpolate(points: list[tuple[int, int]], at: int) -> int:
    """The value at ``at`` of the unique polynomial of degree < len(points) through them."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total = (total + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total
