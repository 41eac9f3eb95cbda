"""The secure-aggregation protocol logic, both sides, in one process with real crypto: the
server's unmasked sum equals the plain sum within the quantization error, dropped clients are
recovered, too few survivors fail clearly, tampered envelopes and lying revealers are caught
(outvoted and named, or the round fails; never a silently wrong sum), and what the server gets
from one client is uniform on the ring. No sockets, no processes."""

import numpy as np
import pytest

from pyfed.errors import PyFedError
from pyfed.privacy.secagg.quantize import error_bound, quantize
from pyfed.privacy.secagg.protocol import (CIPHERTEXT_BYTES, SHARE_BYTES, ClientSecAgg,
                                           SecAggError, ServerSecAgg)

CLIP, LENGTH = 8.0, 2000
# The 1 - 1e-6 quantile of chi-square with 255 degrees of freedom (scipy.stats.chi2.ppf):
# an honest uniform vector fails the test below once in a million runs.
CHI2_255_CRITICAL = 377.08


class Round:
    """One round's clients and server, driven step by step so a test can interfere anywhere."""

    def __init__(self, n, t, bits=32, length=LENGTH, seed=0, server_round=3):
        rng = np.random.default_rng(seed)
        self.n, self.t, self.bits, self.length = n, t, bits, length
        self.x = {i: rng.uniform(-10.0, 10.0, length) for i in range(1, n + 1)}
        self.clients = {i: ClientSecAgg(server_round, i, n, t, bits, CLIP) for i in self.x}
        self.server = ServerSecAgg(server_round, n, t, bits, CLIP, length)

    def key_and_share(self, skip=()):
        for i, client in self.clients.items():
            self.server.add_keys(i, *client.keys())
        peers = self.server.peers()
        self.envelopes = {i: c.share(peers) for i, c in self.clients.items() if i not in skip}
        for i, envelopes in self.envelopes.items():
            self.server.add_shares(i, envelopes)
        return self.server.sharers()

    def mask(self, drop=()):
        u2 = self.server.sharers()
        self.vectors = {i: self.clients[i].masked(self.x[i], u2) for i in u2 if i not in drop}
        for i, vector in self.vectors.items():
            self.server.add_masked(i, vector)
        return self.server.maskers()

    def reveals(self):
        u3 = self.server.maskers()
        dropped = sorted(set(self.server.sharers()) - set(u3))
        return {i: self.clients[i].reveal(u3, dropped, self.server.ciphertexts_for(i)) for i in u3}

    def expected(self):
        return sum(np.clip(self.x[i], -CLIP, CLIP) for i in self.server.maskers())

    def check_sum(self, total):
        summed = len(self.server.maskers())
        bound = error_bound(CLIP, self.bits, self.n, summed)
        assert total.dtype == np.float64 and total.shape == (self.length,)
        assert np.abs(total - self.expected()).max() <= bound


def run(n, t, bits=32, drop=(), lie=None, length=LENGTH):
    """A whole round; ``drop`` leave after sharing; ``lie`` edits the reveals before sending."""
    r = Round(n, t, bits, length)
    r.key_and_share()
    r.mask(drop)
    reveals = r.reveals()
    if lie:
        lie(reveals)
    for i, shares in reveals.items():
        r.server.add_reveal(i, shares)
    return r, r.server.unmask()


@pytest.mark.parametrize("n, t", [(3, 2), (5, 3), (10, 6)])
def test_sum_equals_plain_sum_within_quantization_error(n, t):
    r, total = run(n, t)
    r.check_sum(total)
    assert r.server.bad_revealers == []


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_every_ring_size_works_with_a_dropout(bits):
    r, total = run(5, 3, bits, drop=(4,))
    assert r.vectors[1].dtype == (np.uint32 if bits <= 32 else np.uint64)
    r.check_sum(total)


@pytest.mark.parametrize("drop", [(2,), (1, 5)])
def test_clients_dropped_after_sharing_are_recovered(drop):
    r, total = run(6, 3, drop=drop)
    assert r.server.maskers() == [i for i in range(1, 7) if i not in drop]
    r.check_sum(total)


