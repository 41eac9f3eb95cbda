"""Typed messages -> frames, without copying the arrays (the transport hands the buffer list
to ``sendmsg``). Each array starts at a 64-byte aligned offset in the body."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from ..errors import ProtocolError
from .frame import ALIGNMENT, ALLOWED_DTYPES, MAGIC, PREFIX
from .messages import VERSION, Message


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
