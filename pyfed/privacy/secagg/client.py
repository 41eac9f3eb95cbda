"""One client's side of one SecAgg round (Bonawitz et al. 2017), pure: no sockets, no threads.

The round, as this object sees it:

1. :meth:`ClientSecAgg.keys` -- two fresh X25519 public keys (``c`` encrypts the shares routed
   through the server, ``s`` agrees the pairwise masks) and a commitment to the self-mask seed
   ``b``, so the server can later check the ``b`` it rebuilds from shares;
2. :meth:`ClientSecAgg.share` -- t-of-n Shamir shares of ``s_sk`` and ``b``, one sealed envelope
   per peer, and the pairwise mask seeds;
3. :meth:`ClientSecAgg.masked` -- the quantized vector plus PRG(b) plus the pairwise masks;
4. :meth:`ClientSecAgg.reveal` -- for each survivor its ``b`` share, for each dropped client its
   ``s_sk`` share, never both for one owner: with both the server could unmask that owner alone.

Each step runs once and in order; a second call is refused, since answering twice (say, to two
different survivor sets) is exactly how a curious server would learn an individual vector.
"""

import hashlib
import os

import numpy as np

from pyfed.privacy.secagg import shamir
from pyfed.privacy.secagg.quantize import quantize
from pyfed.privacy.secagg.crypto import (DecryptionError, SecAggError, generate_keypair, mask,
                                         private_bytes, ring_mask, shared_key)
from pyfed.privacy.secagg.shares import (PAIRWISE_MASK_INFO, SHARE_ENCRYPTION_INFO, check_index,
                                         check_indices, check_key, check_round, open_shares,
                                         quantize_range, seal_shares)


