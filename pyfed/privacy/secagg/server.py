"""The server's side of one SecAgg round, pure: no sockets, no threads. It learns only the sum.

The server routes keys and sealed share envelopes it cannot open, folds each masked vector into
one running sum mod 2^k as it arrives (no client's vector is kept), and at the end rebuilds from
the survivors' shares the self-mask seed of every client in the sum and the mask key of every
client that dropped after sharing, then strips those masks.

The client sets shrink as the round goes: U1 keyed (:meth:`ServerSecAgg.peers`), U2 shared
(:meth:`ServerSecAgg.sharers`), U3 sent a masked vector (:meth:`ServerSecAgg.maskers`). Each
getter closes its set: a late message would otherwise give two clients two different views of
who is in the round. Every rebuilt secret is checked against what its owner committed to (the
hash of ``b``, the mask public key) before it is used: a revealer sending a wrong share makes
the round fail or is outvoted, it never yields a silently wrong sum.
"""

import hashlib

import numpy as np

from pyfed.privacy.secagg.quantize import dequantize_sum
from pyfed.privacy.secagg.crypto import (SecAggError, mask, private_from_bytes, public_bytes,
                                         ring_dtype, ring_mask, shared_key)
from pyfed.privacy.secagg.shares import (CIPHERTEXT_BYTES, PAIRWISE_MASK_INFO, check_index,
                                         check_key, check_round, check_share, quantize_range,
                                         recover_verified)


