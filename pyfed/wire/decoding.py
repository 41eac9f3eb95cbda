"""Frames -> typed messages. Everything a peer sends is checked before it is trusted.

Dtypes against an allow-list (never object), shapes/offsets/sizes against each other and
against the body, and every header field's type and range (:mod:`pyfed.wire.limits`). The
header is decoded before the body is received, so a hostile header can never make the receiver
allocate more than its (already capped) body length. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

import numpy as np

from . import limits
from ..errors import InvalidValue, ProtocolError
from ..safe_text import printable
from .frame import (ALIGNMENT, ALLOWED_DTYPES, MAX_ARRAYS, MAX_NDIM, PREFIX_SIZE, FrameLimits,
                    FramePrefix, parse_prefix)
from .messages import MESSAGE_TYPES, Message, MessageKind


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