class ClientSecAgg:
    """One client's side of one secure round."""

    def __init__(self, server_round: int, index: int, participants: int, threshold: int,
                 modulus_bits: int, clipping_range: float):
        check_round(server_round, participants, threshold, modulus_bits, clipping_range)
        self.server_round = server_round
        self.index = check_index(index, participants)
        self.participants = participants
        self.threshold = threshold
        self.modulus_bits = modulus_bits
        self.clipping_range = clipping_range
        self._enc_private, self._enc_public = generate_keypair()
        self._mask_private, self._mask_public = generate_keypair()
        self._seed = os.urandom(32)
        # Filled by share(): the peers' keys, the pairwise seeds, our own seed share.
        self._peers: dict[int, tuple[bytes, bytes]] | None = None
        self._pair_seeds: dict[int, bytes] = {}
        self._own_seed_share: bytes | None = None  # we always survive in our own reveal
        self._masked_peers: set[int] | None = None
        self._revealed = False
        # Senders whose envelope to us was missing or failed authentication in reveal().
        self.bad_senders: list[int] = []

    def keys(self) -> tuple[bytes, bytes, bytes]:
        """(encryption public key, mask public key, sha256 of the self-mask seed)."""
        return self._enc_public, self._mask_public, hashlib.sha256(self._seed).digest()

    def share(self, peers: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Recipient index -> sealed envelope of our shares, for every other peer."""
        if self._peers is not None:
            raise SecAggError("shares were already made this round")
        peers = self._check_peers(peers)
        # Derive every key before sharing anything: a bad peer key fails the step with no state.
        enc_keys, pair_seeds = {}, {}
        for v, (enc_public, mask_public) in peers.items():
            if v != self.index:
                enc_keys[v] = shared_key(self._enc_private, enc_public, SHARE_ENCRYPTION_INFO)
                pair_seeds[v] = shared_key(self._mask_private, mask_public, PAIRWISE_MASK_INFO)
        # Share x = recipient index; shares for indices that never keyed are simply dropped.
        key_shares = dict(shamir.share(private_bytes(self._mask_private), self.threshold,
                                       self.participants))
        seed_shares = dict(shamir.share(self._seed, self.threshold, self.participants))
        envelopes = {v: seal_shares(key, self.server_round, self.index, v,
                                    key_shares[v], seed_shares[v])
                     for v, key in enc_keys.items()}
        self._peers, self._pair_seeds = peers, pair_seeds
        self._own_seed_share = seed_shares[self.index]
        return envelopes

    def _check_peers(self, peers) -> dict[int, tuple[bytes, bytes]]:
        if not isinstance(peers, dict):
            raise SecAggError("peers must map index -> (encryption key, mask key)")
        checked = {}
        for v, pair in peers.items():
            check_index(v, self.participants, "a peer index")
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise SecAggError(f"peer {v}: expected (encryption key, mask key)")
            checked[v] = (check_key(pair[0], f"peer {v}'s encryption key"),
                          check_key(pair[1], f"peer {v}'s mask key"))
        if checked.get(self.index) != (self._enc_public, self._mask_public):
            raise SecAggError(f"the peer list does not carry client {self.index}'s own keys")
        every_key = [key for pair in checked.values() for key in pair]
        if len(set(every_key)) != len(every_key):  # a server (or peer) replaying someone's key
            raise SecAggError("the peer list repeats a public key")
        if len(checked) < self.threshold:
            raise SecAggError(f"only {len(checked)} clients keyed, fewer than the "
                              f"threshold {self.threshold}")
        return checked

    def masked(self, vector: np.ndarray, peers: list[int]) -> np.ndarray:
        """The vector quantized into Z/2^k, plus PRG(b), plus +PRG(s_uv) toward each higher
        peer v and -PRG(s_uv) toward each lower one: uniform on the ring to anyone without
        the masks, while the pairwise masks cancel in the sum over ``peers``."""
        if self._peers is None:
            raise SecAggError("masked() before share()")
        if self._masked_peers is not None:
            raise SecAggError("a masked vector was already made this round")
        chosen = check_indices(peers, self.participants, "masking peers")
        if not chosen <= set(self._peers) or self.index not in chosen:
            raise SecAggError(f"masking peers {sorted(chosen)} must be among the keyed peers "
                              f"{sorted(self._peers)} and include client {self.index}")
        if len(chosen) < self.threshold:
            raise SecAggError(f"only {len(chosen)} peers shared, fewer than the threshold "
                              f"{self.threshold}")
        values = np.asarray(vector, dtype=np.float64)
        if values.ndim != 1:
            raise SecAggError(f"the vector must be 1-D, got shape {values.shape}")
        bits, length = self.modulus_bits, len(values)
        out = quantize(values, quantize_range(self.clipping_range), bits, self.participants)
        # In place: unsigned numpy arithmetic wraps mod 2^32 (2^64), a multiple of 2^k, so one
        # reduction mod 2^k at the end gives the same ring element as reducing at every step.
        out += mask(self._seed, length, bits)
        for v in sorted(chosen - {self.index}):
            pair_mask = mask(self._pair_seeds[v], length, bits)
            if v > self.index:
                out += pair_mask
            else:
                out -= pair_mask
        out &= ring_mask(bits)
        self._masked_peers = chosen
        return out

    def reveal(self, survivors: list[int], dropped: list[int],
               ciphertexts: dict[int, bytes]) -> dict[int, bytes]:
        """Owner index -> our share of its ``b`` (survivors) or of its ``s_sk`` (dropped).

        ``ciphertexts`` maps a sender to the envelope it sealed for us. One that is missing or
        fails authentication is skipped (its sender goes in :attr:`bad_senders`); the others'
        shares still help the server, which needs only t of each owner's shares."""
        if self._masked_peers is None:
            raise SecAggError("reveal() before masked()")
        if self._revealed:
            raise SecAggError("shares were already revealed this round")
        alive = check_indices(survivors, self.participants, "survivors")
        gone = check_indices(dropped, self.participants, "dropped")
        if alive & gone:
            raise SecAggError(f"clients {sorted(alive & gone)} are both survivors and dropped: "
                              "revealing both of an owner's shares would unmask it")
        if self.index not in alive:
            raise SecAggError(f"client {self.index} is asked to reveal but is not a survivor")
        if len(alive) < self.threshold:
            raise SecAggError(f"only {len(alive)} survivors, fewer than the threshold "
                              f"{self.threshold}")
        if alive | gone != self._masked_peers:
            raise SecAggError(f"survivors and dropped {sorted(alive | gone)} must be exactly "
                              f"the peers masked with {sorted(self._masked_peers)}")
        if not isinstance(ciphertexts, dict):
            raise SecAggError("ciphertexts must map sender index -> envelope")
        senders = {check_index(s, self.participants, "a sender") for s in ciphertexts}
        if not senders <= self._masked_peers - {self.index}:
            raise SecAggError(f"envelopes from clients {sorted(senders - self._masked_peers)} "
                              "that were not masked with, or from ourselves")
        self._revealed = True
        revealed = {self.index: self._own_seed_share}
        for owner in sorted(self._masked_peers - {self.index}):
            try:
                opened = self._open(owner, ciphertexts.get(owner))
            except (DecryptionError, SecAggError):
                self.bad_senders.append(owner)
                continue
            revealed[owner] = opened[1] if owner in alive else opened[0]
        return revealed

    def _open(self, owner: int, ciphertext) -> tuple[bytes, bytes]:
        if ciphertext is None:
            raise SecAggError(f"no envelope from client {owner}")
        key = shared_key(self._enc_private, self._peers[owner][0], SHARE_ENCRYPTION_INFO)
        return open_shares(key, self.server_round, owner, self.index, ciphertext)
