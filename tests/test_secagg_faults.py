"""Secure aggregation under faults and attacks, with real processes on 127.0.0.1.

A real server process (``secagg_hostile_roles.py server``: SecureAggregation over FedAvg) runs
one round with real, deterministic clients (client i moves the model by ``shift(i)`` and has
100*i examples, so the FedAvg result is known exactly) and hand-made hostile clients that speak
the secure round over a raw socket and break one step each (``evil-client --modes``). A hostile
client that trains honestly trains as client ``--first-index + position``, so when its update
belongs in the sum the expected model is still known.

What must hold: a malformed reply excludes its sender with the reason (the ERROR it receives
names it), the server keeps serving, and the sum of the others is right; a well-formed lie
either is outvoted (the sum is right) or fails the round with "unmasking could not be verified"
(round_retries=0: the run ends, the server says why, and nothing crashes): never a silently
wrong sum. Every process is in a ProcessGroup; every wait is bounded.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import secagg_roles
from conftest import tagged
from procs import ProcessGroup, free_port
from test_faults import wait_exit, wait_for_output
from test_hostile import assert_no_traceback, tagged_lines
from test_secagg import expected_fedavg, final_weights

from pyfed.privacy.secagg.quantize import error_bound

ROLES = Path(__file__).with_name("secagg_hostile_roles.py")
SHAPES = "20x10,10"


def run(tmp_path, *, honest=(1, 2, 3), modes=(), first_index=4, secagg=None, shapes=SHAPES,
        rounds=1, timeout=120) -> ProcessGroup:
    """A one-round federation of ``honest`` clients and one evil connection per mode, to its
    end; the group (closed) for reading outputs. ``server_rc`` is set on it."""
    port = free_port()
    group = ProcessGroup(tmp_path / "procs")
    logdir = tmp_path / "logs"
    options = {"reconstruction_threshold": 2, **(secagg or {})}
    try:
        group.start("server", [sys.executable, ROLES, "server", "--port", port, "--logdir",
                               logdir, "--clients", len(honest) + len(modes), "--shapes", shapes,
                               "--rounds", rounds,
                               "--round-timeout", 30, "--round-retries", 0,
                               "--secagg-options", json.dumps(options)])
        wait_for_output(group, "server", r"^READY \d+", 60)
        if modes:
            group.start("evil", [sys.executable, ROLES, "evil-client", "--port", port,
                                 "--modes", ",".join(modes), "--first-index", first_index,
                                 "--timeout", timeout])
        for i in honest:
            group.start(f"client_{i}", [sys.executable, ROLES, "client", "--port", port,
                                        "--logdir", logdir, "--index", i, "--shapes", shapes])
        group.server_rc = wait_exit(group, "server", timeout)
        group.wait_all(30)
    finally:
        group.close()
    return group


def rejections(group) -> dict[str, list[dict]]:
    """mode -> the ERRORs its connection received."""
    found: dict[str, list[dict]] = {}
    for line in tagged_lines(group.output("evil"), "REJECTED"):
        found.setdefault(line["mode"], []).append(line)
    return found


def assert_sum_is(group, indices, secagg=None, participants=None, rounds=1) -> None:
    """The server's model is FedAvg of clients ``indices`` (each round moves it by the same
    weighted mean of their shifts), within the quantization error."""
    assert group.server_rc == 0, group.dump()
    options = {"clipping_range": 8.0, "modulus_bits": 32, **(secagg or {})}
    weight = sum(min(100 * i / 1000, 1.0) for i in indices)
    # Both the weighted sum and the weight carry the rounding error e; the mean, at most ~1.5,
    # then errs by about e (1 + 1.5) / weight.
    e = error_bound(max(options["clipping_range"], 1.0), options["modulus_bits"],
                    participants or len(indices))
    start = secagg_roles.initial_weights(secagg_roles.parse_shapes(SHAPES))
    for got, one_round, w0 in zip(final_weights(group.output("server")),
                                  expected_fedavg(indices), start):
        want = w0 + rounds * (one_round - w0)
        np.testing.assert_allclose(got, want, atol=rounds * (3 * e / weight + 1e-5))
    history = tagged(group.output("server"), "RESULT")["history"]["history"]
    assert history["participants"] == [len(indices)] * rounds, history
    assert_no_traceback(group)


def check_excluded(group, expected: dict, fatal=(), rounds: int = 1) -> None:
    """Each mode got one "update rejected" ERROR a round whose reason matches its pattern;
    then the run's FINISH (excluded from the round, not disconnected), except the ``fatal``
    modes: refused on the frame's header, mid-frame, so the server also hangs up."""
    found, problems = rejections(group), []
    finished = {line["mode"] for line in tagged_lines(group.output("evil"), "FINISHED")}
    for mode, pattern in expected.items():
        mine = found.get(mode, [])
        if len(mine) != (1 if mode in fatal else rounds):
            problems.append(f"{mode}: {len(mine)} ERRORs: {mine}")
            continue
        for error in mine:
            if error["code"] != "update_rejected" or error["fatal"] != (mode in fatal):
                problems.append(f"{mode}: code {error['code']!r}, fatal {error['fatal']}")
            if not re.search(pattern, error["reason"]):
                problems.append(f"{mode}: reason {error['reason']!r} does not match {pattern!r}")
        if mode not in finished and mode not in fatal:
            problems.append(f"{mode}: no FINISH after the rejection")
    assert not problems, "\n".join(problems) + "\n" + group.output("evil")[-4000:]
    server = group.output("server")
    for mode in expected:  # the server's log names each exclusion too
        assert re.search(rf"evil_{re.escape(mode)} left the secure round: \S", server), \
            f"no exclusion of evil_{mode} in the server's log:\n{server[-4000:]}"


