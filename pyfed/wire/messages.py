"""The typed messages PyFed peers exchange. Frozen dataclasses; arrays travel in the body.

Scalar fields go to the frame's JSON header and are type-checked on decode against these
annotations, then range- and shape-checked by :mod:`pyfed.wire.limits`; the one field named by
``ARRAY_FIELD`` travels as raw arrays in the body.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

VERSION = 1


class MessageKind(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    FIT = 5
    FIT_RESULT = 6
    EVALUATE = 7
    EVALUATE_RESULT = 8
    FINISH = 9
    ERROR = 10
    PING = 11
    # Secure aggregation (pyfed.privacy.SecureAggregation): the stages of one secure round.
    SECAGG_SETUP = 12
    SECAGG_KEYS = 13
    SECAGG_PEERS = 14
    SECAGG_SHARES = 15
    SECAGG_MASKED = 16
    SECAGG_UNMASK = 17
    SECAGG_REVEAL = 18
    # Stored, never sent: one serverless node's update in a shared folder
    # (pyfed.serverless.frames). It has no entry in the socket state table, so a NODE_UPDATE
    # arriving on a connection is a ProtocolError in every state.
    NODE_UPDATE = 0x20


Weights = tuple  # tuple[np.ndarray, ...]; a tuple so frozen messages stay hashable-ish and immutable


@dataclass(frozen=True)
class Message:
    KIND: ClassVar[MessageKind]
    # Name of the field that carries arrays in the body (None: header only).
    ARRAY_FIELD: ClassVar[str | None] = None
    # Fields added to version 1 after its first release: left out of the header while None,
    # so a peer that predates them (or implements only the first field list) still reads
    # every message that does not use them.
    EXTENSION_FIELDS: ClassVar[frozenset] = frozenset()


@dataclass(frozen=True)
class Hello(Message):
    """Client -> server: who I am, which protocol I speak, and (optionally) my model's spec hash."""

    KIND: ClassVar[MessageKind] = MessageKind.HELLO
    EXTENSION_FIELDS: ClassVar[frozenset] = frozenset({"reconnect_secret"})
    client_name: str
    protocol_version: int = VERSION
    spec_hash: str | None = None
    nonce: str | None = None
    evaluates: bool = False  # the client holds out data for federated evaluation
    # With spec_hash: the client's own model spec, so a mismatch can name the first difference.
    spec: list | None = None
    # The secret an earlier WELCOME gave this client: only it lets a reconnection take over
    # the name from a connection the server still thinks is alive.
    reconnect_secret: str | None = None


@dataclass(frozen=True)
class Challenge(Message):
    """Server -> client: prove you hold the token (and here is my proof that I do)."""

    KIND: ClassVar[MessageKind] = MessageKind.CHALLENGE
    nonce: str
    proof: str


@dataclass(frozen=True)
class Auth(Message):
    """Client -> server: the answer to the server's challenge."""

    KIND: ClassVar[MessageKind] = MessageKind.AUTH
    proof: str


@dataclass(frozen=True)
class Welcome(Message):
    """Server -> client: accepted; the run's shape, the model to build and the training config."""

    KIND: ClassVar[MessageKind] = MessageKind.WELCOME
    EXTENSION_FIELDS: ClassVar[frozenset] = frozenset({"reconnect_secret"})
    client_id: str
    rounds: int
    run_name: str
    run_id: str
    model: dict = field(default_factory=dict)
    spec_hash: str = ""
    config: dict = field(default_factory=dict)
    # Present it in HELLO when reconnecting; anyone else claiming this name is refused.
    reconnect_secret: str | None = None


@dataclass(frozen=True)
class Fit(Message):
    """Server -> client: train these global weights for this round."""

    KIND: ClassVar[MessageKind] = MessageKind.FIT
    ARRAY_FIELD: ClassVar[str | None] = "weights"
    round: int
    weights: Weights = ()
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult(Message):
    """Client -> server: trained weights, how many examples they saw, and per-epoch history."""

    KIND: ClassVar[MessageKind] = MessageKind.FIT_RESULT
    ARRAY_FIELD: ClassVar[str | None] = "weights"
    round: int
    weights: Weights = ()
    num_examples: int = 0
    metrics: dict = field(default_factory=dict)
    # Per-epoch training curves {"loss": [..], "accuracy": [..]} starting at global epoch
    # ``first_epoch``; the server writes them to TensorBoard for clients on other machines.
    history: dict = field(default_factory=dict)
    first_epoch: int = 0


