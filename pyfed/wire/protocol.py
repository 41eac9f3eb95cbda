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

This module is the one import its users need; each part lives in a module of its own:
:mod:`~pyfed.wire.frame` (the prefix and the caps), :mod:`~pyfed.wire.encoding`,
:mod:`~pyfed.wire.decoding` and :mod:`~pyfed.wire.conversation` (the state table).
"""

from __future__ import annotations

from ..errors import InvalidValue, ProtocolError
from .conversation import TRANSITIONS, Conversation, Role, State
from .decoding import decode, decode_body, decode_header, decode_without_body
from .encoding import encode, encode_bytes
from .frame import (ALIGNMENT, ALLOWED_DTYPES, DEFAULT_MAX_MESSAGE_BYTES, HANDSHAKE_LIMITS,
                    HANDSHAKE_MAX_HEADER_BYTES, MAGIC, MAX_ARRAYS, MAX_HEADER_BYTES, MAX_NDIM,
                    PREFIX, PREFIX_SIZE, FrameLimits, FramePrefix, parse_prefix)
from .messages import (MESSAGE_TYPES, VERSION, Auth, Challenge, Error, Evaluate, EvaluateResult,
                       Finish, Fit, FitResult, Hello, Message, MessageKind, NodeUpdate, Ping,
                       Welcome)

__all__ = [
    "ALIGNMENT", "ALLOWED_DTYPES", "DEFAULT_MAX_MESSAGE_BYTES", "HANDSHAKE_LIMITS",
    "HANDSHAKE_MAX_HEADER_BYTES", "MAGIC", "MAX_ARRAYS", "MAX_HEADER_BYTES", "MAX_NDIM",
    "MESSAGE_TYPES", "PREFIX", "PREFIX_SIZE", "TRANSITIONS", "VERSION",
    "Auth", "Challenge", "Conversation", "Error", "Evaluate", "EvaluateResult", "Finish", "Fit",
    "FitResult", "FrameLimits", "FramePrefix", "Hello", "InvalidValue", "Message", "MessageKind",
    "NodeUpdate", "Ping", "ProtocolError", "Role", "State", "Welcome",
    "decode", "decode_body", "decode_header", "decode_without_body", "encode", "encode_bytes",
    "parse_prefix",
]
