"""A serverless node's stored update: one frame of PyFed's wire format, never a pickle.

A file in a shared folder is as untrusted as a frame from a socket: anyone who can write to the
folder can put anything there. So a stored update is a ``NODE_UPDATE`` frame (a JSON header and
raw arrays, see :mod:`pyfed.wire.protocol`) decoded with the same checks as a frame from the
network, plus what a file needs on top:

- a ``checksum`` (sha256 of the body) in the header, so a torn or altered file is refused;
- the model's ``spec_hash``, so a file from another model is refused by name;
- the arrays checked against the model's layout before they are looked at, and their values
  (finite, within +-1e18) before they are averaged.

Nothing is ever unpickled or imported: the bytes are parsed as a frame or refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from ..errors import ProtocolError, StoredUpdateError
from ..safe_text import path_component, printable
from ..wire import protocol
from ..wire.compression import wire_layout
from ..wire.messages import MessageKind, NodeUpdate
from ..wire.spec import TensorSpec
from ..wire.values import MAX_ABS_VALUE, first_bad_value

__all__ = ["UPDATES", "NodeUpdate", "decode_update", "encode_update", "parse_update_path",
           "update_path", "value_problem"]

#: The folder (relative to the shared folder) holding one subfolder of updates per node.
UPDATES = "updates"
# <epoch, at least 8 digits>-<first 16 hex digits of the spec hash>.pyfd: the name alone says
# which epoch and which model a file claims, so a reader picks files without opening them.
_NAME = re.compile(r"^(\d{8,})-([0-9a-f]{16})\.pyfd$")
SPEC_PREFIX = 16


def update_path(node: str, epoch: int, spec_hash: str) -> str:
    """``updates/<node>/<epoch:08d>-<spec_hash[:16]>.pyfd`` (the node name made one safe path
    component, see :func:`pyfed.safe_text.path_component`)."""
    return f"{UPDATES}/{path_component(node)}/{epoch:08d}-{spec_hash[:SPEC_PREFIX]}.pyfd"


def parse_update_path(path: str) -> tuple[str, int, str] | None:
    """``(node folder, epoch, spec hash prefix)`` of a path :func:`update_path` made, or None
    for any other file (a reader skips it without opening it)."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != UPDATES:
        return None
    match = _NAME.match(parts[2])
    if match is None:
        return None
    return parts[1], int(match.group(1)), match.group(2)


def _body_digest(buffers: list) -> str:
    digest = hashlib.sha256()
    for buffer in buffers[1:]:  # buffers[0] is the prefix and header
        digest.update(buffer)
    return digest.hexdigest()


def encode_update(update: NodeUpdate) -> bytes:
    """The update as one frame, its ``checksum`` set to the sha256 of the frame's body."""
    # The arrays are encoded without copying (the buffers are views), so encoding twice costs
    # one pass of hashing, not two copies.
    checksum = _body_digest(protocol.encode(dataclasses.replace(update, checksum="")))
    buffers = protocol.encode(dataclasses.replace(update, checksum=checksum))
    return b"".join(buffers)  # memoryviews join as they are


def decode_update(data: bytes, spec: list[TensorSpec], spec_hash: str) -> NodeUpdate:
    """The update ``data`` holds, if it is one for the model ``spec`` (whose hash is
    ``spec_hash``). Raises :class:`StoredUpdateError` saying what is wrong: not a PyFed frame,
    another kind of message, truncated, a checksum mismatch, another spec hash, arrays that
    are not the model's, or values that are not finite or beyond +-1e18.

    The arrays are read-only views of ``data``."""
    layout = wire_layout(None, spec)
    # Caps from the model: a header claiming a larger body is refused on its prefix.
    limits = protocol.FrameLimits(max_body_bytes=layout.body_nbytes)
    view = memoryview(data)
    if not protocol.MAGIC.startswith(bytes(view[:len(protocol.MAGIC)])):
        raise StoredUpdateError(f"not a PyFed frame (it starts with {bytes(view[:4])!r}, "
                                f"not {protocol.MAGIC!r})")
    if len(view) < protocol.PREFIX_SIZE:
        raise StoredUpdateError(f"truncated: {len(view)} bytes, shorter than a frame's "
                                f"{protocol.PREFIX_SIZE}-byte prefix")
    try:
        prefix = protocol.parse_prefix(view[:protocol.PREFIX_SIZE], limits)
    except ProtocolError as exc:
        raise StoredUpdateError(f"not a stored update of this model: {exc}") from None
    if prefix.kind is not MessageKind.NODE_UPDATE:
        raise StoredUpdateError(f"a {prefix.kind.name} frame, not a NODE_UPDATE")
    header_end = protocol.PREFIX_SIZE + prefix.header_length
    total = header_end + prefix.body_length
    if len(view) < total:
        raise StoredUpdateError(f"truncated: {len(view)} bytes of the {total} its prefix declares")
    if len(view) > total:
        raise StoredUpdateError(f"{len(view) - total} bytes after the frame's declared end")
    try:
        fields, descriptors = protocol.decode_header(prefix, view[protocol.PREFIX_SIZE:header_end])
    except ProtocolError as exc:
        raise StoredUpdateError(f"bad header: {exc}") from None
    # Before the layout: another model's file is its own case, said with both hashes.
    if fields.get("spec_hash") != spec_hash:
        raise StoredUpdateError(
            f"written for model spec {printable(fields.get('spec_hash'), 80)}; this node's "
            f"model spec is {spec_hash}")
    try:
        layout.check("stored update", descriptors, prefix.body_length)
    except ProtocolError as exc:
        raise StoredUpdateError(str(exc)) from None
    body = view[header_end:]
    checksum = hashlib.sha256(body).hexdigest()
    if fields.get("checksum") != checksum:
        raise StoredUpdateError(f"checksum mismatch: the header says "
                                f"{printable(fields.get('checksum'), 80)}, the body hashes to "
                                f"{checksum} (a torn or altered file)")
    if fields["num_examples"] < 1:
        raise StoredUpdateError("num_examples is 0; an update needs at least one example")
    update = protocol.decode_body(prefix, fields, descriptors, body)
    problem = value_problem(update.weights, spec)
    if problem:
        raise StoredUpdateError(problem)
    return update


def value_problem(weights, spec: list[TensorSpec]) -> str | None:
    """What is wrong with the values of ``weights`` (the first float tensor holding NaN, Inf
    or a value beyond +-1e18), or None: checked on every update read and on this node's own
    before it is published, as the server checks a client's."""
    for index, (array, tensor) in enumerate(zip(weights, spec)):
        if array.dtype.kind == "f" and array.size:
            bad = first_bad_value(array)
            if bad is not None:
                return (f"tensor {index} ({tensor.path or tensor.name}) contains "
                        f"{float(bad)!r}; every value must be finite and within "
                        f"+-{MAX_ABS_VALUE:g}")
    return None