def failed_clearly(group) -> str:
    """The run ended with the round's failure: exit status 1, one FAILED line (the message),
    no RESULT, no traceback anywhere in the server's output. Returns the message."""
    output = group.output("server")
    assert group.server_rc == 1, group.dump()
    assert "RESULT " not in output, "a run whose round failed must not apply a sum"
    assert_no_traceback(group)
    return tagged_line(output, "FAILED")


def tagged_line(output: str, tag: str) -> str:
    lines = [line[len(tag) + 1:] for line in output.splitlines() if line.startswith(tag + " ")]
    assert len(lines) == 1, f"expected one {tag} line:\n{output[-3000:]}"
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Malformed replies: excluded with the reason, the others' sum is right
# ---------------------------------------------------------------------------------------------

# mode -> what the ERROR it receives must say. Keys and shares come before any update: their
# senders are simply not in the round.
KEY_AND_SHARE_FAULTS = {
    "keys-bad-hex": r"SECAGG_KEYS field 'encryption_key' must be lowercase hex of 32 bytes.*"
                    r"not all lowercase hex",
    "keys-short-key": r"SECAGG_KEYS field 'mask_key' must be lowercase hex of 32 bytes; "
                      r"received 62 characters",
    "keys-same-keys": r"client \d+ sent a public key already in use",
    "keys-wrong-round": r"result is for round 8; the current round is 1",
    "shares-wrong-length": r"client \d+'s envelope for client \d+ is not 168 bytes",
    "shares-missing-recipient": r"addressed shares to \[.*\], not to the other keyed clients",
    "shares-to-self": r"addressed shares to \[.*\], not to the other keyed clients",
    "shares-out-of-range": r"SECAGG_SHARES field 'recipients'\[\d+\] must be an integer in "
                           r"\[1, 1024\]; received 5000",
    "shares-bad-hex": r"SECAGG_SHARES field 'ciphertexts'\[0\] must be lowercase hex",
    "shares-unpaired": r"recipients and ciphertexts must pair up",
    "shares-huge-list": r"SECAGG_SHARES field 'recipients' has 2000 items; at most 1024",
    "shares-wrong-round": r"result is for round 8; the current round is 1",
}


