"""The cryptographic primitives of SecAgg/SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020).

Everything here comes from the ``cryptography`` package; nothing is written by hand:

- key agreement: X25519, the shared secret stretched to a 32-byte key with HKDF-SHA256;
- masks: a 32-byte seed expanded by the ChaCha20 stream cipher (the keystream over zeros),
  never numpy's generators, which are not cryptographic;
- authenticated encryption of the Shamir shares routed through the server: ChaCha20-Poly1305.

Pure functions on bytes and arrays, no sockets: the protocol wires them in.
"""

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pyfed.errors import PyFedError

KEY_BYTES = 32
AEAD_NONCE_BYTES = 12
AEAD_TAG_BYTES = 16
# ChaCha20 in `cryptography` takes 16 bytes: a 4-byte little-endian block counter then a 12-byte
# nonce. Each purpose gets its own fixed nonce, so one seed never yields the same keystream for
# two purposes (a pairwise mask and, say, a future use of the same key).
MASK_NONCE = (0).to_bytes(4, "little") + b"pyfed-mask\x00\x00"
# The largest ring: masks are stored in uint64.
MAX_MODULUS_BITS = 64


class SecAggError(PyFedError):
    """A secure-aggregation step failed: a bad key, a bad share, a vector that can't be unmasked."""


class DecryptionError(SecAggError):
    """An AEAD ciphertext failed authentication: tampered, truncated, or sealed under another key."""


def generate_keypair() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key pair: the private key and the 32 raw bytes of the public key."""
    private = X25519PrivateKey.generate()
    return private, public_bytes(private)


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)


def private_bytes(private: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key: what a client Shamir-shares so that, if it drops, the
    survivors can rebuild its pairwise masks."""
    return private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise SecAggError(f"an X25519 private key is {KEY_BYTES} bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def shared_key(my_private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """The 32-byte key both ends of a pair derive: X25519, then HKDF-SHA256 with ``info``.

    ``info`` separates uses (say, b"mask" and b"share-encryption") so one exchange never
    gives the same key twice. Refuses a malformed or low-order peer key instead of returning
    a key an attacker could predict."""
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise SecAggError(f"a peer's X25519 public key must be {KEY_BYTES} bytes")
    try:
        secret = my_private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # an all-zero result: a low-order point
        raise SecAggError(f"unusable peer public key: {exc}") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def ring_dtype(modulus_bits: int) -> type:
    """The smallest unsigned numpy type holding the ring Z/2^k."""
    if not isinstance(modulus_bits, int) or not 1 <= modulus_bits <= MAX_MODULUS_BITS:
        raise SecAggError(f"modulus_bits must be an int in 1..{MAX_MODULUS_BITS}")
    return np.uint32 if modulus_bits <= 32 else np.uint64


def ring_mask(modulus_bits: int):
    """The bit mask 2^k - 1 in the ring's dtype (reduces mod 2^k with ``&``)."""
    dtype = ring_dtype(modulus_bits)
    return dtype((1 << modulus_bits) - 1)


def mask(seed: bytes, count: int, modulus_bits: int, nonce: bytes = MASK_NONCE) -> np.ndarray:
    """``count`` elements uniform on Z/2^k, expanded from a 32-byte ``seed`` with ChaCha20.

    The keystream is ChaCha20 over zeros; each element takes 4 or 8 bytes of it (little
    endian) and keeps its low k bits, which stay uniform since 2^k divides 2^32 or 2^64.
    Deterministic: both ends of a pair get the same mask from the same seed."""
    if not isinstance(seed, bytes) or len(seed) != KEY_BYTES:
        raise SecAggError(f"a mask seed is {KEY_BYTES} bytes")
    if not isinstance(count, int) or count < 0:
        raise SecAggError("the mask length must be a non-negative int")
    dtype = np.dtype(ring_dtype(modulus_bits))
    encryptor = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    stream = encryptor.update(bytes(count * dtype.itemsize))
    # A read-only view of the keystream, no copy, where the machine is little-endian and the
    # ring fills the dtype (k = 32 or 64): masking is then a pass over the model less.
    values = np.frombuffer(stream, dtype=dtype.newbyteorder("<"))
    if values.dtype != dtype:
        values = values.astype(dtype)
    if modulus_bits in (32, 64):
        return values
    return values & ring_mask(modulus_bits)


def add_mod(a: np.ndarray, b: np.ndarray, modulus_bits: int) -> np.ndarray:
    """(a + b) mod 2^k on ring arrays (unsigned overflow wraps mod 2^32 or 2^64 first)."""
    return (a + b) & ring_mask(modulus_bits)


def sub_mod(a: np.ndarray, b: np.ndarray, modulus_bits: int) -> np.ndarray:
    """(a - b) mod 2^k on ring arrays."""
    return (a - b) & ring_mask(modulus_bits)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 under ``key``: a fresh random 12-byte nonce, then ciphertext and tag.

    ``associated`` is authenticated, not encrypted: bind it to the sender, receiver and round
    so a share can't be replayed to another peer or round."""
    nonce = os.urandom(AEAD_NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """The plaintext :func:`seal` sealed; :class:`DecryptionError` if anything was altered."""
    if not isinstance(ciphertext, bytes) or len(ciphertext) < AEAD_NONCE_BYTES + AEAD_TAG_BYTES:
        raise DecryptionError("ciphertext too short to hold a nonce and a tag")
    nonce, body = ciphertext[:AEAD_NONCE_BYTES], ciphertext[AEAD_NONCE_BYTES:]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, associated)
    except InvalidTag:
        raise DecryptionError("ciphertext failed authentication (tampered or wrong key)") from None
