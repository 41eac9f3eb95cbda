"""A PyFed frame's fixed parts: the 20-byte prefix, the caps, the allowed dtypes.

A frame is a 20-byte prefix ``struct "!4sBBHIQ"`` (magic, version, kind, flags, header length,
body length), a UTF-8 JSON header, then a body of raw array bytes. The prefix is checked here
against the caps *before* any buffer is allocated (:func:`parse_prefix`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ProtocolError
from .messages import VERSION, MessageKind

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
