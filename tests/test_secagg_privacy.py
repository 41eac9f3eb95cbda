"""What secure aggregation hides, and what a secure-round peer may not make the other side do.

1. An honest-but-curious server's view: a recording TCP proxy (in this process, 127.0.0.1
   only) sits between each real client process and the real server process and keeps every
   byte; the client -> server frames are decoded with pyfed.wire. The masked vector a client
   sends must be uniform on the ring (chi-square on its top and bottom bytes, a fixed
   significance) and unrelated to the client's quantized update, which the same test tells
   apart from uniform at once.
2. A hostile server (``secagg_hostile_roles.py evil-server``) toward a real FL_Client: asking
   for both shares of one peer, for a reveal with fewer survivors than the threshold, or
   announcing other keys as the client's own. The client refuses with a non-fatal ERROR
   ("secagg_refused") that names the problem, and reveals nothing.
3. Hostile header values of every SecAgg message kind, refused by the decoder (InvalidValue,
   naming the field); the live versions for client -> server kinds are in test_secagg_faults.
"""

from __future__ import annotations

import math
import re
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hostile_roles import decode_frames
from procs import ProcessGroup, free_port
from test_faults import wait_exit, wait_for_output
from test_hostile import assert_no_traceback, tagged_lines
from test_secagg import expected_fedavg, final_weights

import secagg_roles
from pyfed.errors import InvalidValue
from pyfed.privacy.secagg import vector as secure_vector
from pyfed.privacy.secagg.quantize import quantize
from pyfed.wire import protocol
from pyfed.wire.messages import (MessageKind, SecAggKeys, SecAggMasked, SecAggPeers,
                                 SecAggReveal, SecAggSetup, SecAggShares, SecAggUnmask)

ROLES = Path(__file__).with_name("secagg_hostile_roles.py")
LOOPBACK = "127.0.0.1"
MAX_RECORDED = 64 << 20  # a proxy keeps at most this much per direction (bounded memory)


class RecordingProxy:
    """Forwards one TCP connection to ``target_port`` and keeps a copy of both directions.
    Every socket has a timeout, so a stuck peer ends the pump instead of hanging the test."""

    def __init__(self, target_port: int, timeout: float = 120.0) -> None:
        self.target_port, self.timeout = target_port, timeout
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(timeout)
        self.port = self.listener.getsockname()[1]
        self.upstream, self.downstream = bytearray(), bytearray()  # client->server, back
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
            server = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
        except OSError:
            return
        self._sockets += [client, server]
        for source, sink, record in ((client, server, self.upstream),
                                     (server, client, self.downstream)):
            source.settimeout(self.timeout)
            pump = threading.Thread(target=self._pump, args=(source, sink, record), daemon=True)
            self._threads.append(pump)
            pump.start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        while len(record) < MAX_RECORDED:
            try:
                chunk = source.recv(1 << 16)
                if not chunk:
                    break
                record += chunk
                sink.sendall(chunk)
            except OSError:
                break
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)


