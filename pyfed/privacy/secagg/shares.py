"""What both sides of a secure round agree on: the key-derivation labels, the sealed envelope a
client's Shamir shares travel in through the server, the round parameters' checks, and the
verified reconstruction the server runs when it unmasks.

Kept apart from :mod:`.client` and :mod:`.server` so the two cannot drift: a label
or a byte layout that differed between them would only show up as a failed round.
"""

import itertools
import math
import secrets
import struct

from pyfed.privacy.secagg import shamir
from pyfed.privacy.secagg.quantize import scale
from pyfed.privacy.secagg.crypto import (AEAD_NONCE_BYTES, AEAD_TAG_BYTES, KEY_BYTES,
                                         SecAggError, open_, ring_dtype, seal)

# HKDF "info" labels: one X25519 exchange per purpose and per key pair, but a distinct label
# anyway, so a share-encryption key can never double as a mask seed.
SHARE_ENCRYPTION_INFO = b"pyfed secagg share encryption"
PAIRWISE_MASK_INFO = b"pyfed secagg pairwise mask"

SHARE_BYTES = shamir.SHARE_BYTES  # 66
# Plaintext: owner index, recipient index (u32 each, big endian), the owner's mask-key share,
# the owner's self-mask-seed share. The indices are inside as well as in the associated data,
# so a decrypted envelope says on its own whose shares these are.
_PLAINTEXT = struct.Struct(f">II{SHARE_BYTES}s{SHARE_BYTES}s")
CIPHERTEXT_BYTES = AEAD_NONCE_BYTES + _PLAINTEXT.size + AEAD_TAG_BYTES  # 168
_AD_PREFIX = b"pyfed secagg shares v1|"

# Verified reconstruction tries at most this many t-subsets of one owner's shares: enough to
# outvote a few lying revealers, bounded so liars cannot make the server spin.
MAX_SUBSETS = 512


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_round(server_round: int, participants: int, threshold: int, modulus_bits: int,
                clipping_range: float) -> None:
    """Refuse parameters no secure round can run with (both sides call it with the same ones)."""
    if not _is_int(server_round) or not 0 <= server_round < 2 ** 64:
        raise SecAggError(f"server_round must be an int in 0..2^64-1, got {server_round!r}")
    if not _is_int(participants) or participants < 2:
        raise SecAggError(f"a secure round needs at least 2 participants, got {participants!r}")
    if not _is_int(threshold) or not 2 <= threshold <= participants:
        raise SecAggError(f"threshold must be an int in 2..{participants}, got {threshold!r}")
    ring_dtype(modulus_bits)
    quantize_range(clipping_range)  # a number
    if not 0 < clipping_range < float("inf"):
        raise SecAggError(f"clipping_range must be a positive number, got {clipping_range!r}")
    try:  # also proves the ring can hold the sum of `participants` vectors without wrapping
        scale(quantize_range(clipping_range), modulus_bits, participants)
    except (TypeError, ValueError) as exc:
        raise SecAggError(str(exc)) from None


def quantize_range(clipping_range: float) -> float:
    """The range vectors are quantized with: never below 1, since the vector's first coordinate
    (the example-count ratio r <= 1) must survive it unclipped."""
    if isinstance(clipping_range, bool) or not isinstance(clipping_range, (int, float)):
        raise SecAggError(f"clipping_range must be a number, got {clipping_range!r}")
    return max(float(clipping_range), 1.0)


def check_index(index, participants: int, what: str = "index") -> int:
    if not _is_int(index) or not 1 <= index <= participants:
        raise SecAggError(f"{what} must be an int in 1..{participants}, got {index!r}")
    return index


def check_indices(indices, participants: int, what: str) -> set[int]:
    """A list of distinct client indices, as a set."""
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        raise SecAggError(f"{what} must be a list of client indices")
    listed = [check_index(i, participants, what) for i in indices]
    if len(set(listed)) != len(listed):
        raise SecAggError(f"{what} lists a client twice: {sorted(listed)}")
    return set(listed)


