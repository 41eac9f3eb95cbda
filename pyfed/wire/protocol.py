"""The PyFed wire format, sans-I/O: typed messages <-> frames. No sockets, no TensorFlow.

A frame is a 20-byte prefix ``struct "!4sBBHIQ"`` (magic, version, kind, flags, header length,
body length), a UTF-8 JSON header, then a body of raw array bytes. The header holds the message's
scalar fields and one descriptor per array: ``{"dtype": "<f4", "shape": [...], "offset": n,
"nbytes": n}``, each array starting at a 64-byte aligned offset in the body.

Everything a peer sends is checked before it is trusted: lengths against caps *before* any
buffer is allocated, dtypes against an allow-list (never object), shapes/offsets/sizes against
each other and against the body, and every header field's type and range (:mod:`pyfed.wire.limits`).
Nothing is ever unpickled.

The legal order of messages lives in one transition table (:data:`TRANSITIONS`), as in h11;
:class:`Conversation` enforces it for one side of one connection.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import struct
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import limits
from ..errors import InvalidValue, ProtocolError
from ..safe_text import printable
from .messages import (  # noqa: F401  (re-exported: protocol is the one import users need)
    MESSAGE_TYPES, VERSION, Auth, Challenge, Error, Evaluate, EvaluateResult, Finish, Fit,
    FitResult, Hello, Message, MessageKind, Ping, Welcome)

MAGIC = b"PYFD"
PREFIX = struct.Struct("!4sBBHIQ")
PREFIX_SIZE = PREFIX.size  # 20
ALIGNMENT = 64
MAX_HEADER_BYTES = 1 << 20
HANDSHAKE_MAX_HEADER_BYTES = 64 << 10
DEFAULT_MAX_MESSAGE_BYTES = 4 << 30
MAX_ARRAYS = 100_000
MAX_NDIM = 32

# Only plain numeric kinds in every byte order: never object, void, structured or datetime.
ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "|u1"]
    + [f"{order}{kind}{size}" for order in "<>" for kind in "iu" for size in (2, 4, 8)]
    + [f"{order}f{size}" for order in "<>" for size in (2, 4, 8)]
)




# ---------------------------------------------------------------------------------------------
# Limits and the prefix
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameLimits:
    """Caps checked against a frame's declared lengths before anything is allocated."""

    max_header_bytes: int = MAX_HEADER_BYTES
    max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


# Before the handshake completes a peer is a stranger: small header, no body at all.
HANDSHAKE_LIMITS = FrameLimits(max_header_bytes=HANDSHAKE_MAX_HEADER_BYTES, max_body_bytes=0)


@dataclass(frozen=True)
class FramePrefix:
    kind: MessageKind
    flags: int
    header_length: int
    body_length: int