def test_a_client_that_never_shared_is_simply_left_out():
    r = Round(5, 3)
    assert r.key_and_share(skip=(3,)) == [1, 2, 4, 5]
    with pytest.raises(SecAggError, match="did not share"):
        r.server.add_masked(3, np.zeros(LENGTH, dtype=np.uint32))
    r.mask()
    with pytest.raises(SecAggError, match="before share"):
        r.clients[3].masked(r.x[3], [1, 2, 3, 4])
    for i, shares in r.reveals().items():
        r.server.add_reveal(i, shares)
    r.check_sum(r.server.unmask())


def test_too_few_survivors_fail_clearly():
    r = Round(5, 3)
    r.key_and_share()
    u2 = r.server.sharers()
    for i in (1, 2):
        r.server.add_masked(i, r.clients[i].masked(r.x[i], u2))
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        r.server.maskers()
    # A client refuses to reveal to fewer than t survivors, whatever the server claims.
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        r.clients[1].reveal([1, 2], [3, 4, 5], r.server.ciphertexts_for(1))


def test_too_few_reveals_fail_clearly():
    r = Round(5, 3)
    r.key_and_share()
    r.mask()
    reveals = r.reveals()
    for i in (1, 2):
        r.server.add_reveal(i, reveals[i])
    with pytest.raises(SecAggError, match="fewer than t"):
        r.server.unmask()


def test_too_few_clients_keyed_or_shared_fail_at_once():
    server = ServerSecAgg(1, 5, 3, 32, CLIP, 10)
    for i in (1, 2):
        server.add_keys(i, *ClientSecAgg(1, i, 5, 3, 32, CLIP).keys())
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        server.peers()
    r = Round(5, 3)
    for i, client in r.clients.items():
        r.server.add_keys(i, *client.keys())
    r.server.add_shares(1, r.clients[1].share(r.server.peers()))
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        r.server.sharers()


def test_tampered_envelope_is_skipped_and_the_round_still_sums():
    r = Round(5, 3)
    r.key_and_share()
    r.mask(drop=(5,))
    u3, dropped = r.server.maskers(), [5]
    reveals = {}
    for i in u3:
        ciphertexts = r.server.ciphertexts_for(i)
        if i == 2:  # the envelopes from 1 (a survivor) and 5 (dropped) to 2 are altered
            for sender in (1, 5):
                flipped = bytearray(ciphertexts[sender])
                flipped[-1] ^= 0x01
                ciphertexts[sender] = bytes(flipped)
        reveals[i] = r.clients[i].reveal(u3, dropped, ciphertexts)
    assert r.clients[2].bad_senders == [1, 5]
    assert 1 not in reveals[2] and 5 not in reveals[2] and set(reveals[1]) == {1, 2, 3, 4, 5}
    for i, shares in reveals.items():
        r.server.add_reveal(i, shares)
    r.check_sum(r.server.unmask())


def test_envelopes_swapped_between_senders_do_not_open():
    r = Round(4, 2)
    r.key_and_share()
    r.mask()
    ciphertexts = r.server.ciphertexts_for(1)
    ciphertexts[2], ciphertexts[3] = ciphertexts[3], ciphertexts[2]
    shares = r.clients[1].reveal([1, 2, 3, 4], [], ciphertexts)
    assert r.clients[1].bad_senders == [2, 3] and set(shares) == {1, 4}


def _forge(reveals, revealer, owner):
    """Replace one revealed share by another valid field element."""
    value = int.from_bytes(reveals[revealer][owner], "big")
    reveals[revealer][owner] = ((value + 12345) % ((1 << 521) - 1)).to_bytes(SHARE_BYTES, "big")


@pytest.mark.parametrize("owner", [1, 4])  # 1 survives (its b share), 4 dropped (its key share)
def test_lying_revealer_is_outvoted_and_named(owner):
    def lie(reveals):
        _forge(reveals, 2, owner)

    r, total = run(5, 3, drop=(4,), lie=lie)
    r.check_sum(total)
    assert r.server.bad_revealers == [2]


def test_two_lying_revealers_are_outvoted_and_named():
    def lie(reveals):
        for owner in reveals[1]:
            _forge(reveals, 1, owner)
        _forge(reveals, 6, 3)

    r, total = run(7, 3, lie=lie)
    r.check_sum(total)
    assert r.server.bad_revealers == [1, 6]


