"""Hostile peers of a secure round: ``python secagg_hostile_roles.py <role> ...``.

Roles:
- ``server``: secagg_roles' server (a NumpyModel of ``--shapes``, SecureAggregation with
  ``--secagg-options``), except that a failed run prints ``FAILED <message>`` and exits 1
  instead of a traceback, as a user's script catching PyFedError would.
- ``client``: secagg_roles' deterministic client (client i moves the model by ``shift(i)``,
  reports 100*i examples); a refused run prints ``CLIENT_FAILED <message>``, exits 2.
- ``evil-client``: one raw-socket connection per ``--modes`` entry, each speaking the secure
  round by hand with :class:`ClientSecAgg` and training like secagg_roles' client
  ``--first-index + position``, but breaking one step as its mode says (see ``fault``). Prints
  ``REJECTED {json}`` for each ERROR, ``SENT {json}`` for each step, ``FINISHED``/``CLOSED``.
- ``evil-server``: a hostile server for one real client (index 1 of 3; peers 2 and 3 are
  played by ClientSecAgg objects in this process): a secure round that goes wrong as
  ``--mode`` says (see ``EVIL_SERVER_MODES``). Prints ``READY <port>``, ``RECEIVED {json}``
  for each message of the client and ``CLIENT_ERROR {json}`` for each ERROR.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
import uuid

import numpy as np

import secagg_roles
from hostile_roles import emit, read_frame

from pyfed.errors import PyFedError
from pyfed.privacy.secagg import vector as secure_vector
from pyfed.privacy.secagg.protocol import ClientSecAgg
from pyfed.wire import protocol
from pyfed.wire.messages import (Finish, Fit, FitResult, Hello, MessageKind, SecAggKeys,
                                 SecAggMasked, SecAggPeers, SecAggReveal, SecAggSetup,
                                 SecAggShares, SecAggUnmask, Welcome)

def _flip(data: bytes, position: int = 40) -> bytes:
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1:]


def fault(mode: str, step: str, message, me: int, bits: int):
    """The reply ``message`` (honest, for ``step``: keys, shares, masked or reveal) as
    ``mode`` ("<step>-<fault>") breaks it; every other step stays honest. ``me`` is this
    client's index in the round, ``bits`` the ring's modulus_bits."""
    if not mode.startswith(step + "-"):
        return message
    what = mode[len(step) + 1:]
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    if what == "wrong-round":
        return type(message)(**{**fields, "round": message.round + 7})
    if step == "keys":
        changes = {"bad-hex": {"encryption_key": "zz" * 32},
                   "short-key": {"mask_key": "ab" * 31},
                   "same-keys": {"mask_key": message.encryption_key},
                   # Well-formed, but not sha256 of the seed it masks with: the b the
                   # survivors rebuild matches nothing it committed to.
                   "lying-commitment": {"seed_commitment": os.urandom(32).hex()}}[what]
        return type(message)(**{**fields, **changes})
    if step == "shares":
        recipients, ciphertexts = list(message.recipients), list(message.ciphertexts)
        envelopes = [bytes.fromhex(c) for c in ciphertexts]
        if what == "wrong-length":
            ciphertexts = [e[:100].hex() for e in envelopes]
        elif what == "garbage":  # right length, random bytes: only a recipient can tell
            ciphertexts = [os.urandom(len(e)).hex() for e in envelopes]
        elif what == "tampered":
            ciphertexts = [_flip(e).hex() for e in envelopes]
        elif what == "missing-recipient":
            recipients, ciphertexts = recipients[1:], ciphertexts[1:]
        elif what == "to-self":
            recipients, ciphertexts = recipients + [me], ciphertexts + ciphertexts[:1]
        elif what == "out-of-range":
            recipients = recipients[:-1] + [5000]
        elif what == "bad-hex":
            ciphertexts = ["not hex!"] * len(ciphertexts)
        elif what == "unpaired":
            ciphertexts = ciphertexts[:-1]
        elif what == "huge-list":
            recipients, ciphertexts = [1] * 2000, ciphertexts[:1] * 2000
        else:
            raise ValueError(mode)
        return SecAggShares(round=message.round, recipients=recipients, ciphertexts=ciphertexts)
    if step == "masked":
        ring = message.vector[0]
        vector = {
            "short": lambda: (ring[:-1],),
            "dtype": lambda: (ring.astype(np.int64),),
            "float": lambda: (ring.astype(np.float64),),
            "overflow": lambda: (ring | np.uint32(1 << 16),),  # >= 2^16 in a 16-bit ring
            "two-arrays": lambda: (ring, ring),
            "random": lambda: (np.random.default_rng().integers(
                0, 1 << bits, ring.shape, dtype=np.uint64).astype(ring.dtype),),
        }.get(what)
        if vector is not None:
            return SecAggMasked(**{**fields, "vector": vector()})
        if what == "as-fit-result":
            return FitResult(round=message.round, weights=message.vector, num_examples=100)
        raise ValueError(mode)
    if step == "reveal":
        owners, shares = list(message.owners), list(message.shares)
        changes = {"bad-hex": {"shares": ["g" * 132] * len(shares)},
                   "short-share": {"shares": [s[:-2] for s in shares]},
                   "not-a-field-element": {"shares": ["ff" * 66] * len(shares)},
                   "outside-owner": {"owners": owners[:-1] + [999]},
                   "huge-list": {"owners": [1] * 2000, "shares": shares[:1] * 2000},
                   # Well-formed lies: random field elements, as a cheating revealer sends.
                   "lying": {"shares": [os.urandom(64).rjust(66, b"\0").hex() for _ in shares]},
                   }[what]
        return SecAggReveal(**{**fields, **changes})
    raise ValueError(mode)


def evil_session(port: int, mode: str, train_as: int, timeout: float) -> None:
    name = f"evil_{mode}"
    deadline = time.monotonic() + timeout
    protocol_state = request = None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as exc:
        emit("FAILED", {"mode": mode, "error": f"connect: {exc}"})
        return
    try:
        sock.sendall(protocol.encode_bytes(Hello(client_name=name)))
        welcome = read_frame(sock, deadline)
        if welcome is None or welcome.KIND is not MessageKind.WELCOME:
            emit("FAILED", {"mode": mode, "error": f"no WELCOME: {welcome!r}"})
            return
        for _ in range(100):  # bounded: a round is 4 requests and a FINISH
            try:
                message = read_frame(sock, deadline)
            except (ConnectionError, OSError) as exc:
                emit("CLOSED", {"mode": mode, "how": type(exc).__name__})
                return
            if message is None:
                emit("CLOSED", {"mode": mode, "how": "eof"})
                return
            kind, reply, step = message.KIND, None, None
            if kind is MessageKind.SECAGG_SETUP:
                setup, step = message, "keys"
                protocol_state = ClientSecAgg(setup.round, setup.index, setup.participants,
                                     setup.threshold, setup.modulus_bits, setup.clipping_range)
                enc, msk, commitment = protocol_state.keys()
                reply = SecAggKeys(round=setup.round, encryption_key=enc.hex(),
                                   mask_key=msk.hex(), seed_commitment=commitment.hex())
            elif kind is MessageKind.SECAGG_PEERS:
                step = "shares"
                table = {i: (bytes.fromhex(e), bytes.fromhex(m)) for i, e, m in message.peers}
                envelopes = protocol_state.share(table)
                recipients = sorted(envelopes)
                reply = SecAggShares(round=message.round, recipients=recipients,
                                     ciphertexts=[envelopes[r].hex() for r in recipients])
            elif kind is MessageKind.FIT:
                step, request = "masked", message.config["secagg"]
                reference = [np.asarray(w) for w in message.weights]
                shapes = [w.shape for w in reference]
                trained = [w + s for w, s in zip(reference, secagg_roles.shift(train_as, shapes))]
                vector = secure_vector.encode(trained, reference, 100 * train_as, request,
                                              setup.clipping_range, setup.max_weight)
                ring = protocol_state.masked(vector, list(request["peers"]))
                reply = SecAggMasked(round=message.round, vector=(ring,), metrics={})
            elif kind is MessageKind.SECAGG_UNMASK:
                step = "reveal"
                incoming = {s: bytes.fromhex(c) for s, c in zip(message.senders,
                                                                message.ciphertexts)}
                shares = protocol_state.reveal(message.survivors, message.dropped, incoming)
                reply = SecAggReveal(round=message.round, owners=sorted(shares),
                                     shares=[shares[o].hex() for o in sorted(shares)])
            elif kind is MessageKind.ERROR:
                emit("REJECTED", {"mode": mode, "code": message.code, "fatal": message.fatal,
                                  "reason": message.reason})
                if message.fatal:
                    return
            elif kind is MessageKind.FINISH:
                emit("FINISHED", {"mode": mode, "reason": message.reason})
                return
            else:
                emit("UNEXPECTED", {"mode": mode, "kind": kind.name})
            if reply is not None:
                reply = fault(mode, step, reply, protocol_state.index, setup.modulus_bits)
                sock.sendall(protocol.encode_bytes(reply))
                emit("SENT", {"mode": mode, "step": step, "trained_as": train_as})
        emit("TIMEOUT", {"mode": mode})
    except Exception as exc:  # noqa: BLE001  (report, never hang: the test reads these lines)
        emit("FAILED", {"mode": mode, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        sock.close()


def evil_client(args) -> None:
    modes = args.modes.split(",")
    threads = [threading.Thread(target=evil_session, daemon=True,
                                args=(args.port, mode, args.first_index + i, args.timeout))
               for i, mode in enumerate(modes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.timeout + 5)


# ---------------------------------------------------------------------------------------------
# evil-server: one real client (index 1) and two peers played here
# ---------------------------------------------------------------------------------------------

# mode -> the threshold announced (the comment says what goes wrong). The client must refuse
# each wrong step with a non-fatal ERROR (code "secagg_refused") and reveal nothing; "honest"
# is the control.
EVIL_SERVER_MODES = {
    "honest": 2,
    "peers-own-keys-replaced": 2,  # SECAGG_PEERS carries other keys under the client's index
    "peers-repeated-key": 2,  # peer 3 announced with peer 2's keys
    "peers-bad-hex": 2,  # a header value the decoder refuses
    "unmask-both-shares": 2,  # peer 3 both a survivor and dropped: b and s_sk of one owner
    "unmask-few-survivors": 3,  # 2 survivors, threshold 3
    "unmask-self-dropped": 2,  # the client itself listed as dropped: its own key share
    "unmask-twice": 2,  # an honest UNMASK, then another declaring peer 3 dropped
}


def _unmask(mode: str, server_round: int, envelopes: dict):
    survivors, dropped = {"unmask-both-shares": ([1, 2, 3], [3]),
                          "unmask-few-survivors": ([1, 2], [3]),
                          "unmask-self-dropped": ([2, 3], [1])}.get(mode, ([1, 2, 3], []))
    return SecAggUnmask(round=server_round, survivors=survivors, dropped=dropped,
                        senders=sorted(envelopes),
                        ciphertexts=[envelopes[s].hex() for s in sorted(envelopes)])


def evil_server(args) -> None:
    from pyfed.models import NumpyModel
    from pyfed.wire.spec import spec_hash, spec_to_json

    mode, threshold = args.mode, EVIL_SERVER_MODES[args.mode]
    shapes = secagg_roles.parse_shapes(args.shapes)
    model = NumpyModel(secagg_roles.initial_weights(shapes))
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"READY {listener.getsockname()[1]}", flush=True)
    deadline = time.monotonic() + args.timeout
    listener.settimeout(args.timeout)
    sock, _ = listener.accept()
    listener.close()

    def send(message) -> None:
        sock.sendall(message if isinstance(message, bytes) else protocol.encode_bytes(message))

    def receive():
        message = read_frame(sock, deadline)
        if message is None:
            emit("CLOSED", {"how": "eof"})
            return None
        emit("RECEIVED", {"kind": message.KIND.name})
        if message.KIND is MessageKind.ERROR:
            emit("CLIENT_ERROR", {"code": message.code, "reason": message.reason,
                                  "fatal": message.fatal})
        return message

    def finish() -> None:
        send(Finish(weights=tuple(model.weights), reason="the evil server is done"))
        while receive() is not None:  # bounded by the deadline: until the client hangs up
            pass

    try:
        hello = receive()
        send(Welcome(client_id=hello.client_name, rounds=1, run_name="evil secagg",
                     run_id=uuid.uuid4().hex, model=model.describe(),
                     spec_hash=spec_hash(model.spec()),
                     config={"spec": spec_to_json(model.spec()), "compression": "none",
                             "secure_aggregation": True}))
        peers = {i: ClientSecAgg(1, i, 3, threshold, 32, 8.0) for i in (2, 3)}
        send(SecAggSetup(round=1, index=1, participants=3, threshold=threshold, modulus_bits=32,
                         clipping_range=8.0, max_weight=1000.0))
        keys = receive()
        if keys.KIND is not MessageKind.SECAGG_KEYS:
            return finish()
        table = {1: (bytes.fromhex(keys.encryption_key), bytes.fromhex(keys.mask_key))}
        table.update({i: p.keys()[:2] for i, p in peers.items()})
        announced = dict(table)
        if mode == "peers-own-keys-replaced":
            announced[1] = ClientSecAgg(1, 1, 3, threshold, 32, 8.0).keys()[:2]
        elif mode == "peers-repeated-key":
            announced[3] = announced[2]
        entries = [[i, e.hex(), m.hex()] for i, (e, m) in sorted(announced.items())]
        if mode == "peers-bad-hex":
            entries[1][1] = "xy" * 32
        send(SecAggPeers(round=1, peers=entries))
        shares = receive()
        if shares is None or shares.KIND is not MessageKind.SECAGG_SHARES:
            return finish() if shares is not None else None
        to_client = {i: p.share(table)[1] for i, p in peers.items()}
        send(Fit(round=1, weights=tuple(model.weights),
                 config={"epochs": 1, "secagg": {"round": 1, "peers": [1, 2, 3],
                                                 "vector": "weights"}}))
        masked = receive()
        if masked.KIND is not MessageKind.SECAGG_MASKED:
            return finish()
        send(_unmask(mode, 1, to_client))
        reveal = receive()
        if reveal.KIND is MessageKind.SECAGG_REVEAL:
            emit("REVEALED", {"owners": reveal.owners})
            if mode == "unmask-twice":
                send(_unmask("unmask-both-shares", 1, to_client))
                second = receive()
                if second.KIND is MessageKind.SECAGG_REVEAL:
                    emit("REVEALED", {"owners": second.owners})
        finish()
    except (ConnectionError, OSError) as exc:
        emit("CLOSED", {"how": type(exc).__name__})
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# server and client: secagg_roles', with failures as one line instead of a traceback
# ---------------------------------------------------------------------------------------------


def server(args) -> None:
    # The server's warnings (who left the secure round, and why) go to its output.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    try:
        secagg_roles.server(args)
    except PyFedError as exc:
        print(f"FAILED {exc}", flush=True)
        sys.exit(1)


def client(args) -> None:
    args.die_at_fit = False
    try:
        secagg_roles.client(args)
    except PyFedError as exc:
        print(f"CLIENT_FAILED {exc}", flush=True)
        sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client", "evil-client", "evil-server"])
    secagg_roles.federation_arguments(parser, required=False)
    parser.add_argument("--modes", default="")
    parser.add_argument("--first-index", type=int, default=4)
    parser.add_argument("--mode", choices=sorted(EVIL_SERVER_MODES), default="honest")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    {"server": server, "client": client, "evil-client": evil_client,
     "evil-server": evil_server}[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