def test_malformed_keys_and_shares_exclude_their_sender_and_the_sum_is_right(tmp_path):
    group = run(tmp_path, modes=list(KEY_AND_SHARE_FAULTS))
    check_excluded(group, KEY_AND_SHARE_FAULTS)
    assert_sum_is(group, [1, 2, 3], participants=3 + len(KEY_AND_SHARE_FAULTS))
    assert "dropped client" not in group.output("server")  # nobody in the sum went missing


# A masked vector that is not one ring vector of the right length is refused on its header
# (fatal: the frame is left unread); one for the wrong round after it (the client stays).
MASKED_FAULTS = {
    "masked-short": r"SECAGG_MASKED the masked vector has shape \[210\]; expected shape \[211\]",
    "masked-dtype": r"SECAGG_MASKED the masked vector has dtype <i8; expected dtype <u4",
    "masked-float": r"SECAGG_MASKED the masked vector has dtype <f8; expected dtype <u4",
    "masked-two-arrays": r"SECAGG_MASKED carries 2 arrays; expected 1 array",
    "masked-as-fit-result": r"FIT_RESULT is not the answer expected: SECAGG_MASKED",
    "masked-wrong-round": r"secure fit result is for round 8; the current round is 1",
}


def test_malformed_masked_vectors_are_dropouts_recovered_from_the_survivors_shares(tmp_path):
    group = run(tmp_path, modes=list(MASKED_FAULTS))
    check_excluded(group, MASKED_FAULTS, fatal=set(MASKED_FAULTS) - {"masked-wrong-round"})
    # They shared their keys, so every honest vector carries masks toward them: the server
    # removes those with the key shares the survivors reveal.
    assert_sum_is(group, [1, 2, 3], participants=3 + len(MASKED_FAULTS))
    assert f"recovered from {len(MASKED_FAULTS)} dropped clients" in group.output("server")


def test_values_beyond_a_16_bit_ring_are_refused_and_the_sum_is_right(tmp_path):
    options = {"modulus_bits": 16}
    group = run(tmp_path, modes=["masked-overflow"], secagg=options)
    check_excluded(group, {"masked-overflow": r"client \d+'s masked vector has values >= 2\^16"})
    assert_sum_is(group, [1, 2, 3], secagg=options, participants=4)
    assert "recovered from 1 dropped client: evil_masked-overflow" in group.output("server")


# A reveal comes from a client whose update is already in the sum: refusing the reveal keeps
# the update (it trained honestly, as client 4, 5...), and the other survivors' shares unmask.
REVEAL_FAULTS = {
    "reveal-bad-hex": r"SECAGG_REVEAL field 'shares'\[0\] must be lowercase hex of 66 bytes; "
                      r"received 132 characters, not all lowercase hex digits",
    "reveal-short-share": r"SECAGG_REVEAL field 'shares'\[0\] must be lowercase hex of 66 bytes; "
                          r"received 130 characters",
    "reveal-not-a-field-element": r"client \d+'s share of \d+ must be 66 bytes holding a field "
                                  r"element",
    "reveal-outside-owner": r"client \d+ revealed shares of clients \[999\] outside the round",
    "reveal-huge-list": r"SECAGG_REVEAL field 'owners' has 2000 items; at most 1024",
    "reveal-wrong-round": r"result is for round 8; the current round is 1",
}


def test_malformed_reveals_are_refused_and_the_sum_keeps_their_updates(tmp_path):
    group = run(tmp_path, modes=list(REVEAL_FAULTS), first_index=4)
    check_excluded(group, REVEAL_FAULTS)
    assert_sum_is(group, [1, 2, 3, *range(4, 4 + len(REVEAL_FAULTS))])