@pytest.mark.parametrize("n, t", [(10, 4), (20, 11)])  # every 4-of-9 subset tried; random ones
def test_several_revealers_lying_about_every_owner_are_outvoted(n, t):
    def lie(reveals):
        for liar in (1, 2, 3):
            for owner in reveals[liar]:
                _forge(reveals, liar, owner)

    r, total = run(n, t, drop=(n,), lie=lie, length=100)
    r.check_sum(total)
    assert r.server.bad_revealers == [1, 2, 3]


def test_liars_whose_errors_cancel_in_one_subset_cannot_get_honest_revealers_named():
    # Equal offsets at x = 1 and 2 cancel in the subset {1, 2, 4, 8, 9} (their Lagrange
    # weights at 0 are 24/7 and -24/7): that subset verifies, yet its polynomial is not the
    # shares' polynomial and runs through 3, 5, 6 and 7 nowhere.
    def lie(reveals):
        for liar in (1, 2):
            for owner in reveals[liar]:
                _forge(reveals, liar, owner)

    r, total = run(10, 5, drop=(10,), lie=lie, length=100)
    r.check_sum(total)
    assert r.server.bad_revealers == [1, 2]


def test_a_lie_with_exactly_t_shares_fails_the_round_never_a_wrong_sum():
    r = Round(5, 3)
    r.key_and_share()
    r.mask(drop=(4, 5))
    reveals = r.reveals()
    _forge(reveals, 3, 1)
    for i, shares in reveals.items():
        r.server.add_reveal(i, shares)
    with pytest.raises(SecAggError, match="client 1's secret could not be verified"):
        r.server.unmask()
    # A dropped client's mask key is checked against its public key the same way.
    r = Round(5, 3)
    r.key_and_share()
    r.mask(drop=(4, 5))
    reveals = r.reveals()
    _forge(reveals, 2, 5)
    for i, shares in reveals.items():
        r.server.add_reveal(i, shares)
    with pytest.raises(SecAggError, match="client 5's secret could not be verified"):
        r.server.unmask()


def _chi_square_top_byte(vector: np.ndarray, bits: int) -> float:
    top = (vector.astype(np.uint64) >> np.uint64(bits - 8)).astype(np.int64)
    counts = np.bincount(top, minlength=256)
    expected = len(vector) / 256
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_masked_vector_is_uniform_on_the_ring_and_not_the_input(bits):
    r = Round(3, 2, bits, length=65536)
    r.x = {i: np.full(r.length, 0.5 * i) for i in r.x}  # as far from uniform as inputs get
    r.key_and_share()
    r.mask()
    for i, vector in r.vectors.items():
        plain = quantize(r.x[i], CLIP, bits, r.n)
        assert np.count_nonzero(vector == plain) < 10  # about 65536 / 2^k expected by chance
        assert _chi_square_top_byte(vector, bits) < CHI2_255_CRITICAL
        assert _chi_square_top_byte(plain, bits) > 100 * CHI2_255_CRITICAL  # the test has power


def test_reveal_refuses_what_would_unmask_one_client():
    r = Round(5, 3)
    r.key_and_share()
    r.mask()
    client, ciphertexts = r.clients[1], r.server.ciphertexts_for(1)
    refusals = [(([1, 2, 3, 4], [4, 5]), "both survivors and dropped"),
                (([2, 3, 4], [1, 5]), "not a survivor"),
                (([1, 2, 3], [4]), "must be exactly"),
                (([1, 2, 3, 4, 5], [6]), "must be an int in 1..5"),
                (([1, 2, 2, 3], [4, 5]), "twice")]
    for (survivors, dropped), reason in refusals:
        with pytest.raises(SecAggError, match=reason):
            client.reveal(survivors, dropped, ciphertexts)
    client.reveal([1, 2, 3, 4, 5], [], ciphertexts)
    with pytest.raises(SecAggError, match="already revealed"):
        client.reveal([1, 2, 3], [4, 5], ciphertexts)  # the key shares of 4 and 5: never


