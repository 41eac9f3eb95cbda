"""The client's side of a secure round (the server's is :mod:`pyfed.server.secure_round`).

The server is trusted to follow the protocol but not to be nosy (honest-but-curious, as in
Flower): everything it sends is still checked, and a request that would make this client
reveal more than the protocol allows (both shares of one peer, a reveal with fewer survivors
than the threshold, keys that are not the ones it agreed) is refused with a non-fatal ERROR
that names the problem. The client then drops the round's secrets and stays connected; the
server excludes it from that round.
"""

from __future__ import annotations

import logging

from ..errors import PyFedError
from ..privacy.secagg import vector as secure_vector
from ..safe_text import printable
from ..wire import messages

logger = logging.getLogger("pyfed")


class SecureRoundRefused(PyFedError):
    """This client will not take the step the server asked for (the reason says why)."""


class SecureParticipation:
    """The secrets of the secure round in progress (at most one), and the replies built from
    them. ``who`` names the client in messages."""

    def __init__(self, who: str, rounds: int) -> None:
        self.who = who
        self.rounds = rounds
        self.round: int | None = None
        self.protocol = None
        self.setup: messages.SecAggSetup | None = None

    def _current(self, server_round: int, step: str):
        if self.protocol is None or server_round != self.round:
            raise SecureRoundRefused(
                f"{step} for round {server_round}, but this client is in no secure round "
                f"{'' if self.round is None else f'(its secure round is {self.round})'}".rstrip())
        return self.protocol

    def forget(self) -> None:
        self.round = self.protocol = self.setup = None

    # -- the four replies -----------------------------------------------------------------

    def keys(self, setup: messages.SecAggSetup) -> messages.SecAggKeys:
        """Fresh keys for a new secure round (any earlier round's secrets are dropped)."""
        self.forget()
        if not 1 <= setup.round <= self.rounds:
            raise SecureRoundRefused(f"SECAGG_SETUP is for round {setup.round}; this run has "
                                     f"rounds 1 to {self.rounds}")
        if not (1 <= setup.index <= setup.participants and 2 <= setup.threshold
                <= setup.participants):
            raise SecureRoundRefused(
                f"SECAGG_SETUP gives index {setup.index}, threshold {setup.threshold} of "
                f"{setup.participants} participants; expected 1 <= index <= participants and "
                "2 <= threshold <= participants")
        if not (0 < setup.clipping_range and 0 < setup.max_weight):
            raise SecureRoundRefused("SECAGG_SETUP's clipping_range and max_weight must be > 0")
        from ..privacy.secagg.protocol import ClientSecAgg  # cryptography: only when used
        self.protocol = ClientSecAgg(setup.round, setup.index, setup.participants,
                                     setup.threshold, setup.modulus_bits, setup.clipping_range)
        self.round, self.setup = setup.round, setup
        encryption, mask, commitment = self.protocol.keys()
        return messages.SecAggKeys(round=setup.round, encryption_key=encryption.hex(),
                                   mask_key=mask.hex(), seed_commitment=commitment.hex())

    def shares(self, peers: messages.SecAggPeers) -> messages.SecAggShares:
        protocol = self._current(peers.round, "SECAGG_PEERS")
        table = {}
        for index, encryption, mask in peers.peers:
            if index in table:
                raise SecureRoundRefused(f"SECAGG_PEERS lists index {index} twice")
            table[index] = (bytes.fromhex(encryption), bytes.fromhex(mask))
        ciphertexts = protocol.share(table)
        recipients = sorted(ciphertexts)
        return messages.SecAggShares(round=peers.round, recipients=recipients,
                                     ciphertexts=[ciphertexts[r].hex() for r in recipients])

    def masked(self, fit: messages.Fit, request: dict, trained: list, reference: list,
               outcome) -> messages.SecAggMasked:
        """The trained model's vector (pyfed.privacy.secagg.vector), quantized and masked."""
        protocol = self._current(fit.round, "a secure FIT")
        setup = self.setup
        vector = secure_vector.encode(trained, reference, int(outcome.num_examples), request,
                                      setup.clipping_range, setup.max_weight)
        ring = protocol.masked(vector, list(request["peers"]))
        return messages.SecAggMasked(round=fit.round, vector=(ring,), metrics=outcome.metrics,
                                     history=outcome.history, first_epoch=outcome.first_epoch)

    def reveal(self, unmask: messages.SecAggUnmask) -> messages.SecAggReveal:
        protocol = self._current(unmask.round, "SECAGG_UNMASK")
        if len(unmask.senders) != len(unmask.ciphertexts):
            raise SecureRoundRefused("SECAGG_UNMASK's senders and ciphertexts must pair up")
        incoming = {s: bytes.fromhex(c) for s, c in zip(unmask.senders, unmask.ciphertexts)}
        try:
            shares = protocol.reveal(list(unmask.survivors), list(unmask.dropped), incoming)
        finally:
            self.forget()  # never a second reveal from these secrets
        owners = sorted(shares)
        return messages.SecAggReveal(round=unmask.round, owners=owners,
                                     shares=[shares[o].hex() for o in owners])

    def refusal(self, problem: Exception) -> messages.Error:
        """The non-fatal ERROR that tells the server why this step was refused."""
        self.forget()
        reason = f"secure aggregation step refused: {printable(problem)}"
        logger.warning("%s: %s", self.who, reason)
        return messages.Error(reason=reason, code="secagg_refused", fatal=False)


def secure_request(config: dict, what: str) -> dict | None:
    """The FIT config's ``secagg`` entry, checked; None for an ordinary FIT."""
    request = config.get("secagg")
    return None if request is None else secure_vector.check_request(request, what)