def test_excluded_clients_are_asked_again_next_round_and_refused_again(tmp_path):
    """Exclusion is per round: the connection stays usable (the state table is back to
    READY), so the next round asks, and refuses, again; the honest rounds go on."""
    faults = {mode: pattern for table in (KEY_AND_SHARE_FAULTS, MASKED_FAULTS, REVEAL_FAULTS)
              for mode, pattern in table.items()
              if mode in ("keys-same-keys", "shares-missing-recipient", "masked-wrong-round",
                          "reveal-outside-owner")}
    group = run(tmp_path, modes=list(faults), rounds=2)
    check_excluded(group, {m: p.replace("8; the current round is 1", r"\d+; the current round")
                           for m, p in faults.items()}, rounds=2)
    trained_as = 4 + list(faults).index("reveal-outside-owner")  # its update is in the sum
    assert_sum_is(group, [1, 2, 3, trained_as], participants=3 + len(faults), rounds=2)


def test_a_lying_revealer_is_outvoted_when_more_than_t_shares_exist(tmp_path):
    # 4 survivors, t = 3: every owner's secret has 4 shares, one of them a lie, and some 3
    # honest ones rebuild a secret that matches its commitment or public key.
    group = run(tmp_path, modes=["reveal-lying"], secagg={"reconstruction_threshold": 3})
    assert_sum_is(group, [1, 2, 3, 4])
    assert re.search(r"round 1: evil_reveal-lying revealed shares off the verified "
                     r"polynomial; outvoted", group.output("server")), group.dump()


# ---------------------------------------------------------------------------------------------
# Well-formed lies the server cannot correct: the round fails, saying so
# ---------------------------------------------------------------------------------------------

# mode -> (honest clients, SecureAggregation options, shapes, what the failure must name).
UNVERIFIABLE = {
    # Envelopes of the right size that no recipient can open: nobody can reveal its shares,
    # so its self-mask (it did send a masked vector) cannot be rebuilt.
    "shares-garbage": ((1, 2, 3), {}, SHAPES, r"only 1 shares of client \d+'s secret"),
    "shares-tampered": ((1, 2, 3), {}, SHAPES, r"only 1 shares of client \d+'s secret"),
    # Its shares rebuild a seed that is not the one it committed to.
    "keys-lying-commitment": ((1, 2, 3), {}, SHAPES, r"client \d+'s secret could not be verified"),
    # Exactly t = 3 revealers, one lying: detected (no secret verifies), not correctable.
    "reveal-lying": ((1, 2), {"reconstruction_threshold": 3}, SHAPES,
                     r"client \d+'s secret could not be verified"),
    # Random ring values instead of its masked update: the unmasked "sum" is noise, which
    # cannot be a sum of clipped vectors. With 10,102 coordinates a noise sum passes the
    # check with probability about 1/(16 * 10,102): the test can fail spuriously 1 run in
    # 160,000 (a malicious client sending a plausible but false update is not detectable at
    # all: secure aggregation hides inputs, it does not vouch for them).
    "masked-random": ((1, 2, 3), {}, "100x100,100", r"the weights sum to|a coordinate of the sum"),
}


@pytest.mark.parametrize("mode", list(UNVERIFIABLE))
def test_a_sum_that_cannot_be_verified_fails_the_round_clearly(tmp_path, mode):
    honest, options, shapes, named = UNVERIFIABLE[mode]
    group = run(tmp_path, honest=honest, modes=[mode], secagg=options, shapes=shapes)
    message = failed_clearly(group)
    assert re.search(r"unmasking could not be verified", message), message
    assert re.search(named, message), message
    assert "giving up after 1 attempt (round_retries=0)" in message, message
    for i in honest:  # told, not left hanging
        assert "CLIENT_FAILED" in group.output(f"client_{i}") and \
            "the server stopped" in group.output(f"client_{i}"), group.dump()
