"""The arrays a message must carry, known from the model spec: checked on the frame's header,
before a byte of its body is read or a buffer allocated for it.

A peer's header is a claim. The receiver compares it with what it expects (the model's tensors
as they travel under the run's codec, see :func:`pyfed.wire.compression.wire_layout`) and refuses a
mismatch at once, so no body is ever sized by what the peer says: a result with an extra 512 MiB
array costs the server the header it read, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProtocolError
from .protocol import ALIGNMENT


class LayoutMismatch(ProtocolError):
    """A frame's arrays are not the ones expected; refused before its body is read."""


@dataclass(frozen=True)
class ArraySlot:
    """One expected array: its shape and the dtypes (``"<f4"``...) it may travel as."""

    label: str
    shape: tuple
    dtypes: frozenset

    @property
    def nbytes(self) -> int:
        size = int(next(iter(self.dtypes))[2:])  # every allowed dtype has the same item size
        for dim in self.shape:
            size *= int(dim)
        return size


@dataclass(frozen=True)
class Layout:
    """The arrays of one message, in order, each at the protocol's aligned offset."""

    slots: tuple

    @property
    def body_nbytes(self) -> int:
        """The exact body length a matching frame declares (the largest buffer it needs)."""
        end = 0
        for slot in self.slots:
            end = (end + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT + slot.nbytes
        return end

    def check(self, what: str, descriptors: list, body_length: int) -> None:
        """Raise :class:`LayoutMismatch` naming the first difference. ``descriptors`` were
        already validated against each other and the body by ``protocol.decode_header``."""
        if len(descriptors) != len(self.slots):
            raise LayoutMismatch(f"{what} carries {_arrays(len(descriptors))}; expected "
                                 f"{_arrays(len(self.slots))}: "
                                 f"{', '.join(s.label for s in self.slots)}")
        for slot, d in zip(self.slots, descriptors):
            if tuple(d["shape"]) != tuple(slot.shape):
                raise LayoutMismatch(f"{what} {slot.label} has shape {list(d['shape'])}; "
                                     f"expected shape {list(slot.shape)}")
            if d["dtype"] not in slot.dtypes:
                raise LayoutMismatch(f"{what} {slot.label} has dtype {d['dtype']}; expected dtype "
                                     f"{' or '.join(sorted(slot.dtypes))}")
        # Same arrays, so only padding between them could make the body longer: refuse that too.
        if body_length != self.body_nbytes:
            raise LayoutMismatch(f"{what} body is {body_length} bytes; its arrays take "
                                 f"{self.body_nbytes}")


def _arrays(count: int) -> str:
    return f"{count} array" if count == 1 else f"{count} arrays"
