"""Weight compression for FIT and FIT_RESULT: ``"none"``, ``"fp16"`` or ``"int8"``. Pure numpy.

A compressed message is still a plain list of bool/int/uint/float arrays, so the wire format,
its size caps and its dtype allow-list apply unchanged. Only float tensors are compressed.
``fp16`` halves the bytes and needs no shared state. ``int8`` quarters them by sending each
float tensor's *delta* from a model both peers hold bit for bit (the last global model as
clients decoded it): a delta is small, so one scale per tensor loses little. The scales, one
float32 per float tensor in model order, travel as one extra array after the tensors.
Error feedback (:class:`ErrorFeedback` on clients, :class:`Downlink` on the server, O(model)
state each, none per client) carries each round's rounding loss into the next message.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigurationError, ProtocolError
from .layout import ArraySlot, Layout
from ..safe_text import printable
from .spec import TensorSpec, spec_of_arrays

CODECS = ("none", "fp16", "int8")
FP16_MAX = 65504.0
_LEVELS = 127  # symmetric: -128 is never produced, so negating a delta negates its code


def validate_codec(name: str | None) -> str:
    if name is None:
        return "none"
    if not isinstance(name, str) or name.lower() not in CODECS:
        raise ConfigurationError(f"compression must be one of {', '.join(CODECS)} (or None); "
                                 f"received {printable(repr(name), 80)}")
    return name.lower()


def _both_orders(kind_and_size: str) -> frozenset:
    return frozenset({"<" + kind_and_size, ">" + kind_and_size})


def wire_layout(codec: str | None, spec: Sequence[TensorSpec]) -> Layout:
    """The arrays a FIT_RESULT carries under ``codec`` (what :func:`decode` accepts with the
    run's codec), checked on the frame's header before its body is read: the model's tensors,
    float ones as float16 (fp16) or int8 codes (int8, plus one float32 scale per float tensor);
    other tensors exactly as in the spec."""
    codec = validate_codec(codec)
    slots = []
    for index, s in enumerate(spec):
        label = f"tensor {index} ({s.path or s.name})"
        if codec == "none" or not _is_float(s.dtype):
            dtypes = frozenset({np.dtype(s.dtype).str})
        elif codec == "fp16":
            dtypes = _both_orders("f2")
        else:
            dtypes = frozenset({"|i1"})
        slots.append(ArraySlot(label, tuple(int(d) for d in s.shape), dtypes))
    if codec == "int8":
        floats = sum(1 for s in spec if _is_float(s.dtype))
        slots.append(ArraySlot("scales array", (floats,), _both_orders("f4")))
    return Layout(tuple(slots))


def fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """CRC32 over shapes, dtypes and bytes. Catches a peer decoding against the wrong reference
    (a missed round, a reconnect): that would otherwise yield a silently wrong model."""
    crc = 0
    for array in map(np.asarray, arrays):
        crc = zlib.crc32(f"{array.dtype.str}{array.shape}".encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8), crc)
    return f"{crc:08x}"


def _is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def _work(dtype) -> np.dtype:
    # float32 math (half float64's memory), but a float64 tensor's delta is not rounded first.
    return np.result_type(np.dtype(dtype), np.float32)


def _to_fp16(array: np.ndarray) -> np.ndarray:
    """Values beyond float16's range are clipped to +-65504 rather than becoming Inf, so a large
    but finite weight does not get an honest client's update rejected. NaN and Inf stay as they
    are: the server's finiteness check must still see them."""
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    overflow = np.isinf(half) & np.isfinite(array)
    if overflow.any():
        half[overflow] = np.copysign(FP16_MAX, array[overflow])
    return half


def _quantize(delta: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """One symmetric scale per tensor. A non-finite delta gets scale NaN, so the tensor decodes
    to NaN and validation rejects the update instead of aggregating a clipped lie."""
    peak = float(np.max(np.abs(delta))) if delta.size else 0.0
    if not np.isfinite(peak):
        return np.zeros(delta.shape, np.int8), np.float32(np.nan)
    if peak == 0.0:
        return np.zeros(delta.shape, np.int8), np.float32(1.0)
    scale = np.float32(peak / _LEVELS) or np.float32(np.finfo(np.float32).smallest_subnormal)
    q = np.divide(delta, delta.dtype.type(scale), out=np.empty_like(delta))
    np.rint(q, out=q)
    return np.clip(q, -_LEVELS, _LEVELS, out=q).astype(np.int8), scale


def _dequantize(q: np.ndarray, scale, reference: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # Separate ufunc calls (never a fused multiply-add), so every peer gets identical bits.
    work = _work(dtype)
    out = q.astype(work)
    np.multiply(out, work.type(scale), out=out)
    np.add(out, np.asarray(reference, dtype=work), out=out)
    return out.astype(dtype, copy=False)


def _int8_message(arrays, deltas, reference) -> tuple[list[np.ndarray], dict]:
    wire, scales = [], []
    for array, delta in zip(arrays, deltas):
        if delta is None:
            wire.append(np.asarray(array))
        else:
            q, scale = _quantize(delta)
            wire.append(q)
            scales.append(scale)
    wire.append(np.array(scales, dtype=np.float32))
    return wire, {"codec": "int8", "scales": "last", "base": fingerprint(reference)}


def _minus(a, b, dtype) -> np.ndarray:
    # out=: a 0-d tensor must stay an array (numpy returns scalars from 0-d arithmetic).
    return np.subtract(a, b, dtype=dtype, out=np.empty(np.shape(a), dtype))


def _check_reference(reference, shapes) -> list[np.ndarray]:
    # Local data, but a wrong one would broadcast silently into a wrong model: refuse it.
    held = None if reference is None else [np.shape(r) for r in reference]
    if held is None or [tuple(s) for s in held] != [tuple(s) for s in shapes]:
        raise ConfigurationError(f"int8 needs the reference model that both peers hold, shapes "
                                 f"{[list(s) for s in shapes]}; received {held}")
    return [np.asarray(r) for r in reference]


def encode(codec: str | None, arrays: Sequence[np.ndarray],
           reference: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], dict]:
    """Arrays to send plus a small JSON-able ``meta`` (sent in the message's config)."""
    codec = validate_codec(codec)
    arrays = [np.asarray(a) for a in arrays]
    if codec == "none":
        return arrays, {"codec": "none"}
    if codec == "fp16":
        return [_to_fp16(a) if _is_float(a.dtype) else a for a in arrays], {"codec": "fp16"}
    reference = _check_reference(reference, [a.shape for a in arrays])
    deltas = [_minus(a, r, _work(a.dtype)) if _is_float(a.dtype) else None
              for a, r in zip(arrays, reference)]
    return _int8_message(arrays, deltas, reference)


def decode(codec: str | None, arrays: Sequence, meta: dict | None, spec: Sequence[TensorSpec],
           reference: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Rebuild the model's arrays (exactly the spec's dtypes) from a peer's message.

    ``codec`` is the run's. ``meta`` (None: the run's codec) may also say ``"none"`` (a full
    model: how a peer without the reference resyncs) or, in an int8 run, ``"fp16"`` (stateless,
    for EVALUATE). This runs on network data, so anything off is a :class:`ProtocolError`
    naming the tensor. Raw tensors come back as the very arrays received (views).
    """
    codec = validate_codec(codec)
    if meta is not None:
        if not isinstance(meta, dict):
            raise ProtocolError(f"compression meta must be an object; received {type(meta).__name__}")
        sent = meta.get("codec", codec)
        if sent not in (codec, "none", "fp16" if codec == "int8" else "none"):
            raise ProtocolError(f"message is compressed with {printable(repr(sent), 80)}; this "
                                f"run uses {codec!r}")
        codec = sent
    if not isinstance(arrays, (list, tuple)):
        raise ProtocolError(f"expected a list of arrays; received {type(arrays).__name__}")
    labels = [f"tensor {i} ({s.path or s.name})" for i, s in enumerate(spec)] + ["scales array"]
    if len(arrays) != len(spec) + (codec == "int8"):
        raise ProtocolError(f"{codec} message has {len(arrays)} arrays; expected "
                            f"{len(spec) + (codec == 'int8')} ({len(spec)} tensors"
                            f"{' + scales' if codec == 'int8' else ''})")
    for label, array in zip(labels, arrays):
        if not isinstance(array, np.ndarray):
            raise ProtocolError(f"{label} is a {type(array).__name__}; expected a numpy array")
    if codec == "int8":
        reference = _check_reference(reference, [s.shape for s in spec])
        floats = [i for i, s in enumerate(spec) if _is_float(s.dtype)]
        scales = arrays[-1]
        if scales.dtype.kind != "f" or scales.dtype.itemsize != 4 or scales.shape != (len(floats),):
            raise ProtocolError(f"int8 scales array is {scales.dtype.str} {list(scales.shape)}; "
                                f"expected float32 [{len(floats)}] (one per float tensor)")
        if meta is not None and "base" in meta and meta["base"] != (held := fingerprint(reference)):
            raise ProtocolError(f"int8 delta is against model {printable(repr(meta['base']), 80)}; "
                                f"this peer holds "
                                f"{held!r} (a missed round? resync with a full model)")
        scale_of = dict(zip(floats, scales.astype(np.float32).tolist()))
    out = []
    for index, (label, array, s) in enumerate(zip(labels, arrays, spec)):
        if tuple(array.shape) != tuple(s.shape):
            raise ProtocolError(f"{label} has shape {list(array.shape)}; expected {list(s.shape)}")
        dtype = np.dtype(s.dtype)
        if codec == "none" or not _is_float(dtype):
            if array.dtype.str != dtype.str:
                raise ProtocolError(f"{label} has dtype {array.dtype.str}; expected {dtype.str}")
            out.append(array)
        elif codec == "fp16":
            if array.dtype.kind != "f" or array.dtype.itemsize != 2:
                raise ProtocolError(f"{label} has dtype {array.dtype.str}; fp16 expects <f2")
            out.append(array.astype(dtype))
        else:
            if array.dtype != np.int8:
                raise ProtocolError(f"{label} has dtype {array.dtype.str}; int8 expects |i1")
            out.append(_dequantize(array, scale_of[index], reference[index], dtype))
    return out


def _with_feedback(codec: str, arrays, reference, residual):
    """Encode ``arrays`` plus the carried ``residual``. Returns the message, what the peer will
    decode, and the new residual. int8 keeps it in delta space, where the weights' own float32
    rounding cannot swamp it; fp16 has no reference, so it rides on the weights themselves."""
    arrays = [np.asarray(a) for a in arrays]
    bases = (_check_reference(reference, [a.shape for a in arrays]) if codec == "int8"
             else [None] * len(arrays))
    if residual is None or [None if r is None else r.shape for r in residual] != \
            [a.shape if _is_float(a.dtype) else None for a in arrays]:
        residual = [None] * len(arrays)  # none yet, or another model's: it means nothing here
    targets = []
    for a, base, r in zip(arrays, bases, residual):
        t = None
        if _is_float(a.dtype):
            t = a.astype(_work(a.dtype)) if base is None else _minus(a, base, _work(a.dtype))
            t = t if r is None else np.add(t, r, out=t)
        targets.append(t)
    if codec == "int8":
        wire, meta = _int8_message(arrays, targets, bases)
    else:
        wire = [a if t is None else _to_fp16(t) for a, t in zip(arrays, targets)]
        meta = {"codec": "fp16"}
        for t in filter(lambda t: t is not None, targets):  # clipped excess is dropped, not owed
            np.clip(t, -FP16_MAX, FP16_MAX, out=t)
    decoded = decode(codec, wire, None, spec_of_arrays(arrays), bases if codec == "int8" else None)
    for t, d, base in zip(targets, decoded, bases):
        if t is not None:
            t -= d if base is None else _minus(d, base, t.dtype)
            # A non-finite update is rejected anyway; keeping NaN would poison every later one.
            np.nan_to_num(t, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return wire, meta, decoded, targets


class ErrorFeedback:
    """Client uplink state (EF-SGD: Seide et al. 2014; Karimireddy et al. 2019). Each message
    carries ``update + residual`` and keeps what the server will not reconstruct for the next,
    so the sum of what the server receives stays within half a step of the sum of the true
    updates, instead of small elements being rounded away every round. fp16 gets it too: an
    update below half a float16 ulp of its weight would never arrive. :meth:`reset` after a
    reconnect or a full resync."""

    def __init__(self) -> None:
        self.residual: list[np.ndarray | None] | None = None

    def reset(self) -> None:
        self.residual = None

    def encode(self, codec: str | None, arrays: Sequence[np.ndarray],
               reference: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], dict]:
        codec = validate_codec(codec)
        if codec == "none":
            return encode(codec, arrays)
        wire, meta, _, self.residual = _with_feedback(codec, arrays, reference, self.residual)
        return wire, meta


class Downlink:
    """Server downlink state. The official global model is :attr:`model`, exactly what every
    client reconstructs, so the two never drift apart and each round's deltas (both ways) are
    measured from what clients really hold; the server evaluates and checkpoints that model.

    Error feedback with no per-client state: :meth:`publish` sends ``new + residual`` and keeps
    what rounding lost for the next round's delta. Without it, an element whose update stays
    below half its tensor's step would be rounded away every round, forever. ``new`` must come
    from clients that started from :attr:`model`; after a resume, :meth:`reset`.
    """

    def __init__(self, codec: str | None) -> None:
        self.codec = validate_codec(codec)
        self.reset()

    def reset(self) -> None:
        """Forget the model and residual: the next publish is full (for int8)."""
        self.model: list[np.ndarray] | None = None
        self.residual: list[np.ndarray | None] | None = None
        self.version = 0

    def publish(self, new: Sequence[np.ndarray]) -> tuple[list[np.ndarray], dict]:
        """The message for clients holding the previous :attr:`model` (version - 1; int8's
        ``meta["base"]`` names it); everyone else gets :meth:`full`. Updates :attr:`model`."""
        if self.codec == "none" or (self.codec == "int8" and self.model is None):
            wire, meta = encode("none", [np.array(a) for a in new])
            model = wire
        else:
            wire, meta, model, self.residual = _with_feedback(
                self.codec, new, self.model, self.residual)
        # Our own read-only arrays: an in-place write to the reference would desync every client.
        self.model = [a if a.base is None and a is not n else np.array(a) for a, n in zip(model, new)]
        for array in self.model:
            array.flags.writeable = False
        self.version += 1
        return wire, meta

    def full(self) -> tuple[list[np.ndarray], dict]:
        """:attr:`model` uncompressed, for a client without the previous one (first round, new,
        reconnected, or not sampled last round): exact, so it rejoins in step."""
        return whole_model(self.model)


def whole_model(model) -> tuple[list[np.ndarray], dict]:
    """A version's model, uncompressed: what a client that lacks a delta's base is sent."""
    return list(model), {"codec": "none"}


def message_for(held_version: int, message: tuple, version: int,
                model) -> tuple[list[np.ndarray], dict]:
    """What a client holding model ``held_version`` is sent of ``version`` (its downlink
    ``message`` and its ``model``): an int8 delta only when the client holds the delta's base
    (``version - 1``), else the whole model (:func:`whole_model`). Both round drivers ask this."""
    if message[1]["codec"] == "int8" and held_version != version - 1:
        return whole_model(model)
    return message
