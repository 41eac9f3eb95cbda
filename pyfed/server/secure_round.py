"""One secure-aggregation round on the server (SecAgg, Bonawitz et al. 2017), in four stages.

Each stage is a request to every client still in the round and a reply collected to the
stage's deadline, on the same sessions, jobs and collectors as FIT::

    1. SECAGG_SETUP  -> SECAGG_KEYS     fresh X25519 public keys and a self-mask commitment (U1)
    2. SECAGG_PEERS  -> SECAGG_SHARES   everyone's keys out; encrypted Shamir shares back (U2)
    3. FIT           -> SECAGG_MASKED   train, then the update quantized and masked (U3)
    4. SECAGG_UNMASK -> SECAGG_REVEAL   who survived and who dropped; their shares (U4)

The server relays and sums; the arithmetic and its checks are
:class:`~pyfed.privacy.secagg.protocol.ServerSecAgg`'s. A client whose reply is malformed is
excluded with the reason (it is told, as a rejected update is) and the round goes on without
it; a stage left with fewer than the threshold fails the round, which the usual retry rule runs
again, with fresh keys. What reaches the strategy is one sum, through ``add_secure_sum``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..deadline import Deadline
from ..errors import RoundError, UpdateRejected
from ..privacy.secagg import vector as secure_vector
from ..safe_text import printable
from ..wire import messages
from ..wire.layout import ArraySlot, Layout
from .collect import Collector
from .session import RequestJob

logger = logging.getLogger("pyfed")


@dataclass
class SecureOutcome:
    """What a secure round reports to the round driver (the FitCollector's counterpart)."""

    started: float
    answered: list = field(default_factory=list)
    failures: dict = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0


def largest_upload(strategy, model_nbytes: int, spec) -> int:
    """The largest body a client may send: the model's, or under SecureAggregation a masked
    vector (the model's values, the weight and one extra, each a ring element), if larger."""
    if not getattr(strategy, "secure", False):
        return model_nbytes
    values = sum(int(np.prod(t.shape, dtype=np.int64)) for t in spec) + 2
    return max(model_nbytes, values * (4 if strategy.modulus_bits <= 32 else 8))


def masked_layout(length: int, modulus_bits: int) -> Layout:
    """A SECAGG_MASKED body: one vector of ``length`` ring elements. Checked on the header, so
    a wrong length, dtype or array count is refused (naming it) before any body is read."""
    dtype = np.dtype(np.uint32 if modulus_bits <= 32 else np.uint64).str  # ring_dtype's
    return Layout((ArraySlot("the masked vector", (length,), frozenset({dtype})),))


class StageCollector(Collector):
    """One stage's replies: each is handed to ``accept(client, reply)`` under the collector's
    lock as it arrives; ``accept`` raises UpdateRejected to exclude that client."""

    def __init__(self, server_round: int, expected: set[str], kind: str, accept,
                 report=None) -> None:
        super().__init__(server_round, expected)
        self.kind = kind
        self._accept = accept
        self._report = report  # run outside the lock for an accepted reply (callbacks)

    def add(self, client: str, reply, scan=None) -> None:
        with self._cond:
            self._check_expected(client, reply.round)
            try:
                self._accept(client, reply)
            except UpdateRejected as exc:
                self.failures[client] = f"{self.kind} rejected: {exc}"
                self._cond.notify_all()
                raise
            self.answered.append(client)
            self._reporting += 1
            self._cond.notify_all()
        try:
            if self._report is not None:
                self._report(client, reply)
        finally:
            with self._cond:
                self._reporting -= 1
                self._cond.notify_all()


class SecureRound:
    """Runs the four stages for ``plan`` ({name: fit config}) and gives the strategy the sum."""

    def __init__(self, driver, server_round: int, parameters: list, plan: dict,
                 sessions: dict, timeout: float | None) -> None:
        self.driver = driver
        self.server = driver.server
        self.strategy = self.server.strategy
        self.server_round = server_round
        self.parameters = parameters
        self.plan = plan
        self.sessions = sessions
        self.timeout = self.strategy.timeout if self.strategy.timeout is not None else timeout
        # Index i (1..n) is the i-th participant by name: Shamir's x and the mask's sign.
        self.index = {name: i for i, name in enumerate(sorted(plan), start=1)}
        self.name_of = {i: name for name, i in self.index.items()}
        self.outcome = SecureOutcome(started=time.monotonic())
        self.metrics: dict[str, dict] = {}
        self._lock = threading.Lock()

    def run(self) -> SecureOutcome:
        strategy, server_round = self.strategy, self.server_round
        participants = len(self.plan)
        if participants == 0 and getattr(strategy, "allows_empty_rounds", False):
            strategy.begin(server_round, self.parameters)  # e.g. DP: the round adds its noise
            return self.outcome
        if participants < 2:
            raise RoundError(f"round {server_round}: a secure round needs at least 2 clients "
                             f"(one client's sum is its update); {participants} sampled")
        request = strategy.secure_sum_request(server_round)
        layout = secure_vector.VectorLayout(self.parameters, request)
        self.threshold = threshold = strategy.threshold(participants)
        from ..privacy.secagg.protocol import ServerSecAgg  # cryptography: only when used
        self.protocol = ServerSecAgg(server_round, participants, threshold,
                                     strategy.modulus_bits, strategy.clipping_range,
                                     layout.length)
        strategy.begin(server_round, self.parameters)

        keyed = self._stage("secagg keys", set(self.plan), self._setup_message, self._accept_keys)
        self._require(keyed, threshold, "sent its keys")
        peers = [[i, enc.hex(), mask.hex()]
                 for i, (enc, mask) in sorted(self.protocol.peers().items())]
        shared = self._stage("secagg shares", keyed,
                             lambda name: messages.SecAggPeers(round=server_round, peers=peers),
                             self._accept_shares)
        self._require(shared, threshold, "shared its keys")
        sharers = self.protocol.sharers()
        fit_extra = {"round": server_round, "peers": sharers, **request}
        masked = self._stage("secure fit", shared, lambda name: self._fit_message(name, fit_extra),
                             lambda name, reply: self._accept_masked(name, reply, layout),
                             report=self._report_fit,
                             layouts={messages.MessageKind.SECAGG_MASKED: masked_layout(
                                 layout.length, strategy.modulus_bits)})
        self._require(masked, threshold, "sent its masked update")
        maskers = self.protocol.maskers()
        dropped = sorted(set(sharers) - set(maskers))
        revealed = self._stage("secagg reveal", masked,
                               lambda name: self._unmask_message(name, maskers, dropped),
                               self._accept_reveal)
        self._require(revealed, threshold, "revealed its shares")
        try:
            total = self.protocol.unmask()
        except Exception as exc:  # SecAggError; anything else is a bug: neither may apply
            raise RoundError(f"round {server_round} failed: unmasking could not be verified "
                             f"({printable(exc)})") from None
        for index in sorted(getattr(self.protocol, "bad_revealers", ()) or ()):
            logger.warning("round %d: %s revealed shares off the verified polynomial; "
                           "outvoted", server_round, self.name_of.get(index, index))
        weight, arrays, extras = layout.split(total, len(maskers), strategy.clipping_range)
        strategy.add_secure_sum(weight, arrays, len(maskers), extras,
                                metrics=[self.metrics[n] for n in sorted(self.metrics)])
        self.outcome.answered = sorted(self.name_of[i] for i in maskers)
        if dropped:
            self.server.warn(f"round {server_round}: recovered from {len(dropped)} dropped "
                             f"client{'' if len(dropped) == 1 else 's'}: "
                             f"{', '.join(self.name_of[i] for i in dropped)}")
        return self.outcome

    # -- one stage -------------------------------------------------------------------------

    def _stage(self, kind: str, names: set, message_for, accept, report=None,
               layouts=None) -> set:
        """Send ``message_for(name)`` to each of ``names``; the replies ``accept`` took.
        ``layouts``: the arrays a reply must carry, refused on its header otherwise."""
        collector = StageCollector(self.server_round, set(names), kind,
                                   accept=lambda name, reply: self._locked(accept, name, reply),
                                   report=report)
        collector.reply_layouts = layouts or {}
        collector.deadline = deadline = Deadline(self.timeout)
        for name in sorted(names):
            self.sessions[name].post(RequestJob(collector, message_for(name), deadline))
        self.driver.wait_for_answers(collector, deadline, kind)
        for client, reason in sorted(collector.failures.items()):
            logger.warning("round %d: %s left the secure round: %s", self.server_round, client,
                           reason)
            self.outcome.failures[client] = reason
        self.outcome.bytes_in += collector.bytes_in
        self.outcome.bytes_out += collector.bytes_out
        return set(collector.answered)

    def _locked(self, accept, name, reply) -> None:
        """The protocol object is not thread-safe: one reply at a time; its errors exclude
        the client that sent the reply."""
        with self._lock:
            try:
                accept(name, reply)
            except UpdateRejected:
                raise
            except Exception as exc:  # SecAggError, or a value the protocol refused
                raise UpdateRejected(printable(exc)) from None

    def _require(self, answered: set, threshold: int, did: str) -> None:
        if len(answered) < threshold:
            raise RoundError(
                f"round {self.server_round} failed: only {len(answered)} of {len(self.plan)} "
                f"clients {did}; secure aggregation needs {threshold} "
                f"(reconstruction_threshold) to unmask the sum")

    # -- the messages ---------------------------------------------------------------------

    def _setup_message(self, name: str) -> messages.SecAggSetup:
        strategy = self.strategy
        return messages.SecAggSetup(
            round=self.server_round, index=self.index[name], participants=len(self.plan),
            threshold=self.threshold, modulus_bits=strategy.modulus_bits,
            clipping_range=strategy.clipping_range, max_weight=strategy.max_weight)

    def _fit_message(self, name: str, secagg: dict) -> messages.Fit:
        config = {**self.plan[name], "secagg": secagg}
        return messages.Fit(round=self.server_round, weights=tuple(self.parameters), config=config)

    def _unmask_message(self, name: str, maskers: list, dropped: list) -> messages.SecAggUnmask:
        incoming = self.protocol.ciphertexts_for(self.index[name])
        senders = sorted(incoming)
        return messages.SecAggUnmask(round=self.server_round, survivors=list(maskers),
                                     dropped=list(dropped), senders=senders,
                                     ciphertexts=[incoming[s].hex() for s in senders])

    # -- the replies (each under self._lock) ----------------------------------------------

    def _accept_keys(self, name: str, reply) -> None:
        if not isinstance(reply, messages.SecAggKeys):
            raise UpdateRejected(f"expected SECAGG_KEYS, received {reply.KIND.name}")
        self.protocol.add_keys(self.index[name], bytes.fromhex(reply.encryption_key),
                               bytes.fromhex(reply.mask_key), bytes.fromhex(reply.seed_commitment))

    def _accept_shares(self, name: str, reply) -> None:
        if not isinstance(reply, messages.SecAggShares):
            raise UpdateRejected(f"expected SECAGG_SHARES, received {reply.KIND.name}")
        if len(reply.recipients) != len(reply.ciphertexts) or \
                len(set(reply.recipients)) != len(reply.recipients):
            raise UpdateRejected("recipients and ciphertexts must pair up, one per peer")
        self.protocol.add_shares(self.index[name], {
            r: bytes.fromhex(c) for r, c in zip(reply.recipients, reply.ciphertexts)})

    def _accept_masked(self, name: str, reply, layout) -> None:
        if not isinstance(reply, messages.SecAggMasked):
            raise UpdateRejected(f"a secure round's FIT must be answered with SECAGG_MASKED; "
                                 f"received {reply.KIND.name}")
        if len(reply.vector) != 1:
            raise UpdateRejected(f"a masked update is one array; received {len(reply.vector)}")
        self.protocol.add_masked(self.index[name], np.asarray(reply.vector[0]))
        self.metrics[name] = dict(reply.metrics)

    def _report_fit(self, name: str, reply) -> None:
        """The callbacks of an accepted masked update: its size stays hidden (0 examples)."""
        server = self.server
        server.callbacks.on_fit_result(server, self.server_round, name, 0, dict(reply.metrics))
        if reply.history:
            server.callbacks.on_client_history(server, self.server_round, name, reply.history,
                                               reply.first_epoch)

    def _accept_reveal(self, name: str, reply) -> None:
        if not isinstance(reply, messages.SecAggReveal):
            raise UpdateRejected(f"expected SECAGG_REVEAL, received {reply.KIND.name}")
        if len(reply.owners) != len(reply.shares) or len(set(reply.owners)) != len(reply.owners):
            raise UpdateRejected("owners and shares must pair up, one per owner")
        self.protocol.add_reveal(self.index[name], {
            o: bytes.fromhex(s) for o, s in zip(reply.owners, reply.shares)})
