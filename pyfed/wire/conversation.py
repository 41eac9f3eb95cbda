"""The legal order of messages: one transition table (:data:`TRANSITIONS`), as in h11, and
:class:`Conversation`, which enforces it for one side of one connection. No I/O."""

from __future__ import annotations

import enum

from ..errors import InvalidValue, ProtocolError
from .messages import Message, MessageKind


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> "Role":
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class State(enum.Enum):
    START = "start"
    HELLO_SENT = "hello sent"
    CHALLENGED = "challenged"
    AUTH_SENT = "auth sent"
    READY = "ready"
    FITTING = "fitting"
    EVALUATING = "evaluating"
    SECAGG_KEYING = "secagg keying"
    SECAGG_SHARING = "secagg sharing"
    SECAGG_REVEALING = "secagg revealing"
    CLOSED = "closed"


K = MessageKind
# (state, who sends, kind) -> next state. Both ends of a connection walk the same table.
TRANSITIONS: dict[tuple[State, Role, MessageKind], State] = {
    (State.START, Role.CLIENT, K.HELLO): State.HELLO_SENT,
    (State.HELLO_SENT, Role.SERVER, K.CHALLENGE): State.CHALLENGED,
    (State.HELLO_SENT, Role.SERVER, K.WELCOME): State.READY,
    (State.CHALLENGED, Role.CLIENT, K.AUTH): State.AUTH_SENT,
    (State.AUTH_SENT, Role.SERVER, K.WELCOME): State.READY,
    (State.READY, Role.SERVER, K.FIT): State.FITTING,
    (State.FITTING, Role.CLIENT, K.FIT_RESULT): State.READY,
    (State.READY, Role.SERVER, K.EVALUATE): State.EVALUATING,
    (State.EVALUATING, Role.CLIENT, K.EVALUATE_RESULT): State.READY,
    (State.READY, Role.SERVER, K.FINISH): State.CLOSED,
    # A secure round (pyfed.server.secure_round): three more request/reply pairs around FIT,
    # whose reply is then a masked vector instead of weights.
    (State.READY, Role.SERVER, K.SECAGG_SETUP): State.SECAGG_KEYING,
    (State.SECAGG_KEYING, Role.CLIENT, K.SECAGG_KEYS): State.READY,
    (State.READY, Role.SERVER, K.SECAGG_PEERS): State.SECAGG_SHARING,
    (State.SECAGG_SHARING, Role.CLIENT, K.SECAGG_SHARES): State.READY,
    (State.FITTING, Role.CLIENT, K.SECAGG_MASKED): State.READY,
    (State.READY, Role.SERVER, K.SECAGG_UNMASK): State.SECAGG_REVEALING,
    (State.SECAGG_REVEALING, Role.CLIENT, K.SECAGG_REVEAL): State.READY,
}
# States in which the server waits for the client's reply: a non-fatal ERROR from the client
# ("I can't do that") answers the request and returns the conversation to READY.
_AWAITING_REPLY = frozenset({State.FITTING, State.EVALUATING, State.SECAGG_KEYING,
                             State.SECAGG_SHARING, State.SECAGG_REVEALING})
_LIVE_STATES = frozenset(State) - {State.CLOSED}


class Conversation:
    """One side's view of one connection: checks every sent and received message is legal."""

    def __init__(self, role: Role):
        self.role = role
        self.state = State.START

    def send(self, message: Message) -> None:
        self._advance(self.role, message, "send")

    def receive(self, message: Message) -> None:
        self._advance(self.role.peer, message, "receive")

    def refuse(self, kind: MessageKind, problem: InvalidValue) -> None:
        """A ``kind`` message arrived whose values ``problem`` refuses. Where the table allows
        the message, the conversation moves on as if it had been received (the receiver
        answers with a non-fatal ERROR); otherwise this raises the table's ProtocolError. An
        ERROR or PING with a bad value leaves nothing to keep: a plain ProtocolError."""
        if kind in (K.ERROR, K.PING) or self.state not in _LIVE_STATES:
            raise ProtocolError(str(problem))
        next_state = TRANSITIONS.get((self.state, self.role.peer, kind))
        if next_state is None:
            raise self._illegal(self.role.peer, kind, "receive")
        self.state = next_state

    def check(self, kind: MessageKind) -> None:
        """Raise ProtocolError if the peer may not send ``kind`` now, without changing state.

        The transport calls this on a frame's prefix, so an unasked-for message (a FIT_RESULT
        while READY) is refused before any byte of its header or body is read or allocated."""
        if not self._always_legal(kind) and (self.state, self.role.peer, kind) not in TRANSITIONS:
            raise self._illegal(self.role.peer, kind, "receive")

    def _always_legal(self, kind: MessageKind) -> bool:
        """PING and ERROR may come at any point of a live conversation (PING not before HELLO)."""
        return self.state in _LIVE_STATES and (
            kind is K.ERROR or (kind is K.PING and self.state is not State.START))

    def _illegal(self, sender: Role, kind: MessageKind, verb: str) -> ProtocolError:
        action = (f"received {kind.name} from the {sender.value}" if verb == "receive"
                  else f"tried to send {kind.name}")
        allowed = sorted(k.name for (s, r, k) in TRANSITIONS if s is self.state and r is sender)
        return ProtocolError(
            f"{self.role.value} {action} in state {self.state.name}; "
            f"expected one of {allowed or ['nothing']} (or PING/ERROR)")

    def _advance(self, sender: Role, message: Message, verb: str) -> None:
        kind = message.KIND
        if self.state in _LIVE_STATES and kind is K.PING and self.state is not State.START:
            return
        if self.state in _LIVE_STATES and kind is K.ERROR:
            # A non-fatal ERROR (e.g. "your update was rejected") leaves the conversation usable.
            if not message.fatal and (self.state is State.READY or self.state in _AWAITING_REPLY):
                if sender is Role.CLIENT:
                    self.state = State.READY
                return
            self.state = State.CLOSED
            return
        next_state = TRANSITIONS.get((self.state, sender, kind))
        if next_state is None:
            raise self._illegal(sender, kind, verb)
        self.state = next_state