def chi_square_critical(df: int, z: float) -> float:
    """The chi-square quantile with ``df`` degrees of freedom at the normal quantile ``z``
    (Wilson-Hilferty; within 0.1 % of the exact value for df = 255)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


# Significance 1e-6 per histogram (z = 4.753): 3 histograms x 3 clients, so an honest run fails
# spuriously about once in 100,000; an unmasked update still exceeds it a hundredfold.
CRITICAL = chi_square_critical(255, 4.753)


def byte_chi_square(values: np.ndarray, shift: int) -> float:
    counts = np.bincount(((values >> np.uint32(shift)) & np.uint32(0xFF)).astype(np.int64),
                         minlength=256)
    expected = values.size / 256
    return float(((counts - expected) ** 2 / expected).sum())


def test_what_the_server_receives_from_a_client_is_uniform_on_the_ring(tmp_path):
    shapes = "100x100,100"  # 10,102 ring values a client: 39.5 expected per byte bin
    port, logdir = free_port(), tmp_path / "logs"
    proxies = {}
    with ProcessGroup(tmp_path / "procs") as group:
        group.start("server", [sys.executable, ROLES, "server", "--port", port, "--logdir",
                               logdir, "--clients", 3, "--shapes", shapes])
        wait_for_output(group, "server", r"^READY \d+", 60)
        try:
            for i in (1, 2, 3):
                proxies[i] = RecordingProxy(port)
                group.start(f"client_{i}", [sys.executable, ROLES, "client", "--port",
                                            proxies[i].port, "--logdir", logdir, "--index", i,
                                            "--shapes", shapes])
            assert wait_exit(group, "server", 120) == 0, group.dump()
            group.wait_all(30)
        finally:
            for proxy in proxies.values():
                proxy.close()
        assert_no_traceback(group)
        # The proxies changed nothing: the run's model is plain FedAvg of the three.
        parsed = secagg_roles.parse_shapes(shapes)
        for got, want in zip(final_weights(group.output("server")),
                             expected_fedavg([1, 2, 3], shapes=parsed)):
            np.testing.assert_allclose(got, want, atol=1e-4)

    for i, proxy in proxies.items():
        sent = decode_frames(bytes(proxy.upstream))
        kinds = [m.KIND for m in sent]
        assert MessageKind.FIT_RESULT not in kinds, f"client {i} sent its update in the clear"
        masked = [m for m in sent if m.KIND is MessageKind.SECAGG_MASKED]
        assert len(masked) == 1, kinds
        ring = np.asarray(masked[0].vector[0])
        assert ring.dtype == np.uint32 and ring.size == 1 + 100 * 100 + 100, ring.shape
        for shift in (24, 0):  # the top byte and the bottom byte of each 32-bit value
            statistic = byte_chi_square(ring, shift)
            assert statistic < CRITICAL, (i, shift, statistic, CRITICAL)
        top_bit = float(np.mean(ring >> np.uint32(31)))
        assert abs(top_bit - 0.5) < 4.5 * 0.5 / math.sqrt(ring.size), top_bit

        # The client's own quantized update, rebuilt from the FIT it received.
        fit = [m for m in decode_frames(bytes(proxy.downstream)) if m.KIND is MessageKind.FIT]
        reference = [np.asarray(w) for w in fit[0].weights]
        trained = [w + s for w, s in zip(reference, secagg_roles.shift(i, parsed))]
        vector = secure_vector.encode(trained, reference, 100 * i, fit[0].config["secagg"],
                                      8.0, 1000.0)
        quantized = quantize(vector, 8.0, 32, 3)
        # The same test has the power to see an unmasked update at once ...
        assert byte_chi_square(quantized, 24) > 100 * CRITICAL
        # ... and what the server received is not it, nor close to it.
        assert np.mean(ring == quantized) < 0.01
        differences = (ring.astype(np.int64) - quantized.astype(np.int64)) % (1 << 32)
        assert byte_chi_square(differences.astype(np.uint32), 24) < CRITICAL  # the mask: uniform


# ---------------------------------------------------------------------------------------------
# A hostile server toward a real FL_Client
# ---------------------------------------------------------------------------------------------


def against_evil_server(tmp_path, mode: str):
    """A real client (secagg_roles' client 1) against evil-server ``mode``: the client's exit
    status and output, and the evil server's record of what it received."""
    with ProcessGroup(tmp_path / "procs") as group:
        group.start("server", [sys.executable, ROLES, "evil-server", "--mode", mode,
                               "--timeout", 60])
        port = int(wait_for_output(group, "server", r"^READY (\d+)", 30).group(1))
        group.start("client", [sys.executable, ROLES, "client", "--port", port, "--logdir",
                               tmp_path / "logs", "--index", 1])
        rc = wait_exit(group, "client", 60)
        wait_exit(group, "server", 30)
        assert_no_traceback(group, "client")
        server = group.output("server")
        return rc, group.output("client"), {
            "received": [line["kind"] for line in tagged_lines(server, "RECEIVED")],
            "errors": tagged_lines(server, "CLIENT_ERROR"),
            "revealed": tagged_lines(server, "REVEALED")}


def test_the_evil_server_plays_a_correct_round_when_honest(tmp_path):
    """The control: the same server, not attacking, gets keys, shares, a masked vector and a
    reveal (so the refusals below are the attacks', not the harness's)."""
    rc, output, seen = against_evil_server(tmp_path, "honest")
    assert rc == 0, output
    assert seen["received"][1:] == ["SECAGG_KEYS", "SECAGG_SHARES", "SECAGG_MASKED",
                                    "SECAGG_REVEAL"], seen
    assert seen["errors"] == [] and seen["revealed"] == [{"owners": [1, 2, 3]}], seen
    assert '"rounds": 1' in output, output


# mode -> (what the refusal names, the last message the client sent before refusing).
REFUSALS = {
    "peers-own-keys-replaced": (r"the peer list does not carry client 1's own keys",
                                "SECAGG_KEYS"),
    "peers-repeated-key": (r"the peer list repeats a public key", "SECAGG_KEYS"),
    "unmask-both-shares": (r"clients \[3\] are both survivors and dropped: revealing both of "
                           r"an owner's shares would unmask it", "SECAGG_MASKED"),
    "unmask-few-survivors": (r"only 2 survivors, fewer than the threshold 3", "SECAGG_MASKED"),
    "unmask-self-dropped": (r"client 1 is asked to reveal but is not a survivor",
                            "SECAGG_MASKED"),
}


@pytest.mark.parametrize("mode", list(REFUSALS))
def test_a_client_refuses_a_step_that_would_reveal_too_much(tmp_path, mode):
    pattern, last = REFUSALS[mode]
    rc, output, seen = against_evil_server(tmp_path, mode)
    assert rc == 0, output  # refused the step, not the run: FINISH ended it normally
    assert len(seen["errors"]) == 1, seen
    error = seen["errors"][0]
    assert error["code"] == "secagg_refused" and error["fatal"] is False, error
    assert error["reason"].startswith("secure aggregation step refused: "), error
    assert re.search(pattern, error["reason"]), error
    # The refusal answered the request: nothing after ``last`` but the ERROR itself.
    received = seen["received"]
    assert received[received.index(last) + 1:] == ["ERROR"], received
    assert "SECAGG_REVEAL" not in received and seen["revealed"] == [], seen


def test_a_client_reveals_once_per_round_whatever_the_server_asks(tmp_path):
    """A second SECAGG_UNMASK declaring a survivor dropped would get that peer's key share
    after its seed share: both halves of its mask. The client has forgotten the round."""
    rc, output, seen = against_evil_server(tmp_path, "unmask-twice")
    assert rc == 0, output
    assert seen["revealed"] == [{"owners": [1, 2, 3]}], seen  # the first, honest reveal only
    assert seen["received"][-1] == "ERROR" and len(seen["errors"]) == 1, seen
    error = seen["errors"][0]
    assert error["code"] == "secagg_refused" and not error["fatal"], error
    assert "SECAGG_UNMASK for round 1, but this client is in no secure round" in error["reason"]


def test_a_peer_list_with_a_value_the_decoder_refuses_ends_the_client_clearly(tmp_path):
    rc, output, seen = against_evil_server(tmp_path, "peers-bad-hex")
    assert rc == 2, output
    assert "SECAGG_PEERS field 'peers'[1] must be lowercase hex of 32 bytes" in output, output
    assert "SECAGG_SHARES" not in seen["received"], seen
    assert [e["code"] for e in seen["errors"]] == ["client_error"], seen


# ---------------------------------------------------------------------------------------------
# Hostile header values, decoded (both directions: every SecAgg kind)
# ---------------------------------------------------------------------------------------------

KEY = "ab" * 32
ENVELOPE = "cd" * 168
SHARE = "01" * 66
SETUP = dict(round=1, index=1, participants=3, threshold=2, modulus_bits=32,
             clipping_range=8.0, max_weight=1000.0)
UNMASK = dict(round=1, survivors=[1, 2], dropped=[3], senders=[2], ciphertexts=[ENVELOPE])

# (message, what the refusal must name)
HOSTILE_HEADERS = [
    (SecAggSetup(**{**SETUP, "index": 0}), r"'index' must be an integer in \[1, 1024\]"),
    (SecAggSetup(**{**SETUP, "participants": 5000}), r"'participants'.*received 5000"),
    (SecAggSetup(**{**SETUP, "modulus_bits": 65}), r"'modulus_bits'.*\[8, 64\]"),
    (SecAggSetup(**{**SETUP, "clipping_range": float("nan")}), r"'clipping_range'"),
    (SecAggSetup(**{**SETUP, "round": -1}), r"'round'"),
    (SecAggKeys(round=1, encryption_key="zz" * 32, mask_key=KEY, seed_commitment=KEY),
     r"'encryption_key' must be lowercase hex of 32 bytes.*not all lowercase hex"),
    (SecAggKeys(round=1, encryption_key=KEY.upper(), mask_key=KEY, seed_commitment=KEY),
     r"'encryption_key'.*not all lowercase hex"),
    (SecAggKeys(round=1, encryption_key=KEY, mask_key=KEY + "ab", seed_commitment=KEY),
     r"'mask_key' must be lowercase hex of 32 bytes; received 66 characters"),
    (SecAggKeys(round=1, encryption_key=KEY, mask_key=KEY, seed_commitment=7),
     r"'seed_commitment'"),
    (SecAggKeys(round=2**40, encryption_key=KEY, mask_key=KEY, seed_commitment=KEY), r"'round'"),
    (SecAggPeers(round=1, peers=[[1, KEY]]), r"'peers'\[0\] must be \[index, encryption_key"),
    (SecAggPeers(round=1, peers=[[0, KEY, KEY]]), r"'peers'\[0\] must be an integer in \[1, 1024"),
    (SecAggPeers(round=1, peers=[[1, KEY, "0x" + KEY[2:]]]), r"'peers'\[0\].*not all lowercase"),
    (SecAggPeers(round=1, peers=[[1, KEY, KEY]] * 1025), r"'peers' has 1025 items; at most 1024"),
    (SecAggShares(round=1, recipients=[0], ciphertexts=[ENVELOPE]), r"'recipients'\[0\]"),
    (SecAggShares(round=1, recipients=[2], ciphertexts=["ab" * 257]),
     r"'ciphertexts'\[0\] must be lowercase hex of 1\.\.256 bytes"),
    (SecAggShares(round=1, recipients=[2] * 1025, ciphertexts=[ENVELOPE]),
     r"'recipients' has 1025 items"),
    (SecAggMasked(round=1, metrics={"loss": float("inf")}), r"'metrics'"),
    (SecAggMasked(round=1, first_epoch=-1), r"'first_epoch'"),
    (SecAggUnmask(**{**UNMASK, "survivors": [1, 5000]}), r"'survivors'\[1\].*received 5000"),
    (SecAggUnmask(**{**UNMASK, "dropped": list(range(1, 1100))}), r"'dropped' has 1099 items"),
    (SecAggUnmask(**{**UNMASK, "ciphertexts": ["xyz"]}), r"'ciphertexts'\[0\]"),
    (SecAggUnmask(**{**UNMASK, "round": 2**31}), r"'round'"),
    (SecAggReveal(round=1, owners=[1], shares=[SHARE[:-2]]),
     r"'shares'\[0\] must be lowercase hex of 66 bytes; received 130 characters"),
    (SecAggReveal(round=1, owners=[0], shares=[SHARE]), r"'owners'\[0\]"),
    (SecAggReveal(round=1, owners=[1], shares=[7]), r"'shares'"),
]


@pytest.mark.parametrize("message, named", HOSTILE_HEADERS,
                         ids=[f"{m.KIND.name}-{i}" for i, (m, _) in enumerate(HOSTILE_HEADERS)])
def test_hostile_secagg_header_values_are_refused_naming_the_field(message, named):
    with pytest.raises(InvalidValue, match=named) as refused:
        protocol.decode(protocol.encode_bytes(message))
    assert message.KIND.name in str(refused.value)


def test_every_secagg_kind_has_field_rules_and_its_valid_values_decode():
    valid = [SecAggSetup(**SETUP),
             SecAggKeys(round=1, encryption_key=KEY, mask_key=KEY, seed_commitment=KEY),
             SecAggPeers(round=1, peers=[[1, KEY, KEY], [2, KEY, KEY]]),
             SecAggShares(round=1, recipients=[2], ciphertexts=[ENVELOPE]),
             SecAggMasked(round=1, vector=(np.arange(5, dtype=np.uint32),)),
             SecAggUnmask(**UNMASK), SecAggReveal(round=1, owners=[1], shares=[SHARE])]
    assert {m.KIND for m in valid} == {k for k in MessageKind if k.name.startswith("SECAGG_")}
    for message in valid:
        decoded = protocol.decode(protocol.encode_bytes(message))
        if message.ARRAY_FIELD is None:
            assert decoded == message
        else:
            np.testing.assert_array_equal(decoded.vector[0], message.vector[0])
