"""The crypto foundation of secure aggregation: masks cancel, masked vectors look uniform,
Shamir rebuilds from any t of n and refuses t - 1, AEAD detects tampering, and quantization
keeps a sum within its documented error. Pure functions: no sockets, no processes."""

import itertools
import os

import numpy as np
import pytest

from pyfed.errors import PyFedError
from pyfed.privacy.secagg import crypto as sc
from pyfed.privacy.secagg.quantize import dequantize_sum, error_bound, quantize
from pyfed.privacy.secagg.shamir import ShareError, reconstruct, share

CLIP, BITS, CLIENTS, LENGTH = 8.0, 32, 5, 4000


def _masked_vectors(plain: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Each client adds the pairwise masks: + toward higher ids, - toward lower ids."""
    keys = {cid: sc.generate_keypair() for cid in plain}
    masked = {}
    for cid, vector in plain.items():
        private, _ = keys[cid]
        out = vector.copy()
        for peer in plain:
            if peer == cid:
                continue
            seed = sc.shared_key(private, keys[peer][1], b"pyfed-secagg-mask")
            pair_mask = sc.mask(seed, len(vector), BITS)
            out = sc.add_mod(out, pair_mask, BITS) if peer > cid else sc.sub_mod(out, pair_mask, BITS)
        masked[cid] = out
    return masked


def _updates(rng) -> dict[int, np.ndarray]:
    return {cid: rng.normal(0.0, 2.0, LENGTH) for cid in range(1, CLIENTS + 1)}


def _ring_sum(vectors) -> np.ndarray:
    total = np.zeros(LENGTH, dtype=np.uint32)
    for v in vectors:
        total = sc.add_mod(total, v, BITS)
    return total


def test_shared_key_agrees_and_separates_uses():
    a, a_pub = sc.generate_keypair()
    b, b_pub = sc.generate_keypair()
    assert len(a_pub) == 32 and sc.shared_key(a, b_pub, b"x") == sc.shared_key(b, a_pub, b"x")
    assert sc.shared_key(a, b_pub, b"x") != sc.shared_key(a, b_pub, b"y")
    rebuilt = sc.private_from_bytes(sc.private_bytes(a))
    assert sc.shared_key(rebuilt, b_pub, b"x") == sc.shared_key(a, b_pub, b"x")
    with pytest.raises(sc.SecAggError):
        sc.shared_key(a, bytes(32), b"x")  # a low-order point
    with pytest.raises(sc.SecAggError):
        sc.shared_key(a, b_pub[:31], b"x")


def test_mask_is_deterministic_and_in_ring():
    seed = bytes(range(32))
    assert np.array_equal(sc.mask(seed, 100, 32), sc.mask(seed, 100, 32))
    assert not np.array_equal(sc.mask(seed, 100, 32), sc.mask(bytes(32), 100, 32))
    assert sc.mask(seed, 100, 12).max() < 2 ** 12
    assert sc.mask(seed, 10, 64).dtype == np.uint64
    with pytest.raises(sc.SecAggError):
        sc.mask(seed[:16], 10, 32)


def test_pairwise_masks_cancel_in_the_sum():
    plain = {cid: quantize(u, CLIP, BITS, CLIENTS) for cid, u in _updates(np.random.default_rng(1)).items()}
    masked = _masked_vectors(plain)
    for cid in plain:
        assert not np.array_equal(masked[cid], plain[cid])
    assert np.array_equal(_ring_sum(masked.values()), _ring_sum(plain.values()))


def _chi_square_top_bits(vector: np.ndarray, top_bits: int = 4) -> float:
    counts = np.bincount((vector >> np.uint32(BITS - top_bits)).astype(np.int64),
                         minlength=2 ** top_bits)
    expected = len(vector) / 2 ** top_bits
    return float(((counts - expected) ** 2 / expected).sum())


def test_masked_vector_looks_uniform_on_the_ring():
    plain = {cid: quantize(u, CLIP, BITS, CLIENTS) for cid, u in _updates(np.random.default_rng(2)).items()}
    masked = _masked_vectors(plain)
    # 15 degrees of freedom: the 0.999999 quantile is about 55, so 80 is generous.
    for cid in plain:
        assert _chi_square_top_bits(masked[cid]) < 80.0
    # The test has power: the unmasked quantized update is far from uniform on the ring.
    assert _chi_square_top_bits(plain[1]) > 1000.0


def test_shamir_any_t_of_n_reconstructs():
    secret = os.urandom(32)
    shares = share(secret, 3, 5)
    for subset in itertools.combinations(shares, 3):
        assert reconstruct(list(subset), 3) == secret
    assert reconstruct(shares, 3) == secret  # more than t, consistent
    assert reconstruct(share(secret, 1, 1), 1) == secret


def test_shamir_refuses_too_few_duplicate_or_forged_shares():
    secret = os.urandom(32)
    shares = share(secret, 3, 5)
    with pytest.raises(ShareError, match="at least 3"):
        reconstruct(shares[:2], 3)
    with pytest.raises(ShareError, match="duplicate"):
        reconstruct([shares[0], shares[0], shares[1]], 3)
    forged = shares[:4] + [(5, bytes(66))]
    with pytest.raises(ShareError, match="inconsistent"):
        reconstruct(forged, 3)
    with pytest.raises(ShareError):
        share(secret, 4, 3)
    with pytest.raises(ShareError):
        share(secret[:16], 2, 3)
    assert issubclass(ShareError, PyFedError)


def test_aead_round_trip_and_tampering_detected():
    key, associated = os.urandom(32), b"round 3: client 1 -> client 2"
    sealed = sc.seal(key, b"a share", associated)
    assert sc.open_(key, sealed, associated) == b"a share"
    assert sc.seal(key, b"a share", associated) != sealed  # a fresh nonce each time
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    for bad_key, bad_ct, bad_ad in [(key, bytes(flipped), associated),
                                    (key, sealed, b"round 4: client 1 -> client 2"),
                                    (os.urandom(32), sealed, associated),
                                    (key, sealed[:20], associated)]:
        with pytest.raises(sc.DecryptionError):
            sc.open_(bad_key, bad_ct, bad_ad)
    assert issubclass(sc.DecryptionError, PyFedError)


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_dequantized_sum_within_documented_error(bits):
    rng = np.random.default_rng(3)
    updates = [rng.uniform(-12.0, 12.0, LENGTH) for _ in range(CLIENTS)]
    total = quantize(updates[0], CLIP, bits, CLIENTS)
    for u in updates[1:]:
        total = sc.add_mod(total, quantize(u, CLIP, bits, CLIENTS), bits)
    recovered = dequantize_sum(total, CLIP, bits, CLIENTS)
    expected = sum(np.clip(u, -CLIP, CLIP) for u in updates)
    assert np.abs(recovered - expected).max() <= error_bound(CLIP, bits, CLIENTS)
    # The extremes do not wrap around: all clients at +c or -c decode to ±n·c.
    for sign in (1.0, -1.0):
        full = quantize(np.full(3, sign * 100.0), CLIP, bits, CLIENTS)
        ring = full
        for _ in range(CLIENTS - 1):
            ring = sc.add_mod(ring, full, bits)
        decoded = dequantize_sum(ring, CLIP, bits, CLIENTS)
        assert np.allclose(decoded, sign * CLIP * CLIENTS, atol=error_bound(CLIP, bits, CLIENTS))


def test_masked_sum_dequantizes_to_the_float_sum():
    updates = _updates(np.random.default_rng(4))
    plain = {cid: quantize(u, CLIP, BITS, CLIENTS) for cid, u in updates.items()}
    recovered = dequantize_sum(_ring_sum(_masked_vectors(plain).values()), CLIP, BITS, CLIENTS)
    expected = sum(np.clip(u, -CLIP, CLIP) for u in updates.values())
    assert np.abs(recovered - expected).max() <= error_bound(CLIP, BITS, CLIENTS)