def check_key(value, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_BYTES:
        raise SecAggError(f"{what} must be {KEY_BYTES} bytes")
    return value


def _associated(server_round: int, owner: int, recipient: int) -> bytes:
    """Binds an envelope to its round, owner and recipient: the server can't replay it to
    another client, into another round, or pass one owner's shares off as another's."""
    return _AD_PREFIX + struct.pack(">QII", server_round, owner, recipient)


def seal_shares(key: bytes, server_round: int, owner: int, recipient: int,
                mask_key_share: bytes, seed_share: bytes) -> bytes:
    plaintext = _PLAINTEXT.pack(owner, recipient, mask_key_share, seed_share)
    return seal(key, plaintext, _associated(server_round, owner, recipient))


def open_shares(key: bytes, server_round: int, owner: int, recipient: int,
                ciphertext: bytes) -> tuple[bytes, bytes]:
    """(mask-key share, seed share) of ``owner`` addressed to ``recipient``.

    DecryptionError when tampered with, sealed under another key, or bound to another round,
    owner or recipient."""
    if not isinstance(ciphertext, bytes) or len(ciphertext) != CIPHERTEXT_BYTES:
        raise SecAggError(f"a share envelope is {CIPHERTEXT_BYTES} bytes")
    plaintext = open_(key, ciphertext, _associated(server_round, owner, recipient))
    inner_owner, inner_recipient, mask_key_share, seed_share = _PLAINTEXT.unpack(plaintext)
    if (inner_owner, inner_recipient) != (owner, recipient):  # only a buggy sender does this
        raise SecAggError(f"envelope from client {owner} names owner {inner_owner}, "
                          f"recipient {inner_recipient}")
    return mask_key_share, seed_share


def check_share(value, what: str) -> bytes:
    """A revealed share: 66 bytes holding a field element (refused here, not in the middle of
    unmasking)."""
    if (not isinstance(value, bytes) or len(value) != SHARE_BYTES
            or int.from_bytes(value, "big") >= shamir.PRIME):
        raise SecAggError(f"{what} must be {SHARE_BYTES} bytes holding a field element")
    return value


def recover_verified(points: list[tuple[int, bytes]], threshold: int, verify):
    """The secret behind ``points`` that ``verify`` accepts, and the x's of points that lie
    off the true polynomial (their revealers lied); ``(None, [])`` when no tried t-subset
    verifies.

    With exactly t points a forged one can only be detected by ``verify`` (a commitment or a
    public key), never corrected; with more, a subset of honest points rebuilds the secret.
    A verified secret is always right, but liars can forge shares whose errors cancel in one
    subset, so the polynomial through a verified subset is not necessarily the true one.
    Points are named only when that polynomial passes through more than (m + t - 2) / 2 of
    the m points: no other polynomial with the same secret can then pass through as many
    (two of them share at most t - 2 points besides 0), so colluding liars cannot get honest
    revealers named. Subsets are tried in the order most likely to succeed, at most
    :data:`MAX_SUBSETS` of them (see :func:`_candidate_subsets`)."""
    if len(points) < threshold:
        return None, []
    recovered, explained = None, []  # explained: the points of each verified polynomial seen
    for subset in _candidate_subsets(points, threshold):
        xs = {x for x, _ in subset}
        if any(xs <= known for known in explained):  # a polynomial already counted
            continue
        try:
            secret = shamir.reconstruct(list(subset), threshold)
        except shamir.ShareError:
            continue
        if not verify(secret):
            continue
        recovered, base = secret, list(subset[:threshold - 1])
        on = {x for x, y in points if x in xs or _on_polynomial(base, (x, y), threshold, secret)}
        if 2 * len(on) > len(points) + threshold - 2:
            return secret, sorted(x for x, _ in points if x not in on)
        explained.append(on)
    return recovered, []


def _on_polynomial(base, point, threshold: int, secret: bytes) -> bool:
    """Whether ``point`` lies on the verified polynomial: t - 1 of its points plus this one
    rebuild the same secret exactly when it does (two polynomials of degree < t agreeing on
    t points are one)."""
    try:
        return shamir.reconstruct(base + [point], threshold) == secret
    except shamir.ShareError:
        return False


def _candidate_subsets(points, threshold: int):
    """The first t points, then the first t of each leave-one-out, then every t-subset when
    there are at most MAX_SUBSETS of them, else random ones (unpredictable to the liars, and
    likely to hit an honest subset when most revealers are honest, wherever the liars sit)."""
    seen = set()
    leave_one_out = (points[:i] + points[i + 1:] for i in range(len(points)))
    if math.comb(len(points), threshold) <= MAX_SUBSETS:
        rest = itertools.combinations(points, threshold)
    else:
        chooser = secrets.SystemRandom()
        rest = (chooser.sample(points, threshold) for _ in range(8 * MAX_SUBSETS))
    for candidate in itertools.chain([points], leave_one_out, rest):
        subset = tuple(sorted(candidate[:threshold]))
        if len(subset) < threshold or frozenset(subset) in seen:
            continue
        seen.add(frozenset(subset))
        yield subset
        if len(seen) >= MAX_SUBSETS:
            return