class ServerSecAgg:
    """The server's side of one secure round: it learns only the sum."""

    def __init__(self, server_round: int, participants: int, threshold: int, modulus_bits: int,
                 clipping_range: float, vector_length: int):
        check_round(server_round, participants, threshold, modulus_bits, clipping_range)
        if (isinstance(vector_length, bool) or not isinstance(vector_length, int)
                or vector_length < 1):
            raise SecAggError(f"vector_length must be a positive int, got {vector_length!r}")
        self.server_round = server_round
        self.participants = participants
        self.threshold = threshold
        self.modulus_bits = modulus_bits
        self.clipping_range = clipping_range
        self.vector_length = vector_length
        self._keys: dict[int, tuple[bytes, bytes, bytes]] = {}  # index -> (c_pk, s_pk, commitment)
        self._shares: dict[int, dict[int, bytes]] = {}  # sender -> recipient -> envelope
        self._masked: set[int] = set()
        self._sum = np.zeros(vector_length, dtype=ring_dtype(modulus_bits))
        self._reveals: dict[int, dict[int, bytes]] = {}  # revealer -> owner -> share
        self._u1 = self._u2 = self._u3 = None  # closed client sets, sorted lists
        self._result: np.ndarray | None = None
        # Revealers whose shares lay off an owner's verified polynomial: they lied (or broke).
        self.bad_revealers: list[int] = []

    # -- round 0: keys ------------------------------------------------------------------------
    def add_keys(self, index: int, enc_public: bytes, mask_public: bytes,
                 seed_commitment: bytes) -> None:
        if self._u1 is not None:
            raise SecAggError("keys arrived after the peer list was sent")
        check_index(index, self.participants, "a client index")
        if index in self._keys:
            raise SecAggError(f"client {index} already sent its keys")
        enc_public = check_key(enc_public, "the encryption key")
        mask_public = check_key(mask_public, "the mask key")
        seed_commitment = check_key(seed_commitment, "the seed commitment")
        taken = {key for enc, msk, _ in self._keys.values() for key in (enc, msk)}
        if enc_public == mask_public or {enc_public, mask_public} & taken:
            # A copied key would let its copier read shares meant for another client.
            raise SecAggError(f"client {index} sent a public key already in use")
        self._keys[index] = (enc_public, mask_public, seed_commitment)

    def peers(self) -> dict[int, tuple[bytes, bytes]]:
        """Index -> (encryption key, mask key) of every keyed client (U1): what each is sent.
        Closes key collection; SecAggError when fewer than t keyed."""
        if self._u1 is None:
            self._require(len(self._keys), "clients sent keys")
            self._u1 = sorted(self._keys)
        return {i: self._keys[i][:2] for i in self._u1}

    # -- round 1: share envelopes -------------------------------------------------------------
    def add_shares(self, sender: int, ciphertexts: dict[int, bytes]) -> None:
        if self._u1 is None:
            raise SecAggError("shares arrived before the peer list was sent")
        if self._u2 is not None:
            raise SecAggError("shares arrived after the sharing step closed")
        if check_index(sender, self.participants, "a sender") not in self._u1:
            raise SecAggError(f"client {sender!r} did not key this round")
        if sender in self._shares:
            raise SecAggError(f"client {sender} already sent its shares")
        if not isinstance(ciphertexts, dict):
            raise SecAggError("shares must map recipient index -> envelope")
        expected = set(self._u1) - {sender}
        if set(ciphertexts) != expected:
            raise SecAggError(f"client {sender} addressed shares to "
                              f"{sorted(ciphertexts, key=str)}, "
                              f"not to the other keyed clients {sorted(expected)}")
        for recipient, envelope in ciphertexts.items():
            if not isinstance(envelope, bytes) or len(envelope) != CIPHERTEXT_BYTES:
                raise SecAggError(f"client {sender}'s envelope for client {recipient} is not "
                                  f"{CIPHERTEXT_BYTES} bytes")
        self._shares[sender] = dict(ciphertexts)

    def sharers(self) -> list[int]:
        """U2, sorted: the clients whose shares arrived, hence whose masks can be removed.
        Closes share collection; SecAggError when fewer than t shared."""
        if self._u2 is None:
            if self._u1 is None:
                raise SecAggError("no peer list was sent this round")
            self._require(len(self._shares), "clients sent shares")
            self._u2 = sorted(self._shares)
        return list(self._u2)

    def ciphertexts_for(self, recipient: int) -> dict[int, bytes]:
        """Sender -> the envelope it sealed for ``recipient``, over the other senders in U2."""
        u2 = self.sharers()
        if check_index(recipient, self.participants, "a recipient") not in u2:
            raise SecAggError(f"client {recipient!r} is not among the sharers {u2}")
        return {sender: self._shares[sender][recipient] for sender in u2 if sender != recipient}

    # -- round 2: masked vectors --------------------------------------------------------------
    def add_masked(self, index: int, vector: np.ndarray) -> None:
        u2 = self.sharers()
        if self._u3 is not None:
            raise SecAggError("a masked vector arrived after masking closed")
        if check_index(index, self.participants, "a client index") not in u2:
            raise SecAggError(f"client {index!r} did not share this round")
        if index in self._masked:
            raise SecAggError(f"client {index} already sent its masked vector")
        dtype = self._sum.dtype
        if not isinstance(vector, np.ndarray) or vector.dtype != dtype:
            raise SecAggError(f"client {index}'s masked vector must be a {dtype} array")
        if vector.shape != (self.vector_length,):
            raise SecAggError(f"client {index}'s masked vector has shape {vector.shape}, "
                              f"not ({self.vector_length},)")
        if vector.max() > ring_mask(self.modulus_bits):
            raise SecAggError(f"client {index}'s masked vector has values >= 2^{self.modulus_bits}")
        # In place: unsigned overflow wraps mod 2^32 / 2^64, the mask reduces mod 2^k.
        np.add(self._sum, vector, out=self._sum)
        np.bitwise_and(self._sum, ring_mask(self.modulus_bits), out=self._sum)
        self._masked.add(index)

    def maskers(self) -> list[int]:
        """U3, sorted: the clients in the sum, asked to reveal. Closes masking; SecAggError when
        fewer than t sent a masked vector (too few survivors to unmask)."""
        if self._u3 is None:
            self.sharers()
            self._require(len(self._masked), "clients sent masked vectors")
            self._u3 = sorted(self._masked)
        return list(self._u3)

    # -- round 3: reveals and unmasking -------------------------------------------------------
    def add_reveal(self, index: int, shares: dict[int, bytes]) -> None:
        """A survivor's shares: of ``b`` for owners in U3, of ``s_sk`` for owners in U2 - U3.
        An owner may be missing (the revealer could not open that owner's envelope); an owner
        outside U2 or a malformed share refuses the whole reveal."""
        u3 = self.maskers()
        if check_index(index, self.participants, "a client index") not in u3:
            raise SecAggError(f"client {index!r} is not a survivor")
        if index in self._reveals:
            raise SecAggError(f"client {index} already revealed its shares")
        if not isinstance(shares, dict):
            raise SecAggError("a reveal must map owner index -> share")
        unknown = set(shares) - set(self._u2)
        if unknown:
            raise SecAggError(f"client {index} revealed shares of clients "
                              f"{sorted(unknown, key=str)} "
                              "outside the round")
        self._reveals[index] = {owner: check_share(value, f"client {index}'s share of {owner}")
                                for owner, value in shares.items()}

    def unmask(self) -> np.ndarray:
        """The float sum of the vectors of U3 (float64, ``vector_length``).

        SecAggError when fewer than t survivors revealed, or when an owner's secret cannot be
        rebuilt and verified: then the round fails rather than return a wrong sum."""
        if self._result is not None:
            return self._result.copy()
        u3 = self.maskers()
        if len(self._reveals) < self.threshold:
            raise SecAggError(f"only {len(self._reveals)} survivors revealed shares, fewer "
                              f"than t = {self.threshold}: the sum cannot be unmasked")
        total, bits, length = self._sum.copy(), self.modulus_bits, self.vector_length
        for owner in u3:
            seed = self._recover(owner, lambda s, c=self._keys[owner][2]:
                                 hashlib.sha256(s).digest() == c)
            total -= mask(seed, length, bits)
        for owner in sorted(set(self._u2) - set(u3)):
            key = private_from_bytes(self._recover(
                owner, lambda s, p=self._keys[owner][1]: public_bytes(private_from_bytes(s)) == p))
            for u in u3:
                # u added +PRG(s_uv) toward a higher v, -PRG(s_uv) toward a lower one.
                seed = shared_key(key, self._keys[u][1], PAIRWISE_MASK_INFO)
                pair_mask = mask(seed, length, bits)
                if owner > u:
                    total -= pair_mask
                else:
                    total += pair_mask
        np.bitwise_and(total, ring_mask(bits), out=total)
        self._result = dequantize_sum(total, quantize_range(self.clipping_range), bits,
                                      self.participants)
        return self._result.copy()

    def _recover(self, owner: int, verify) -> bytes:
        """Owner's secret from the revealed shares, verified; liars are noted, and their shares
        are tried last for later owners so one liar costs one search, not one per owner."""
        liars = set(self.bad_revealers)
        revealers = sorted(self._reveals, key=lambda r: (r in liars, r))
        points = [(r, self._reveals[r][owner]) for r in revealers if owner in self._reveals[r]]
        if len(points) < self.threshold:
            raise SecAggError(f"only {len(points)} shares of client {owner}'s secret were "
                              f"revealed, fewer than t = {self.threshold}")
        secret, off = recover_verified(points, self.threshold, verify)
        if secret is None:
            raise SecAggError(f"client {owner}'s secret could not be verified from the shares "
                              f"of clients {sorted(x for x, _ in points)}: a revealer lied "
                              "or a share was corrupted; the round fails")
        self.bad_revealers = sorted(liars | set(off))
        return secret

    def _require(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise SecAggError(f"only {count} {what}, fewer than the threshold "
                              f"t = {self.threshold}: too few clients to run the round")