@dataclass(frozen=True)
class Evaluate(Message):
    KIND: ClassVar[MessageKind] = MessageKind.EVALUATE
    ARRAY_FIELD: ClassVar[str | None] = "weights"
    round: int
    weights: Weights = ()
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateResult(Message):
    KIND: ClassVar[MessageKind] = MessageKind.EVALUATE_RESULT
    round: int
    num_examples: int
    loss: float
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Finish(Message):
    """Server -> client: training is over; these are the final global weights."""

    KIND: ClassVar[MessageKind] = MessageKind.FINISH
    ARRAY_FIELD: ClassVar[str | None] = "weights"
    weights: Weights = ()
    reason: str = "completed"


@dataclass(frozen=True)
class Error(Message):
    """Either side: something was wrong. ``fatal`` closes the conversation."""

    KIND: ClassVar[MessageKind] = MessageKind.ERROR
    reason: str
    code: str = "error"
    fatal: bool = True


@dataclass(frozen=True)
class Ping(Message):
    KIND: ClassVar[MessageKind] = MessageKind.PING


@dataclass(frozen=True)
class NodeUpdate(Message):
    """A serverless node's update, stored as one file in a shared folder (never sent on a
    connection). ``checksum`` is the sha256 hex of the frame's body, so a torn or altered file
    is refused; ``spec_hash`` names the model the weights belong to."""

    KIND: ClassVar[MessageKind] = MessageKind.NODE_UPDATE
    ARRAY_FIELD: ClassVar[str | None] = "weights"
    node: str
    epoch: int
    num_examples: int
    metrics: dict = field(default_factory=dict)
    spec_hash: str = ""
    checksum: str = ""
    weights: Weights = ()


# Secure aggregation (Bonawitz et al. 2017): the server relays keys and encrypted shares and
# sums masked vectors; it never holds one client's update. Keys, commitments, ciphertexts and
# shares travel as hex strings in the header (each is under 200 bytes); the masked vector, as
# large as the model, travels in the body. See pyfed.server.secure_round for the order.


@dataclass(frozen=True)
class SecAggSetup(Message):
    """Server -> client: you take part in this secure round as ``index`` of ``participants``;
    any ``threshold`` of them can unmask. Answer with fresh public keys."""

    KIND: ClassVar[MessageKind] = MessageKind.SECAGG_SETUP
    round: int
    index: int
    participants: int
    threshold: int
    modulus_bits: int
    clipping_range: float
    max_weight: float


@dataclass(frozen=True)
class SecAggKeys(Message):
    """Client -> server: X25519 public keys (share encryption, pairwise masks) and sha256 of the
    self-mask seed, which binds the seed the survivors will later rebuild."""

    KIND: ClassVar[MessageKind] = MessageKind.SECAGG_KEYS
    round: int
    encryption_key: str
    mask_key: str
    seed_commitment: str


@dataclass(frozen=True)
class SecAggPeers(Message):
    """Server -> client: every participant's public keys, ``[[index, encryption, mask], ...]``."""

    KIND: ClassVar[MessageKind] = MessageKind.SECAGG_PEERS
    round: int
    peers: list


@dataclass(frozen=True)
class SecAggShares(Message):
    """Client -> server: its Shamir shares, each encrypted to one peer (``recipients[i]`` gets
    ``ciphertexts[i]``); the server only relays them."""

    KIND: ClassVar[MessageKind] = MessageKind.SECAGG_SHARES
    round: int
    recipients: list
    ciphertexts: list


@dataclass(frozen=True)
class SecAggMasked(Message):
    """Client -> server: the answer to a secure round's FIT, its update quantized into the ring
    and masked (one array, uniform on the ring to anyone without the masks)."""

    KIND: ClassVar[MessageKind] = MessageKind.SECAGG_MASKED
    ARRAY_FIELD: ClassVar[str | None] = "vector"
    round: int
    vector: Weights = ()
    metrics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    first_epoch: int = 0


@dataclass(frozen=True)
class SecAggUnmask(Message):
    """Server -> survivor: who sent a masked vector (``survivors``), who shared but did not
    (``dropped``), and the ciphertexts addressed to this client (``senders[i]`` sent
    ``ciphertexts[i]``)."""

    KIND: ClassVar[MessageKind] = MessageKind.SECAGG_UNMASK
    round: int
    survivors: list
    dropped: list
    senders: list
    ciphertexts: list


@dataclass(frozen=True)
class SecAggReveal(Message):
    """Client -> server: one share per owner: a survivor's self-mask seed share, a dropped
    client's mask-key share; never both for one owner."""

    KIND: ClassVar[MessageKind] = MessageKind.SECAGG_REVEAL
    round: int
    owners: list
    shares: list


MESSAGE_TYPES: dict[MessageKind, type[Message]] = {
    cls.KIND: cls
    for cls in (Hello, Challenge, Auth, Welcome, Fit, FitResult, Evaluate, EvaluateResult,
                Finish, Error, Ping, NodeUpdate, SecAggSetup, SecAggKeys, SecAggPeers,
                SecAggShares, SecAggMasked, SecAggUnmask, SecAggReveal)
}
