"""Tests of the sans-I/O wire format and state table (pyfed.wire.protocol): no sockets, no TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfed.wire import messages, protocol
from pyfed.errors import ProtocolError
from pyfed.wire.messages import (Auth, Challenge, Error, Evaluate, EvaluateResult, Finish, Fit,
                            FitResult, Hello, Message, MessageKind, NodeUpdate, Ping, Welcome)
from pyfed.wire.protocol import (ALIGNMENT, HANDSHAKE_LIMITS, MAGIC, MAX_HEADER_BYTES, PREFIX,
                            PREFIX_SIZE, VERSION, Conversation, FrameLimits, Role, State)
from wire_helpers import frame_nbytes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
K = MessageKind


# ---------------------------------------------------------------------------------------------
# Guards: this module must never touch the network
# ---------------------------------------------------------------------------------------------


class _NoSockets(socket.socket):
    def __init__(self, *args, **kwargs):
        raise AssertionError("test_protocol.py must not open sockets")


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch):
    monkeypatch.setattr(socket, "socket", _NoSockets)
    monkeypatch.setattr(socket, "create_connection", _NoSockets)


def test_protocol_does_not_import_tensorflow():
    code = ("import sys, pyfed.wire.protocol, pyfed.wire.messages, pyfed.errors\n"
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def assert_arrays_identical(decoded: np.ndarray, original: np.ndarray) -> None:
    original = np.asarray(original)
    assert decoded.dtype.str == original.dtype.str
    assert decoded.shape == original.shape
    # Bitwise: covers NaN, -0.0 and every integer extreme.
    assert np.ascontiguousarray(decoded).tobytes() == np.ascontiguousarray(original).tobytes()
    if original.dtype.kind != "f":
        assert np.array_equal(decoded, original)


def assert_messages_equal(decoded: Message, original: Message) -> None:
    assert type(decoded) is type(original)
    for f in dataclasses.fields(original):
        got, want = getattr(decoded, f.name), getattr(original, f.name)
        if f.name == original.ARRAY_FIELD:
            assert isinstance(got, tuple)
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert_arrays_identical(g, w)
        else:
            assert got == want, f.name
            assert type(got) is type(want), f.name


def header_of(frame: bytes) -> tuple[dict, int, int]:
    """(parsed header, header length, body length) of an encoded frame."""
    magic, version, kind, flags, header_length, body_length = PREFIX.unpack(frame[:PREFIX_SIZE])
    assert (magic, version, flags) == (MAGIC, VERSION, 0)
    header = json.loads(frame[PREFIX_SIZE:PREFIX_SIZE + header_length].decode("utf-8"))
    return header, header_length, body_length


def make_frame(kind, header, body: bytes = b"", *, magic=MAGIC, version=VERSION, flags=0,
               header_length=None, body_length=None) -> bytes:
    """A frame built by hand: ``header`` is a JSON-able object or raw bytes."""
    raw = header if isinstance(header, (bytes, bytearray)) else json.dumps(header).encode("utf-8")
    return (PREFIX.pack(magic, version, int(kind), flags,
                        len(raw) if header_length is None else header_length,
                        len(body) if body_length is None else body_length)
            + bytes(raw) + body)


def rng():
    return np.random.default_rng(12345)


SMALL_WEIGHTS = (
    np.arange(12, dtype="<f4").reshape(3, 4),
    np.array([-1, 0, 7], dtype="<i8"),
    np.array(2.5, dtype="<f8"),              # 0-d
    np.zeros((0,), dtype="<f4"),             # empty
    np.array([True, False, True], dtype="|b1"),
    np.arange(5, dtype=">u2"),               # big-endian survives
)

SAMPLES: list[Message] = [
    Hello(client_name="alice", protocol_version=VERSION, spec_hash="ab" * 32, nonce="n0nce"),
    Challenge(nonce="c" * 64, proof="p" * 64),
    Auth(proof="f" * 64),
    Welcome(client_id="client-7", rounds=5, run_name="mnist", run_id="2026-01-01T00:00:00",
            model={"class_name": "Sequential", "config": {"layers": [{"units": 10}]}},
            spec_hash="00ff", config={"epochs": 2, "lr": 0.01, "nested": [1, "two", None]}),
    Fit(round=3, weights=SMALL_WEIGHTS, config={"epochs": 1, "batch_size": 32}),
    FitResult(round=3, weights=SMALL_WEIGHTS, num_examples=600, metrics={"loss": 0.25},
              history={"loss": [1.5, 0.75], "accuracy": [0.5, 0.875]}, first_epoch=4),
    Evaluate(round=3, weights=SMALL_WEIGHTS, config={"batch_size": 64}),
    EvaluateResult(round=3, num_examples=100, loss=0.1, metrics={"accuracy": 0.9}),
    Finish(weights=SMALL_WEIGHTS, reason="completed"),
    Error(reason="update rejected: nan", code="rejected", fatal=False),
    Ping(),
    NodeUpdate(node="alice", epoch=7, num_examples=600, metrics={"loss": 0.25},
               spec_hash="ab" * 32, checksum="cd" * 32, weights=SMALL_WEIGHTS),
    messages.SecAggSetup(round=2, index=1, participants=3, threshold=2, modulus_bits=32,
                         clipping_range=8.0, max_weight=1000.0),
    messages.SecAggKeys(round=2, encryption_key="0a" * 32, mask_key="0b" * 32,
                        seed_commitment="0c" * 32),
    messages.SecAggPeers(round=2, peers=[[1, "0a" * 32, "0b" * 32], [2, "1a" * 32, "1b" * 32]]),
    messages.SecAggShares(round=2, recipients=[2, 3], ciphertexts=["ee" * 168, "ff" * 168]),
    messages.SecAggMasked(round=2, vector=(np.arange(7, dtype="<u4"),), metrics={"loss": 0.5},
                          history={"loss": [0.5]}, first_epoch=1),
    messages.SecAggUnmask(round=2, survivors=[1, 2], dropped=[3], senders=[2, 3],
                          ciphertexts=["ee" * 168, "ff" * 168]),
    messages.SecAggReveal(round=2, owners=[1, 2, 3], shares=["aa" * 66] * 3),
]


def test_samples_cover_every_message_type():
    assert {type(m) for m in SAMPLES} == set(protocol.MESSAGE_TYPES.values())
    assert {m.KIND for m in SAMPLES} == set(MessageKind)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.KIND.name)
def test_round_trip_every_message_type(message):
    frame = protocol.encode_bytes(message)
    assert PREFIX.unpack(frame[:PREFIX_SIZE])[2] == message.KIND
    decoded = protocol.decode(frame)
    assert_messages_equal(decoded, message)
    # bytes, bytearray and memoryview inputs all decode
    assert_messages_equal(protocol.decode(bytearray(frame)), message)
    assert_messages_equal(protocol.decode(memoryview(frame)), message)


@pytest.mark.parametrize("cls", [Fit, FitResult, Evaluate, Finish], ids=lambda c: c.__name__)
def test_round_trip_array_messages_without_arrays(cls):
    message = cls(round=1) if "round" in {f.name for f in dataclasses.fields(cls)} else cls()
    frame = protocol.encode_bytes(message)
    _, _, body_length = header_of(frame)
    assert body_length == 0
    assert_messages_equal(protocol.decode(frame), message)


def test_optional_fields_take_their_defaults_when_absent():
    decoded = protocol.decode(make_frame(K.FIT, {"fields": {"round": 1}, "arrays": []}))
    assert decoded == Fit(round=1)
    decoded = protocol.decode(make_frame(K.HELLO, {"fields": {"client_name": "x"}, "arrays": []}))
    assert decoded == Hello(client_name="x")


def test_float_field_accepts_a_json_integer():
    header = {"fields": {"round": 1, "num_examples": 2, "loss": 3}, "arrays": []}
    assert protocol.decode(make_frame(K.EVALUATE_RESULT, header)).loss == 3


def sample_array(dtype: str, shape: tuple, generator) -> np.ndarray:
    dt = np.dtype(dtype)
    n = math.prod(shape)
    if dt.kind == "b":
        values = generator.integers(0, 2, n).astype(bool)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        values = generator.integers(info.min, info.max, n, endpoint=True,
                                    dtype=dt.newbyteorder("="))
        values[: min(n, 2)] = [info.min, info.max][: min(n, 2)]
    else:
        values = generator.standard_normal(n) * 100
        specials = [np.inf, -np.inf, np.nan, -0.0]
        values[: min(n, 4)] = specials[: min(n, 4)]
    return values.astype(dt).reshape(shape)


SHAPES = [(), (0,), (3, 0, 2), (2, 3), (4, 5, 6), (1, 1, 1, 7)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", sorted(protocol.ALLOWED_DTYPES))
def test_array_round_trip_every_dtype_and_shape(dtype, shape):
    array = sample_array(dtype, shape, rng())
    frame = protocol.encode_bytes(Fit(round=0, weights=(array,)))
    (decoded,) = protocol.decode(frame).weights
    assert_arrays_identical(decoded, array)
    if array.size:
        frame_bytes = np.frombuffer(frame, dtype=np.uint8)
        assert decoded.base is not None
        assert np.shares_memory(decoded, frame_bytes), "decoded arrays must be views of the frame"


@pytest.mark.parametrize("dtype", sorted(protocol.ALLOWED_DTYPES))
def test_array_round_trip_non_contiguous_inputs(dtype):
    base = sample_array(dtype, (6, 4), rng())
    inputs = (base.T, base[::2, ::-1], np.asfortranarray(base), base[:, 1])
    assert not any(a.flags.c_contiguous for a in inputs[:2] + inputs[3:])
    frame = protocol.encode_bytes(Fit(round=0, weights=inputs))
    decoded = protocol.decode(frame).weights
    for got, want in zip(decoded, inputs, strict=True):
        assert got.flags.c_contiguous
        assert_arrays_identical(got, want)


def test_large_array_round_trip_is_zero_copy_on_decode():
    big = np.arange(8 << 20, dtype=np.float32)  # 32 MiB
    big[::1000] *= -1.5
    small = np.arange(3, dtype="<i4")
    frame = protocol.encode_bytes(Fit(round=9, weights=(small, big)))
    assert len(frame) > big.nbytes
    decoded = protocol.decode(frame)
    got_small, got_big = decoded.weights
    assert_arrays_identical(got_big, big)
    assert_arrays_identical(got_small, small)
    frame_bytes = np.frombuffer(frame, dtype=np.uint8)
    for array in decoded.weights:
        assert array.base is not None
        assert np.shares_memory(array, frame_bytes)


# ---------------------------------------------------------------------------------------------
# Layout: alignment, body length, zero-copy encode
# ---------------------------------------------------------------------------------------------


LAYOUT_WEIGHTS = (
    np.arange(3, dtype="|u1"),                 # 3 bytes: the next array needs padding
    np.arange(5, dtype="<f2"),
    np.array(7, dtype="<i8"),                  # 0-d
    np.zeros((2, 0), dtype="<f4"),             # empty in the middle
    np.arange(7, dtype=">i8"),
    np.ones((64,), dtype="|b1"),               # exactly one alignment unit
    np.arange(13, dtype="<f8"),
)


@pytest.mark.parametrize("weights", [LAYOUT_WEIGHTS, LAYOUT_WEIGHTS[::-1], LAYOUT_WEIGHTS[:1]],
                         ids=["forward", "reversed", "single"])
def test_array_offsets_are_aligned_and_body_ends_at_last_array(weights):
    frame = protocol.encode_bytes(FitResult(round=1, weights=weights, num_examples=1))
    header, header_length, body_length = header_of(frame)
    assert len(frame) == PREFIX_SIZE + header_length + body_length
    descriptors = header["arrays"]
    assert len(descriptors) == len(weights)
    body = frame[PREFIX_SIZE + header_length:]
    end = 0
    for d, array in zip(descriptors, weights):
        assert d["offset"] % ALIGNMENT == 0, d
        assert d["offset"] >= end
        assert d["dtype"] == array.dtype.str
        assert d["shape"] == list(array.shape)
        assert d["nbytes"] == array.nbytes
        assert body[end:d["offset"]] == bytes(d["offset"] - end), "padding must be zeros"
        assert body[d["offset"]:d["offset"] + d["nbytes"]] == array.tobytes()
        end = d["offset"] + d["nbytes"]
    assert body_length == end


def test_encode_returns_buffers_sharing_memory_with_the_arrays():
    big = np.arange(1 << 22, dtype=np.float32)  # 16 MiB
    small = np.arange(5, dtype=np.int16)
    message = Fit(round=1, weights=(small, big))
    buffers = protocol.encode(message)
    assert isinstance(buffers, list)
    # The first buffer is the prefix and the header only: nothing big was concatenated into it.
    assert len(buffers[0]) < 4096
    assert all(memoryview(b).nbytes < big.nbytes for b in buffers if
               not np.shares_memory(np.frombuffer(b, dtype=np.uint8), big))
    sharing = [b for b in buffers[1:] if memoryview(b).nbytes
               and np.shares_memory(np.frombuffer(b, dtype=np.uint8), big)]
    assert len(sharing) == 1
    assert memoryview(sharing[0]).nbytes == big.nbytes
    assert any(memoryview(b).nbytes and np.shares_memory(np.frombuffer(b, dtype=np.uint8), small)
               for b in buffers[1:])
    joined = b"".join(bytes(b) for b in buffers)
    assert frame_nbytes(buffers) == len(joined) == len(protocol.encode_bytes(message))
    assert_messages_equal(protocol.decode(joined), message)


@pytest.mark.parametrize("bad", [
    np.array([1 + 2j], dtype=np.complex64),
    np.array([object()], dtype=object),
    np.array(["abc"]),
    np.array([1], dtype="datetime64[s]"),
    np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]),
    np.zeros(2, dtype="V8"),
], ids=["complex", "object", "unicode", "datetime", "structured", "void"])
def test_encode_refuses_disallowed_dtypes(bad):
    with pytest.raises(ProtocolError):
        protocol.encode(Fit(round=1, weights=(bad,)))


# ---------------------------------------------------------------------------------------------
# Malformed frames: each one is a single change from a valid baseline
# ---------------------------------------------------------------------------------------------


def desc(dtype="<f4", shape=(4,), offset=0, nbytes=None):
    if nbytes is None:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return {"dtype": dtype, "shape": list(shape), "offset": offset, "nbytes": nbytes}


BASE_FIELDS = {"round": 1}
BASE_BODY = np.arange(4, dtype="<f4").tobytes()


def base_header(**changes) -> dict:
    header = {"fields": dict(BASE_FIELDS), "arrays": [desc()]}
    header.update(changes)
    return header


def test_malformed_baseline_is_valid():
    message = protocol.decode(make_frame(K.FIT, base_header(), BASE_BODY))
    assert message.round == 1
    assert_arrays_identical(message.weights[0], np.arange(4, dtype="<f4"))


def assert_protocol_error(frame, limits: FrameLimits = FrameLimits(), match: str | None = None):
    with pytest.raises(ProtocolError, match=match):
        protocol.decode(frame, limits)


def _truncation_frames():
    return {
        "fit": protocol.encode_bytes(Fit(round=1, weights=(np.arange(3, dtype="<f4"),
                                                           np.ones((2, 2), dtype="<i2")))),
        "hello": protocol.encode_bytes(Hello(client_name="bob", nonce="x")),
        "ping": protocol.encode_bytes(Ping()),
    }


@pytest.mark.parametrize("name", ["fit", "hello", "ping"])
def test_truncated_frames_at_every_position(name):
    frame = _truncation_frames()[name]
    protocol.decode(frame)  # the whole frame is fine
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError):
            protocol.decode(frame[:cut])


@pytest.mark.parametrize("name", ["fit", "hello", "ping"])
def test_trailing_bytes_after_a_frame(name):
    frame = _truncation_frames()[name]
    for extra in (b"\0", b"PYFD", bytes(64)):
        assert_protocol_error(frame + extra)


@pytest.mark.parametrize("magic", [b"PYFE", b"\0\0\0\0", b"GET ", b"pyfd"])
def test_bad_magic(magic):
    assert_protocol_error(make_frame(K.FIT, base_header(), BASE_BODY, magic=magic), match="magic")


@pytest.mark.parametrize("version", [0, VERSION + 1, 255])
def test_bad_version(version):
    assert_protocol_error(make_frame(K.FIT, base_header(), BASE_BODY, version=version),
                          match="version")


@pytest.mark.parametrize("kind", [0, max(MessageKind) + 1, 100, 255])
def test_unknown_kind(kind):
    assert_protocol_error(make_frame(kind, base_header(), BASE_BODY), match="kind")


@pytest.mark.parametrize("flags", [1, 2, 0x80, 0xFFFF])
def test_nonzero_flags(flags):
    assert_protocol_error(make_frame(K.FIT, base_header(), BASE_BODY, flags=flags), match="flags")


@pytest.mark.parametrize("header_length", [0, 1, MAX_HEADER_BYTES + 1, 2**32 - 1])
def test_header_length_outside_the_cap_is_rejected_by_the_prefix(header_length):
    prefix = PREFIX.pack(MAGIC, VERSION, K.HELLO, 0, header_length, 0)
    with pytest.raises(ProtocolError, match="header length"):
        protocol.parse_prefix(prefix, FrameLimits())
    assert_protocol_error(prefix)


def test_header_over_the_cap_rejected_even_when_all_bytes_are_present():
    hello = protocol.encode_bytes(Hello(client_name="x" * 2000))
    assert len(hello) > 2000
    assert_protocol_error(hello, FrameLimits(max_header_bytes=1000))
    assert protocol.decode(hello, FrameLimits(max_header_bytes=4000)).client_name == "x" * 2000


def test_body_over_the_limit_is_rejected():
    frame = make_frame(K.FIT, base_header(), BASE_BODY)
    protocol.decode(frame, FrameLimits(max_body_bytes=len(BASE_BODY)))  # exactly at the cap: ok
    assert_protocol_error(frame, FrameLimits(max_body_bytes=len(BASE_BODY) - 1), match="limit")


@pytest.mark.parametrize("body_length", [2**31, 2**60, 2**64 - 1])
def test_huge_declared_body_rejected_by_parse_prefix_before_allocation(body_length):
    prefix = PREFIX.pack(MAGIC, VERSION, K.FIT_RESULT, 0, 100, body_length)
    assert len(prefix) == PREFIX_SIZE == 20
    with pytest.raises(ProtocolError, match="limit"):
        protocol.parse_prefix(prefix, FrameLimits(max_body_bytes=1 << 20))
    with pytest.raises(ProtocolError):
        protocol.parse_prefix(prefix, HANDSHAKE_LIMITS)
    # The in-memory decoder never allocates either: only 20 bytes were ever given to it.
    assert_protocol_error(prefix, FrameLimits(max_body_bytes=1 << 20))


def test_parse_prefix_wants_exactly_twenty_bytes():
    prefix = PREFIX.pack(MAGIC, VERSION, K.PING, 0, 26, 0)
    assert protocol.parse_prefix(prefix, FrameLimits()).kind is K.PING
    for data in (prefix[:19], prefix + b"\0", b""):
        with pytest.raises(ProtocolError):
            protocol.parse_prefix(data, FrameLimits())


@pytest.mark.parametrize("raw", [
    b"{not json}", b"  ", b"{}", b'{"fields":{"round":1},"arrays":[]', b"nul", b"\0\0\0",
    b'{"fields":{"round":1},"arrays":[]}}', b'{"fields":{"round":01},"arrays":[]}',
], ids=lambda r: repr(r)[:30])
def test_header_not_json(raw):
    assert_protocol_error(make_frame(K.FIT, raw))


@pytest.mark.parametrize("raw", [
    b"\xff\xfe{}",
    b'{"fields":{"client_name":"\xc3\x28"},"arrays":[]}',
    b'{"fields":{"client_name":"\xed\xa0\x80"},"arrays":[]}',   # UTF-8-encoded surrogate
    '{"fields":{"client_name":"x"},"arrays":[]}'.encode("utf-16"),
], ids=["bom-garbage", "invalid-continuation", "encoded-surrogate", "utf16"])
def test_header_not_utf8(raw):
    assert_protocol_error(make_frame(K.HELLO, raw))


@pytest.mark.parametrize("depth", [100_000, 30_000])
def test_deeply_nested_header_json_is_a_protocol_error(depth):
    # Well inside the 1 MiB header cap (and the 64 KiB handshake cap for the smaller one);
    # json.loads raises RecursionError for this, which must not escape as anything else.
    raw = b"[" * depth + b"]" * depth
    assert len(raw) <= MAX_HEADER_BYTES
    assert_protocol_error(make_frame(K.PING, raw))
    if len(raw) <= protocol.HANDSHAKE_MAX_HEADER_BYTES:
        assert_protocol_error(make_frame(K.HELLO, raw), HANDSHAKE_LIMITS)
    nested = (b'{"fields":{"round":1,"config":' + b'{"a":' * depth + b"1" + b"}" * depth
              + b'},"arrays":[]}')
    assert_protocol_error(make_frame(K.FIT, nested))


@pytest.mark.parametrize("header", [
    [], "fields", 1, None, True,
    {"fields": {"round": 1}},
    {"arrays": []},
    {"fields": {"round": 1}, "arrays": [], "extra": 1},
    {"fields": [["round", 1]], "arrays": []},
    {"fields": {"round": 1}, "arrays": {}},
    {"fields": None, "arrays": []},
    {"fields": {"round": 1}, "arrays": None},
], ids=repr)
def test_header_wrong_top_level_shape(header):
    assert_protocol_error(make_frame(K.FIT, header))


@pytest.mark.parametrize("kind,fields", [
    (K.FIT, {"round": 1, "evil": 1}),
    (K.FIT, {"round": 1, "weights": []}),     # the array field never travels in the header
    (K.FIT, {"round": 1, "__class__": "os.system"}),
    (K.PING, {"x": None}),
    (K.HELLO, {"client_name": "a", "clientname": "a"}),
], ids=lambda v: repr(v)[:40])
def test_unknown_fields(kind, fields):
    assert_protocol_error(make_frame(kind, {"fields": fields, "arrays": []}), match="unexpected")


@pytest.mark.parametrize("kind,fields", [
    (K.FIT, {}),
    (K.FIT, {"config": {}}),
    (K.HELLO, {"nonce": "x"}),
    (K.WELCOME, {"client_id": "a", "rounds": 1, "run_name": "r"}),
    (K.EVALUATE_RESULT, {"round": 1, "num_examples": 1}),
    (K.ERROR, {"code": "x"}),
    (K.CHALLENGE, {"nonce": "x"}),
], ids=lambda v: repr(v)[:40])
def test_missing_required_field(kind, fields):
    assert_protocol_error(make_frame(kind, {"fields": fields, "arrays": []}), match="missing")


@pytest.mark.parametrize("kind,fields", [
    (K.FIT, {"round": "3"}),
    (K.FIT, {"round": True}),
    (K.FIT, {"round": False}),
    (K.FIT, {"round": 3.0}),
    (K.FIT, {"round": None}),
    (K.FIT, {"round": [3]}),
    (K.FIT, {"round": 1, "config": []}),
    (K.FIT, {"round": 1, "config": "epochs=1"}),
    (K.HELLO, {"client_name": 5}),
    (K.HELLO, {"client_name": None}),
    (K.HELLO, {"client_name": "a", "spec_hash": 5}),
    (K.HELLO, {"client_name": "a", "protocol_version": "1"}),
    (K.ERROR, {"reason": "x", "fatal": 1}),
    (K.ERROR, {"reason": "x", "fatal": "no"}),
    (K.EVALUATE_RESULT, {"round": 1, "num_examples": 1, "loss": "0.5"}),
    (K.EVALUATE_RESULT, {"round": 1, "num_examples": 1, "loss": True}),
    (K.EVALUATE_RESULT, {"round": 1, "num_examples": 1, "loss": None}),
    (K.WELCOME, {"client_id": "a", "rounds": 1, "run_name": "r", "run_id": "i", "model": []}),
], ids=lambda v: repr(v)[:50])
def test_field_of_the_wrong_type(kind, fields):
    assert_protocol_error(make_frame(kind, {"fields": fields, "arrays": []}), match="must be")


@pytest.mark.parametrize("dtype", [
    "|O", "O", "<O8", "object", "<c8", "<c16", ">c8", "|V8", "V4", "<U1", "|S4", "<M8[ns]",
    "<m8[s]", "[('a', '<i4')]", "float32", "f4", "=f4", "|f4", "<f16", "<i16", "<f4 ", "<b1",
    "", None, 4, ["<f4"], {"names": ["a"], "formats": ["<f4"]},
], ids=repr)
def test_disallowed_dtype(dtype):
    header = base_header(arrays=[desc()])
    header["arrays"][0]["dtype"] = dtype
    assert_protocol_error(make_frame(K.FIT, header, BASE_BODY), match="dtype")


@pytest.mark.parametrize("shape", [
    [-4], [-1, -4], [4.0], [1.5], ["4"], [True, 4], [None], [[4]], "4", 4, None, {"0": 4},
    [1] * (protocol.MAX_NDIM + 1),
], ids=repr)
def test_bad_shape(shape):
    header = base_header()
    header["arrays"][0]["shape"] = shape
    assert_protocol_error(make_frame(K.FIT, header, BASE_BODY), match="shape")


@pytest.mark.parametrize("shape", [[0, 10**30], [0, 2**62, 2**62], [2**63, 0], [0] + [2**40] * 3],
                         ids=repr)
def test_empty_array_with_absurd_dimensions(shape):
    # nbytes 0 matches any shape containing a 0; numpy cannot build such a shape, and the error
    # it raises (ValueError) must not escape decode.
    header = {"fields": BASE_FIELDS, "arrays": [desc(shape=shape, nbytes=0)]}
    assert_protocol_error(make_frame(K.FIT, header))


@pytest.mark.parametrize("nbytes", [15, 17, 0, 32, -16, "16", 16.0, True, None], ids=repr)
def test_nbytes_not_matching_shape(nbytes):
    header = base_header()
    header["arrays"][0]["nbytes"] = nbytes
    assert_protocol_error(make_frame(K.FIT, header, BASE_BODY), match="nbytes")


@pytest.mark.parametrize("offset", [1, 4, 32, 63], ids=repr)
def test_unaligned_offset(offset):
    header = base_header(arrays=[desc(offset=offset)])
    assert_protocol_error(make_frame(K.FIT, header, bytes(offset) + BASE_BODY), match="aligned")


@pytest.mark.parametrize("offset", [-64, "0", 0.0, None, True], ids=repr)
def test_offset_not_a_non_negative_integer(offset):
    header = base_header(arrays=[desc(offset=offset)])
    assert_protocol_error(make_frame(K.FIT, header, BASE_BODY), match="offset")


@pytest.mark.parametrize("offset,body", [(64, BASE_BODY), (64, bytes(70)), (2**70, BASE_BODY)],
                         ids=["past-end", "straddles-end", "huge"])
def test_offset_outside_the_body(offset, body):
    header = base_header(arrays=[desc(offset=offset)])
    assert_protocol_error(make_frame(K.FIT, header, body), match="outside")


def test_array_larger_than_the_body():
    header = base_header(arrays=[desc(shape=(8,))])
    assert_protocol_error(make_frame(K.FIT, header, BASE_BODY), match="outside")


@pytest.mark.parametrize("second_offset", [0, 64], ids=["same-offset", "inside-first"])
def test_overlapping_arrays(second_offset):
    first = desc(shape=(32,), offset=0)                # bytes [0, 128)
    second = desc(shape=(16,), offset=second_offset)   # would end inside or at 128
    header = base_header(arrays=[first, second])
    assert_protocol_error(make_frame(K.FIT, header, bytes(128)), match="overlap")


def test_arrays_out_of_order():
    header = base_header(arrays=[desc(offset=64), desc(offset=0)])
    assert_protocol_error(make_frame(K.FIT, header, bytes(80)))


@pytest.mark.parametrize("arrays,body", [
    ([desc()], BASE_BODY + bytes(1)),
    ([desc()], BASE_BODY + bytes(64)),
    ([], bytes(64)),
    ([desc(shape=(0,))], bytes(8)),
], ids=["one-extra", "padding-after", "no-arrays", "only-empty"])
def test_body_longer_than_the_arrays(arrays, body):
    assert_protocol_error(make_frame(K.FIT, base_header(arrays=arrays), body))


@pytest.mark.parametrize("kind,fields", [
    (K.HELLO, {"client_name": "a"}),
    (K.PING, {}),
    (K.ERROR, {"reason": "x"}),
    (K.EVALUATE_RESULT, {"round": 1, "num_examples": 1, "loss": 0.5}),
    (K.WELCOME, {"client_id": "a", "rounds": 1, "run_name": "r", "run_id": "i"}),
], ids=lambda v: getattr(v, "name", "fields"))
def test_arrays_on_a_kind_that_carries_none(kind, fields):
    header = {"fields": fields, "arrays": [desc()]}
    assert_protocol_error(make_frame(kind, header, BASE_BODY), match="carries no arrays")
    # ...even an empty descriptor list entry with no body
    header = {"fields": fields, "arrays": [desc(shape=(0,))]}
    assert_protocol_error(make_frame(kind, header))


@pytest.mark.parametrize("descriptor", [
    1, "x", None, [], {},
    {"dtype": "<f4", "shape": [4], "offset": 0},
    {"dtype": "<f4", "shape": [4], "offset": 0, "nbytes": 16, "extra": 0},
    {"dtype": "<f4", "shape": [4], "offset": 0, "nbytes": 16, "strides": [4]},
], ids=repr)
def test_malformed_descriptor(descriptor):
    header = base_header(arrays=[descriptor])
    assert_protocol_error(make_frame(K.FIT, header, BASE_BODY))


def test_too_many_arrays():
    raw = b'{"fields":{"round":1},"arrays":[' + b",".join([b"{}"] * (protocol.MAX_ARRAYS + 1)) + b"]}"
    assert len(raw) < MAX_HEADER_BYTES
    assert_protocol_error(make_frame(K.FIT, raw), match="arrays")


# ---------------------------------------------------------------------------------------------
# HANDSHAKE_LIMITS
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [
    (np.zeros(1, dtype="|u1"),),
    (np.zeros((2, 3), dtype="<f4"),),
    (np.array(1.0, dtype="<f8"),),
], ids=["1-byte", "2x3", "0-d"])
def test_handshake_limits_reject_any_body(weights):
    frame = protocol.encode_bytes(Fit(round=1, weights=weights))
    assert protocol.decode(frame).round == 1
    assert_protocol_error(frame, HANDSHAKE_LIMITS)
    with pytest.raises(ProtocolError):
        protocol.parse_prefix(frame[:PREFIX_SIZE], HANDSHAKE_LIMITS)


def test_handshake_limits_accept_handshake_messages_and_cap_the_header():
    for message in SAMPLES[:4]:  # HELLO, CHALLENGE, AUTH, WELCOME
        assert_messages_equal(protocol.decode(protocol.encode_bytes(message), HANDSHAKE_LIMITS),
                              message)
    big_hello = protocol.encode_bytes(Hello(client_name="x" * (protocol.HANDSHAKE_MAX_HEADER_BYTES)))
    assert protocol.decode(big_hello).client_name.startswith("x")
    assert_protocol_error(big_hello, HANDSHAKE_LIMITS, match="header length")


# ---------------------------------------------------------------------------------------------
# The conversation's state table
# ---------------------------------------------------------------------------------------------

C, S = Role.CLIENT, Role.SERVER
W = (np.ones(2, dtype="<f4"),)

PLAIN_PATH = [
    (C, Hello(client_name="c"), State.HELLO_SENT),
    (S, Welcome(client_id="1", rounds=1, run_name="r", run_id="i"), State.READY),
]
CHALLENGE_PATH = [
    (C, Hello(client_name="c", nonce="n"), State.HELLO_SENT),
    (S, Challenge(nonce="m", proof="p"), State.CHALLENGED),
    (C, Auth(proof="q"), State.AUTH_SENT),
    (S, Welcome(client_id="1", rounds=1, run_name="r", run_id="i"), State.READY),
]
ROUNDS = [
    (S, Fit(round=1, weights=W), State.FITTING),
    (C, FitResult(round=1, weights=W, num_examples=3), State.READY),
    (S, Evaluate(round=1, weights=W), State.EVALUATING),
    (C, EvaluateResult(round=1, num_examples=3, loss=0.5), State.READY),
    (S, Fit(round=2, weights=W), State.FITTING),
    (C, FitResult(round=2, weights=W, num_examples=3), State.READY),
    (S, Finish(weights=W), State.CLOSED),
]


def step(conversation: Conversation, sender: Role, message: Message) -> None:
    if sender is conversation.role:
        conversation.send(message)
    else:
        conversation.receive(message)


def walk(role: Role, steps) -> Conversation:
    conversation = Conversation(role)
    for sender, message, _ in steps:
        step(conversation, sender, message)
    return conversation


@pytest.mark.parametrize("path", [PLAIN_PATH, CHALLENGE_PATH], ids=["plain", "challenge"])
@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
def test_legal_full_conversation(role, path):
    conversation = Conversation(role)
    assert conversation.state is State.START
    for sender, message, expected in path + ROUNDS:
        step(conversation, sender, message)
        assert conversation.state is expected, (message.KIND.name, conversation.state)


def test_both_ends_walk_the_same_states():
    client, server = Conversation(C), Conversation(S)
    for sender, message, _ in CHALLENGE_PATH + ROUNDS:
        step(client, sender, message)
        step(server, sender, message)
        assert client.state is server.state


def assert_names_everything(exc: ProtocolError, kind: MessageKind, role: Role, state: State):
    text = str(exc)
    assert re.search(rf"\b{kind.name}\b", text), text
    assert re.search(rf"\b{role.value}\b", text, re.IGNORECASE), text
    assert re.search(rf"\b{state.name}\b", text), text


HELLO = PLAIN_PATH[0]
WELCOME = PLAIN_PATH[1]
FIT = ROUNDS[0]

ILLEGAL = [
    # (name, prefix of legal steps, sender, message, state when it arrives)
    ("fit-before-hello", [], S, Fit(round=1), State.START),
    ("fit-result-before-hello", [], C, FitResult(round=1), State.START),
    ("welcome-before-hello", [], S, WELCOME[1], State.START),
    ("fit-before-welcome", [HELLO], S, Fit(round=1), State.HELLO_SENT),
    ("two-hellos", [HELLO], C, Hello(client_name="again"), State.HELLO_SENT),
    ("hello-when-ready", [HELLO, WELCOME], C, Hello(client_name="again"), State.READY),
    ("auth-without-challenge", [HELLO], C, Auth(proof="x"), State.HELLO_SENT),
    ("challenge-when-ready", [HELLO, WELCOME], S, Challenge(nonce="a", proof="b"), State.READY),
    ("fit-result-from-server", [HELLO, WELCOME, FIT], S, FitResult(round=1), State.FITTING),
    ("fit-result-unasked", [HELLO, WELCOME], C, FitResult(round=1), State.READY),
    ("fit-from-client", [HELLO, WELCOME], C, Fit(round=1), State.READY),
    ("fit-while-fitting", [HELLO, WELCOME, FIT], S, Fit(round=2), State.FITTING),
    ("evaluate-result-while-fitting", [HELLO, WELCOME, FIT], C,
     EvaluateResult(round=1, num_examples=1, loss=0.0), State.FITTING),
    ("finish-while-fitting", [HELLO, WELCOME, FIT], S, Finish(), State.FITTING),
    ("finish-from-client", [HELLO, WELCOME], C, Finish(), State.READY),
]


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
@pytest.mark.parametrize("name,prefix,sender,message,state", ILLEGAL, ids=[c[0] for c in ILLEGAL])
def test_illegal_message_raises_naming_kind_role_and_state(role, name, prefix, sender, message,
                                                           state):
    conversation = walk(role, prefix)
    assert conversation.state is state
    with pytest.raises(ProtocolError) as info:
        step(conversation, sender, message)
    assert_names_everything(info.value, message.KIND, role, state)


AFTER_FINISH = [(m.KIND.name, s, m) for m in SAMPLES for s in (C, S)]


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
@pytest.mark.parametrize("kind,sender,message", AFTER_FINISH,
                         ids=[f"{k}-from-{s.value}" for k, s, _ in AFTER_FINISH])
def test_anything_after_finish_is_illegal(role, kind, sender, message):
    conversation = walk(role, PLAIN_PATH + ROUNDS)
    assert conversation.state is State.CLOSED
    with pytest.raises(ProtocolError) as info:
        step(conversation, sender, message)
    assert_names_everything(info.value, message.KIND, role, State.CLOSED)


NODE_UPDATE = NodeUpdate(node="a", epoch=0, num_examples=1, weights=W)
STATE_PATHS = {"start": [], "hello-sent": [PLAIN_PATH[0]], "ready": PLAIN_PATH,
               "fitting": PLAIN_PATH + ROUNDS[:1], "evaluating": PLAIN_PATH + ROUNDS[:3],
               "closed": PLAIN_PATH + ROUNDS}


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
@pytest.mark.parametrize("sender", [C, S], ids=["from-client", "from-server"])
@pytest.mark.parametrize("where", list(STATE_PATHS))
def test_a_stored_node_update_is_never_legal_on_a_connection(role, sender, where):
    """NODE_UPDATE frames live in shared folders (pyfed.serverless): decodable, but outside
    the state table, so a connection refuses one in every state, on its prefix too."""
    conversation = walk(role, STATE_PATHS[where])
    state = conversation.state
    if sender is not role:
        with pytest.raises(ProtocolError) as info:
            conversation.check(K.NODE_UPDATE)
        assert_names_everything(info.value, K.NODE_UPDATE, role, state)
    with pytest.raises(ProtocolError) as info:
        step(conversation, sender, NODE_UPDATE)
    assert_names_everything(info.value, K.NODE_UPDATE, role, state)
    assert conversation.state is state


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
@pytest.mark.parametrize("sender", [C, S], ids=["from-client", "from-server"])
def test_ping_allowed_when_ready(role, sender):
    conversation = walk(role, PLAIN_PATH)
    for _ in range(3):
        step(conversation, sender, Ping())
        assert conversation.state is State.READY
    step(conversation, *FIT[:2])  # still usable
    assert conversation.state is State.FITTING
    step(conversation, sender, Ping())
    assert conversation.state is State.FITTING


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
@pytest.mark.parametrize("sender", [C, S], ids=["from-client", "from-server"])
def test_non_fatal_error_keeps_ready(role, sender):
    conversation = walk(role, PLAIN_PATH)
    step(conversation, sender, Error(reason="update rejected", fatal=False))
    assert conversation.state is State.READY
    for s, message, expected in ROUNDS:  # the conversation goes on
        step(conversation, s, message)
        assert conversation.state is expected


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
def test_client_non_fatal_error_answers_a_fit(role):
    conversation = walk(role, PLAIN_PATH + [FIT])
    step(conversation, C, Error(reason="could not train", fatal=False))
    assert conversation.state is State.READY
    step(conversation, *FIT[:2])
    assert conversation.state is State.FITTING


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
@pytest.mark.parametrize("sender", [C, S], ids=["from-client", "from-server"])
@pytest.mark.parametrize("prefix", [[], [HELLO], PLAIN_PATH, PLAIN_PATH + [FIT]],
                         ids=["start", "hello-sent", "ready", "fitting"])
def test_fatal_error_closes(role, sender, prefix):
    conversation = walk(role, prefix)
    step(conversation, sender, Error(reason="model mismatch", fatal=True))
    assert conversation.state is State.CLOSED
    with pytest.raises(ProtocolError) as info:
        step(conversation, S, Fit(round=1))
    assert_names_everything(info.value, K.FIT, role, State.CLOSED)


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
def test_non_fatal_error_during_handshake_closes(role):
    conversation = walk(role, [HELLO])
    step(conversation, S, Error(reason="duplicate name", fatal=False))
    assert conversation.state is State.CLOSED


# ---------------------------------------------------------------------------------------------
# Fuzzing: decode raises ProtocolError or returns a message, nothing else
# ---------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

SMALL_SAMPLES = [dataclasses.replace(m, **{m.ARRAY_FIELD: SMALL_WEIGHTS[:3]}) if m.ARRAY_FIELD else m
                 for m in SAMPLES]
VALID_FRAMES = [protocol.encode_bytes(m) for m in SMALL_SAMPLES]


def decodes_or_protocol_error(data: bytes, limits: FrameLimits = FrameLimits()) -> None:
    try:
        message = protocol.decode(data, limits)
    except ProtocolError:
        return
    assert type(message) in protocol.MESSAGE_TYPES.values()


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    decodes_or_protocol_error(data)
    decodes_or_protocol_error(data, HANDSHAKE_LIMITS)


@FUZZ
@given(kind=st.integers(0, 255), header=st.binary(max_size=300), body=st.binary(max_size=200))
def test_fuzz_random_header_and_body_behind_a_valid_prefix(kind, header, body):
    decodes_or_protocol_error(PREFIX.pack(MAGIC, VERSION, kind, 0, len(header), len(body))
                              + header + body)


@st.composite
def mutate(draw, data: bytes, max_ops: int = 4) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, ord('"'), ord("{"), ord("-"),
                                            ord("0"), ord("9")]) | st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        else:
            j = draw(st.integers(i, min(len(data), i + 16)))
            data[j:j] = data[i:j]
    return bytes(data)


@FUZZ
@given(st.sampled_from(VALID_FRAMES).flatmap(mutate))
def test_fuzz_mutated_valid_frames(data):
    decodes_or_protocol_error(data)


@st.composite
def frames_with_mutated_header(draw):
    """Mutate the JSON header and/or body, then fix up the prefix's lengths so the mutation
    reaches the header and descriptor checks instead of the length check."""
    frame = draw(st.sampled_from(VALID_FRAMES))
    kind = frame[5]
    header_length, body_length = PREFIX.unpack(frame[:PREFIX_SIZE])[4:]
    header = frame[PREFIX_SIZE:PREFIX_SIZE + header_length]
    body = frame[PREFIX_SIZE + header_length:]
    assert len(body) == body_length
    header = draw(mutate(header))
    if draw(st.booleans()):
        body = draw(mutate(body)) if body else draw(st.binary(max_size=70))
    return PREFIX.pack(MAGIC, VERSION, kind, 0, len(header), len(body)) + header + body


@FUZZ
@given(frames_with_mutated_header())
def test_fuzz_mutated_headers_with_consistent_lengths(data):
    decodes_or_protocol_error(data)


# Every point of the legal conversations, for Conversation.check below.
_POINTS = [PLAIN_PATH[:i] for i in range(len(PLAIN_PATH) + 1)] + \
    [CHALLENGE_PATH[:i] for i in range(1, len(CHALLENGE_PATH) + 1)] + \
    [PLAIN_PATH + ROUNDS[:i] for i in range(1, len(ROUNDS) + 1)]


@pytest.mark.parametrize("role", [C, S], ids=["client", "server"])
@pytest.mark.parametrize("message", SAMPLES, ids=[m.KIND.name for m in SAMPLES])
def test_check_on_the_prefix_agrees_with_receive_and_changes_nothing(role, message):
    """The transport asks ``check(kind)`` on a frame's prefix, before reading the header: it
    must refuse exactly what receiving the whole message would refuse, with the same words."""
    for point in _POINTS:
        conversation = walk(role, point)
        state = conversation.state
        try:
            walk(role, point).receive(message)
            received = None
        except ProtocolError as exc:
            received = str(exc)
        try:
            conversation.check(message.KIND)
            checked = None
        except ProtocolError as exc:
            checked = str(exc)
        assert conversation.state is state, "check() must not move the conversation"
        assert checked == received, (role, [m.KIND.name for _, m, _ in point], message)


def test_extension_fields_are_left_out_while_unused_so_first_release_peers_read_them():
    """reconnect_secret joined HELLO and WELCOME after version 1 shipped: a HELLO without one
    must be byte-for-byte the first release's field list, and one with it must round-trip."""
    import json

    plain = protocol.encode_bytes(Hello(client_name="c"))
    header = json.loads(plain[protocol.PREFIX_SIZE:])
    assert set(header["fields"]) == {"client_name", "protocol_version", "spec_hash", "nonce",
                                     "evaluates", "spec"}
    with_secret = protocol.decode(protocol.encode_bytes(Hello(client_name="c", reconnect_secret="s")))
    assert with_secret.reconnect_secret == "s"
    assert protocol.decode(plain).reconnect_secret is None