def parse_prefix(data: bytes | bytearray | memoryview, limits: FrameLimits) -> FramePrefix:
    """Validate the fixed 20-byte prefix. Raises :class:`ProtocolError` on anything off."""
    if len(data) != PREFIX_SIZE:
        raise ProtocolError(f"frame prefix must be {PREFIX_SIZE} bytes; received {len(data)}")
    magic, version, kind, flags, header_length, body_length = PREFIX.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r}; expected {MAGIC!r} (is this a PyFed peer?)")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version}; this peer speaks {VERSION}")
    try:
        kind = MessageKind(kind)
    except ValueError:
        raise ProtocolError(f"unknown message kind {kind}") from None
    if flags != 0:
        raise ProtocolError(f"unsupported frame flags {flags:#x}; expected 0")
    if header_length < 2 or header_length > limits.max_header_bytes:
        raise ProtocolError(
            f"{kind.name} header length {header_length} outside [2, {limits.max_header_bytes}]")
    if body_length > limits.max_body_bytes:
        raise ProtocolError(
            f"{kind.name} body length {body_length} exceeds the limit of {limits.max_body_bytes} bytes")
    return FramePrefix(kind, flags, header_length, body_length)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _aligned(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


_PADDING = bytes(ALIGNMENT)


def _as_wire_array(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if not array.flags.c_contiguous:  # copy only when we must (ascontiguousarray would also turn 0-d into 1-d)
        array = np.ascontiguousarray(array).reshape(array.shape)
    if array.dtype.str not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"dtype {array.dtype} cannot be sent; allowed: bool, int, uint and float kinds")
    return array


def encode(message: Message) -> list:
    """Return the frame as a list of buffers (prefix+header, then array views and padding).

    The arrays are not copied or concatenated: the transport hands this list to ``sendmsg``.
    """
    header_fields = {}
    arrays: list[np.ndarray] = []
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if f.name == message.ARRAY_FIELD:
            arrays = [_as_wire_array(a) for a in value]
        elif value is not None or f.name not in message.EXTENSION_FIELDS:
            header_fields[f.name] = value
    descriptors = []
    buffers: list = [b""]
    offset = 0
    for array in arrays:
        start = _aligned(offset)
        if start > offset:
            buffers.append(_PADDING[: start - offset])
        descriptors.append(
            {"dtype": array.dtype.str, "shape": list(array.shape), "offset": start,
             "nbytes": array.nbytes})
        if array.nbytes:
            buffers.append(memoryview(array).cast("B"))
        offset = start + array.nbytes
    header = json.dumps({"fields": header_fields, "arrays": descriptors},
                        separators=(",", ":")).encode("utf-8")
    buffers[0] = PREFIX.pack(MAGIC, VERSION, message.KIND, 0, len(header), offset) + header
    return buffers


def encode_bytes(message: Message) -> bytes:
    """The whole frame as one ``bytes`` (tests and small messages; copies the arrays)."""
    return b"".join(bytes(b) for b in encode(message))


def frame_nbytes(buffers: list) -> int:
    return sum(memoryview(b).nbytes for b in buffers)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _type_check(kind: MessageKind, name: str, value: Any, annotation: Any) -> None:
    """A field of the wrong type is an InvalidValue: the frame is intact, only its value is
    refused."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
    else:
        options = (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return
        if option is bool and isinstance(value, bool):
            return
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if option in (str, dict, list) and isinstance(value, option):
            return
    allowed = tuple(getattr(o, "__name__", str(o)) for o in options)
    raise InvalidValue(
        f"{kind.name} field {name!r} must be {' or '.join(allowed)}; received {type(value).__name__}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type[Message]) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def decode_header(prefix: FramePrefix, header: bytes | bytearray | memoryview) -> tuple[dict, list]:
    """Parse and validate the JSON header against the message schema and the declared body.

    Returns ``(fields, array_descriptors)``. Called before the body is received, so a hostile
    header can never make us allocate or read more than its (already capped) body length.

    A malformed frame raises :class:`ProtocolError`. A well-formed one whose field has the
    wrong type, or a value outside its range or shape (:mod:`pyfed.wire.limits`), raises its
    subclass :class:`InvalidValue`: checked last, so the frame is known to be intact and the
    receiver may refuse just this message.
    """
    kind = prefix.kind
    try:
        parsed = json.loads(bytes(header).decode("utf-8"), parse_int=limits.int_parser())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting -> RecursionError
        raise ProtocolError(f"{kind.name} header is not valid UTF-8 JSON: "
                            f"{printable(exc)}") from None
    if not isinstance(parsed, dict) or set(parsed) != {"fields", "arrays"}:
        raise ProtocolError(f"{kind.name} header must be an object with 'fields' and 'arrays'")
    fields, descriptors = parsed["fields"], parsed["arrays"]
    if not isinstance(fields, dict) or not isinstance(descriptors, list):
        raise ProtocolError(f"{kind.name} header 'fields' must be an object and 'arrays' a list")

    cls = MESSAGE_TYPES[kind]
    hints = _hints(cls)
    expected = {f.name: f for f in dataclasses.fields(cls) if f.name != cls.ARRAY_FIELD}
    unknown = set(fields) - set(expected)
    if unknown:
        raise ProtocolError(f"{kind.name} has unexpected fields {printable(sorted(unknown))}")
    missing = [name for name, f in expected.items() if name not in fields
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ProtocolError(f"{kind.name} is missing required field {missing[0]!r}")
    if cls.ARRAY_FIELD is None and descriptors:
        raise ProtocolError(f"{kind.name} carries no arrays; received {len(descriptors)}")
    _validate_descriptors(kind, descriptors, prefix.body_length)

    for name in expected:
        if name in fields:
            _type_check(kind, name, fields[name], hints[name])
    limits.check_fields(kind.name, fields)
    return fields, descriptors


def _validate_descriptors(kind: MessageKind, descriptors: list, body_length: int) -> None:
    if len(descriptors) > MAX_ARRAYS:
        raise ProtocolError(f"{kind.name} declares {len(descriptors)} arrays; at most {MAX_ARRAYS}")
    end = 0
    for index, d in enumerate(descriptors):
        where = f"{kind.name} array {index}"
        if not isinstance(d, dict) or set(d) != {"dtype", "shape", "offset", "nbytes"}:
            raise ProtocolError(f"{where}: descriptor must have exactly dtype, shape, offset, nbytes")
        dtype, shape, offset, nbytes = d["dtype"], d["shape"], d["offset"], d["nbytes"]
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"{where}: dtype {printable(repr(dtype), 80)} is not allowed; "
                                "expected bool, int, uint or float")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ProtocolError(f"{where}: shape {printable(repr(shape), 80)} must be a list of "
                                f"at most {MAX_NDIM} non-negative integers")
        for label, value in (("offset", offset), ("nbytes", nbytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ProtocolError(f"{where}: {label} {printable(repr(value), 80)} must be a "
                                    "non-negative integer")
        # numpy's own rule: the non-zero dimensions times the item size must fit in intp, even
        # for an empty array (a shape like [0, 10**30] would otherwise pass the nbytes check).
        if math.prod(s for s in shape if s) * int(dtype[2:]) > np.iinfo(np.intp).max:
            raise ProtocolError(f"{where}: shape {shape} is too large for an array")
        expected_nbytes = math.prod(shape) * int(dtype[2:])
        if nbytes != expected_nbytes:
            raise ProtocolError(
                f"{where}: nbytes {nbytes} does not match shape {shape} of {dtype} ({expected_nbytes})")
        if offset % ALIGNMENT:
            raise ProtocolError(f"{where}: offset {offset} is not {ALIGNMENT}-byte aligned")
        if offset < end:
            raise ProtocolError(f"{where}: offset {offset} overlaps the previous array (ends at {end})")
        end = offset + nbytes
        if end > body_length:
            raise ProtocolError(
                f"{where}: bytes [{offset}, {end}) lie outside the body of {body_length} bytes")
    if end != body_length:
        raise ProtocolError(f"{kind.name}: body is {body_length} bytes but the arrays end at {end}")


def decode_body(prefix: FramePrefix, fields: dict, descriptors: list,
                body: bytes | bytearray | memoryview) -> Message:
    """Build the message; arrays are zero-copy ``np.frombuffer`` views of ``body``."""
    if len(body) != prefix.body_length:
        raise ProtocolError(
            f"{prefix.kind.name} body is {len(body)} bytes; the prefix declared {prefix.body_length}")
    cls = MESSAGE_TYPES[prefix.kind]
    values = dict(fields)
    if cls.ARRAY_FIELD is not None:
        arrays = []
        for d in descriptors:
            dtype = np.dtype(d["dtype"])
            count = d["nbytes"] // dtype.itemsize
            if count == 0:
                arrays.append(np.empty(d["shape"], dtype=dtype))
            else:
                arrays.append(np.frombuffer(body, dtype=dtype, count=count,
                                            offset=d["offset"]).reshape(d["shape"]))
        values[cls.ARRAY_FIELD] = tuple(arrays)
    return cls(**values)


def decode_without_body(prefix: FramePrefix, fields: dict) -> Message:
    """The message with its arrays left out, for a body that was read and thrown away (a result
    too late to count): the conversation still sees the message and moves on."""
    cls = MESSAGE_TYPES[prefix.kind]
    values = dict(fields)
    if cls.ARRAY_FIELD is not None:
        values[cls.ARRAY_FIELD] = ()
    return cls(**values)


def decode(data: bytes | bytearray | memoryview, limits: FrameLimits = FrameLimits()) -> Message:
    """Decode one whole frame held in memory. The only exception it raises is ProtocolError."""
    view = memoryview(data)
    if len(view) < PREFIX_SIZE:
        raise ProtocolError(f"truncated frame: {len(view)} bytes, the prefix alone is {PREFIX_SIZE}")
    prefix = parse_prefix(view[:PREFIX_SIZE], limits)
    header_end = PREFIX_SIZE + prefix.header_length
    total = header_end + prefix.body_length
    if len(view) != total:
        raise ProtocolError(
            f"{prefix.kind.name} frame is {len(view)} bytes; its prefix declares {total}")
    fields, descriptors = decode_header(prefix, view[PREFIX_SIZE:header_end])
    return decode_body(prefix, fields, descriptors, view[header_end:])


# ---------------------------------------------------------------------------------------------
# The conversation's state table (h11-style, no I/O)
# ---------------------------------------------------------------------------------------------


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
}
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
            if not message.fatal and self.state in (State.READY, State.FITTING, State.EVALUATING):
                if sender is Role.CLIENT:
                    self.state = State.READY
                return
            self.state = State.CLOSED
            return
        next_state = TRANSITIONS.get((self.state, sender, kind))
        if next_state is None:
            raise self._illegal(sender, kind, verb)
        self.state = next_state
