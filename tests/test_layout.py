"""pyfed.wire.layout and compression.wire_layout: what a FIT_RESULT must carry, known from the
model spec, checked on the header. No sockets (the transport and the server use it in
test_transport.py and test_hostile.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pyfed.wire import compression, protocol
from pyfed.wire.layout import LayoutMismatch
from pyfed.wire.messages import FitResult
from pyfed.wire.spec import spec_of_arrays
from wire_helpers import wire_nbytes

MODEL = [np.ones((64, 10), "<f4"), np.ones(10, "<f4"), np.arange(3, dtype="<i8"),
         np.ones((2, 3), "<f8"), np.ones((), "<f4")]
SPEC = spec_of_arrays(MODEL)


def header_of(arrays) -> tuple[list, int]:
    """(descriptors, body length) of a FIT_RESULT carrying ``arrays``, as the receiver sees them."""
    frame = protocol.encode_bytes(FitResult(round=1, weights=tuple(arrays)))
    prefix = protocol.parse_prefix(frame[:protocol.PREFIX_SIZE], protocol.FrameLimits())
    end = protocol.PREFIX_SIZE + prefix.header_length
    _, descriptors = protocol.decode_header(prefix, frame[protocol.PREFIX_SIZE:end])
    return descriptors, prefix.body_length


@pytest.mark.parametrize("codec", compression.CODECS)
def test_what_each_codec_sends_matches_its_layout(codec):
    reference = [a * 0.5 for a in MODEL]
    wire, _ = compression.ErrorFeedback().encode(codec, MODEL, reference if codec == "int8" else None)
    layout = compression.wire_layout(codec, SPEC)
    descriptors, body_length = header_of(wire)
    layout.check("FIT_RESULT", descriptors, body_length)  # passes
    assert layout.body_nbytes == body_length == wire_nbytes(wire)


def test_compressed_layouts_are_smaller_and_int8_adds_its_scales():
    sizes = {codec: compression.wire_layout(codec, SPEC).body_nbytes for codec in compression.CODECS}
    assert sizes["int8"] < sizes["fp16"] < sizes["none"]
    int8 = compression.wire_layout("int8", SPEC)
    assert len(int8.slots) == len(SPEC) + 1
    assert int8.slots[-1].shape == (4,)  # one scale per float tensor (4 of the 5)
    assert int8.slots[2].dtypes == {"<i8"}  # integers travel as they are


def _mismatch(arrays, codec="none") -> str:
    descriptors, body_length = header_of(arrays)
    with pytest.raises(LayoutMismatch) as info:
        compression.wire_layout(codec, SPEC).check("FIT_RESULT", descriptors, body_length)
    return str(info.value)


def test_a_different_shape_dtype_or_count_is_named():
    assert "tensor 0 (weight_0) has shape [63, 10]; expected shape [64, 10]" in _mismatch(
        [MODEL[0][:-1]] + MODEL[1:])
    assert "tensor 1 (weight_1) has dtype <f8; expected dtype <f4" in _mismatch(
        [MODEL[0], MODEL[1].astype("<f8")] + MODEL[2:])
    assert "carries 6 arrays; expected 5 arrays" in _mismatch(MODEL + [np.zeros(1 << 20, "|u1")])
    assert "carries 1 array; expected 5 arrays" in _mismatch(MODEL[:1])
    assert "expected dtype <f2 or >f2" in _mismatch(MODEL, codec="fp16")  # raw float32 in fp16


def test_padding_between_the_arrays_is_refused():
    """The right arrays spread out with gaps would make the receiver allocate the gaps."""
    descriptors, body_length = header_of(MODEL)
    spread = [dict(d, offset=d["offset"] + index * (1 << 20)) for index, d in enumerate(descriptors)]
    with pytest.raises(LayoutMismatch, match="body is .* bytes; its arrays take"):
        compression.wire_layout("none", SPEC).check("FIT_RESULT", spread,
                                                    body_length + 4 * (1 << 20))