def test_malformed_masked_vectors_are_refused_and_do_not_touch_the_sum():
    r = Round(4, 2, bits=16, length=50)
    r.key_and_share()
    good = r.clients[1].masked(r.x[1], r.server.sharers())
    bad = [(good[:-1], "shape"), (np.append(good, good[:1]), "shape"),
           (good.astype(np.uint64), "uint32 array"), (good.astype(np.float64), "uint32 array"),
           (good.reshape(5, 10), "shape"), (list(good), "uint32 array"),
           (np.full(50, 1 << 16, dtype=np.uint32), ">= 2\\^16")]
    for vector, reason in bad:
        with pytest.raises(SecAggError, match=reason):
            r.server.add_masked(1, vector)
    r.server.add_masked(1, good)
    with pytest.raises(SecAggError, match="already sent"):
        r.server.add_masked(1, good)
    with pytest.raises(SecAggError, match="1..4"):
        r.server.add_masked(7, good)
    for i in (2, 3, 4):
        r.server.add_masked(i, r.clients[i].masked(r.x[i], r.server.sharers()))
    for i, shares in r.reveals().items():
        r.server.add_reveal(i, shares)
    r.check_sum(r.server.unmask())


def test_server_refuses_bad_keys_shares_and_reveals():
    r = Round(4, 2)
    enc, msk, commitment = r.clients[1].keys()
    r.server.add_keys(1, enc, msk, commitment)
    for args, reason in [((1, *r.clients[2].keys()), "already sent"),
                         ((2, enc, *r.clients[2].keys()[1:]), "already in use"),
                         ((2, enc[:31], msk, commitment), "32 bytes"),
                         ((5, *r.clients[2].keys()), "1..4")]:
        with pytest.raises(SecAggError, match=reason):
            r.server.add_keys(*args)
    for i in (2, 3, 4):
        r.server.add_keys(i, *r.clients[i].keys())
    peers = r.server.peers()
    envelopes = r.clients[1].share(peers)
    assert set(envelopes) == {2, 3, 4}
    assert all(len(e) == CIPHERTEXT_BYTES for e in envelopes.values())
    with pytest.raises(SecAggError, match="not to the other keyed"):
        r.server.add_shares(1, {2: envelopes[2], 3: envelopes[3]})
    with pytest.raises(SecAggError, match="not 168 bytes"):
        r.server.add_shares(1, {**envelopes, 4: envelopes[4][:-1]})
    r.server.add_shares(1, envelopes)
    with pytest.raises(SecAggError, match="already sent"):
        r.server.add_shares(1, envelopes)
    for i in (2, 3, 4):
        r.server.add_shares(i, r.clients[i].share(peers))
    r.mask()
    reveals = r.reveals()
    with pytest.raises(SecAggError, match="outside the round"):
        r.server.add_reveal(1, {**reveals[1], 9: reveals[1][1]})
    with pytest.raises(SecAggError, match="66 bytes"):
        r.server.add_reveal(1, {**reveals[1], 2: reveals[1][2][:-1]})
    with pytest.raises(SecAggError, match="66 bytes"):  # not a field element
        r.server.add_reveal(1, {**reveals[1], 2: b"\xff" * SHARE_BYTES})


def test_client_refuses_a_peer_list_that_is_not_its_own_or_repeats_a_key():
    r = Round(4, 3)
    keys = {i: c.keys()[:2] for i, c in r.clients.items()}
    other = ClientSecAgg(3, 1, 4, 3, 32, CLIP).keys()[:2]
    for peers, reason in [({**keys, 1: other}, "own keys"),
                          ({**keys, 4: keys[3]}, "repeats a public key"),
                          ({1: keys[1], 2: keys[2]}, "fewer than the threshold"),
                          ({**keys, 2: (keys[2][0], bytes(31))}, "32 bytes")]:
        with pytest.raises(SecAggError, match=reason):
            r.clients[1].share(peers)
    r.clients[1].share(keys)
    with pytest.raises(SecAggError, match="already"):
        r.clients[1].share(keys)
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        r.clients[1].masked(r.x[1], [1, 2])
    with pytest.raises(SecAggError, match="include client 1"):
        r.clients[1].masked(r.x[1], [2, 3, 4])


def test_bad_round_parameters_are_refused():
    for args in [(1, 0, 4, 2, 32, CLIP), (1, 5, 4, 2, 32, CLIP), (1, 1, 4, 1, 32, CLIP),
                 (1, 1, 4, 5, 32, CLIP), (1, 1, 4, 2, 65, CLIP), (1, 1, 4, 2, 32, -1.0),
                 (-1, 1, 4, 2, 32, CLIP), (1, 1, 4000, 2, 8, CLIP)]:
        with pytest.raises(SecAggError):
            ClientSecAgg(*args)
    with pytest.raises(SecAggError):
        ServerSecAgg(1, 4, 2, 32, CLIP, 0)
    assert issubclass(SecAggError, PyFedError)
