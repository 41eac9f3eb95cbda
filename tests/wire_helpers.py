"""Sizes and round trips the tests measure the wire with (the package itself never needs them)."""

import numpy as np

from pyfed.wire.compression import decode, encode
from pyfed.wire.protocol import ALIGNMENT
from pyfed.wire.spec import spec_of_arrays


def frame_nbytes(buffers: list) -> int:
    """Bytes of an encoded frame (``protocol.encode``'s buffers)."""
    return sum(memoryview(b).nbytes for b in buffers)


def wire_nbytes(arrays) -> int:
    """Body bytes these arrays take in a frame, counting the protocol's 64-byte alignment."""
    end = 0
    for array in arrays:
        end = (end + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT + np.asarray(array).nbytes
    return end


def apply_roundtrip(codec, arrays, reference=None) -> list:
    """What a peer decodes from ``encode(codec, arrays, reference)``, bit for bit."""
    wire, meta = encode(codec, arrays, reference)
    return decode(codec, wire, meta, spec_of_arrays(arrays), reference)
