"""Streaming weighted sums: updates folded in one at a time, so the server holds one
accumulator plus the update being folded, whatever the number of clients; and the recycled
memory the accumulators live in."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from .chunks import CHUNK_ELEMENTS, windows

# Weights are folded as num_examples / 2**30 (exact: a power of two), so a float32 product of a
# weight and a delta stays far below float32's maximum for any num_examples up to ~1e9.
_WEIGHT_UNIT = float(1 << 30)

# One client's update: one array per model tensor.
Update = Sequence[np.ndarray]


class WeightedSum:
    """Running ``sum(w_i * x_i)`` and ``sum(w_i)`` over lists of arrays.

    Without a ``reference`` every tensor is summed in float64. With one (FedAvg passes the
    global weights the clients started from), float32 and float64 tensors sum the *deltas*
    ``x_i - reference`` in their own dtype instead, and the mean is ``reference + sum / W``.
    That halves the accumulator of a float32 model (the server's largest buffer) and its memory
    traffic. Precision holds because the rounding is relative to the deltas, which a round
    keeps small against the weights themselves: for N updates the sum's error is about
    ``sqrt(N) * 6e-8 * |delta|``, below float32's own rounding of the result (``6e-8 * |x|``)
    whenever ``|delta| < |x| / sqrt(N)``. A plain float32 sum of the weights (Flower's) rounds
    relative to ``|x|`` instead. Other dtypes (float16, integers) are summed in float64.

    ``own_dtype=True`` without a reference sums float32 and float64 tensors plainly in their
    own dtype (``sum(w_i * x_i)``, no reference read): cheaper, with an error of at most N - 1
    float32 steps of ``|x|`` for N updates (FedAvg uses it for small rounds, see there).

    Values must be finite and well inside float32's range (the server rejects updates with
    ``|x| > 1e18``, see ``rounds.validate_update``), so no sum can overflow.

    ``add(..., delta_scale=s)`` folds the update ``reference + s * (x - reference)`` instead of
    ``x`` (max_update_norm's clip): free for tensors summed as deltas (the weight is scaled),
    one more read of the reference for the others. It needs a ``reference``; integer and bool
    tensors are not scaled.
    """

    def __init__(self, template: Sequence[np.ndarray],
                 reference: Sequence[np.ndarray] | None = None,
                 blocks: "RecycledBlocks | None" = None, own_dtype: bool = False):
        self.dtypes = [np.asarray(a).dtype for a in template]
        self.shapes = [np.shape(a) for a in template]
        if reference is not None and len(reference) != len(self.shapes):
            raise ValueError(f"reference has {len(reference)} arrays; expected {len(self.shapes)}")
        self.references: list[np.ndarray | None] = []
        for index, (shape, dtype) in enumerate(zip(self.shapes, self.dtypes)):
            base = None
            if reference is not None and dtype in (np.float32, np.float64):
                base = np.asarray(reference[index])
                if base.shape != shape or base.dtype != dtype:
                    raise ValueError(f"reference array {index} is {base.dtype}{list(base.shape)};"
                                     f" expected {dtype}{list(shape)}")
            self.references.append(base)
        # Tensors summed in their own dtype (deltas, or plain with own_dtype); the rest float64.
        self.in_own_dtype = [dtype in (np.float32, np.float64) and (base is not None or own_dtype)
                             for base, dtype in zip(self.references, self.dtypes)]
        # The sums are not zeroed: the first add() writes them (one pass less over the model).
        sum_dtypes = [np.dtype(dtype if own else np.float64)
                      for own, dtype in zip(self.in_own_dtype, self.dtypes)]
        self.sums = _empty_arrays(self.shapes, sum_dtypes, blocks)
        self.origin = None if reference is None else list(reference)  # for delta_scale
        self.total_weight = 0.0
        self.count = 0
        self.means_ready = False  # own-dtype sums hold their means (after an add(last=True))
        self._scratch: dict[np.dtype, np.ndarray] = {}

    def _scratch_for(self, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype not in self._scratch:
            self._scratch[dtype] = np.empty(CHUNK_ELEMENTS, dtype=dtype)
        return self._scratch[dtype]

    def add(self, arrays: Sequence[np.ndarray], weight: float, last: bool = False,
            delta_scale: float = 1.0) -> None:
        """Fold ``weight * arrays`` in. ``last``: no other add follows, so the mean of every
        tensor summed in its own dtype is computed in the same pass, chunk by chunk while it is
        still in cache, instead of in another pass over the whole model (:meth:`mean` then
        just returns it). ``delta_scale``: fold ``reference + delta_scale * (arrays -
        reference)`` instead (see the class)."""
        if delta_scale != 1.0 and self.origin is None:
            raise ValueError("delta_scale needs the reference the update is a delta from")
        if self.means_ready:
            raise ValueError("cannot add after the last update")
        if len(arrays) != len(self.sums):
            raise ValueError(f"expected {len(self.sums)} arrays; received {len(arrays)}")
        for index, array in enumerate(arrays):
            if np.shape(array) != self.shapes[index]:
                raise ValueError(
                    f"array {index} has shape {np.shape(array)}; expected {self.shapes[index]}")
        unit_weight = float(weight) / _WEIGHT_UNIT
        first = self.count == 0
        total_weight = self.total_weight + float(weight)  # the mean's, when last
        if last and total_weight <= 0:
            raise ValueError("cannot average: no weight was added")
        for index, (total, base, own, array) in enumerate(
                zip(self.sums, self.references, self.in_own_dtype, arrays)):
            values = np.asarray(array).reshape(-1)
            scratch = self._scratch_for(total.dtype)
            clip = delta_scale != 1.0 and self.dtypes[index].kind == "f"
            if not own:
                if clip:  # w * (o + s * (x - o)) = (w * s) * x + (w * (1 - s)) * o
                    _fold(total.reshape(-1), values, unit_weight * delta_scale, scratch, first)
                    _fold(total.reshape(-1), np.asarray(self.origin[index]).reshape(-1),
                          unit_weight * (1.0 - delta_scale), scratch, False)
                else:
                    _fold(total.reshape(-1), values, unit_weight, scratch, first)
            else:
                scale = _mean_scale(total.dtype, total_weight) if last else None
                _fold_own(total.reshape(-1), values, None if base is None else base.reshape(-1),
                          unit_weight * delta_scale if clip else unit_weight, scratch, first,
                          scale)
        self.total_weight = total_weight
        self.count += 1
        self.means_ready = last

    def mean(self, cast: bool = True, in_place: bool = False) -> list[np.ndarray]:
        """The weighted mean. Tensors summed in their own dtype come back in it; the others in
        float64, cast back to the tensor's dtype unless ``cast=False``. ``in_place`` computes
        the mean in the sums themselves, saving a copy of the model when the accumulator is
        about to be dropped anyway."""
        if self.total_weight <= 0:
            raise ValueError("cannot average: no weight was added")
        unit_total = self.total_weight / _WEIGHT_UNIT
        means = []
        for total, base, own, dtype in zip(self.sums, self.references, self.in_own_dtype,
                                           self.dtypes):
            out = total if in_place else None
            if not own:
                mean = np.divide(total, unit_total, out=out)
                means.append(_cast_back(mean, dtype) if cast else mean)
            elif self.means_ready:  # the last add computed it
                means.append(total if in_place else total.copy())
            else:
                means.append(_own_mean(total, base, _mean_scale(total.dtype, self.total_weight),
                                       out))
        return means


def _fold(total: np.ndarray, values: np.ndarray, weight: float, scratch: np.ndarray,
          first: bool) -> None:
    """``total += weight * values`` (``=`` when ``first``), in float64."""
    for window in windows(total.size):
        # dtype=float64: otherwise numpy multiplies in the update's dtype (float16 overflows,
        # float32 rounds) and only widens the product when storing it.
        if first:
            np.multiply(values[window], weight, out=total[window], dtype=np.float64)
            continue
        part = scratch[: window.stop - window.start]
        np.multiply(values[window], weight, out=part, dtype=np.float64)
        np.add(total[window], part, out=total[window])


def _fold_own(total: np.ndarray, values: np.ndarray, base: np.ndarray | None, weight: float,
              scratch: np.ndarray, first: bool, mean_scale=None) -> None:
    """``total += weight * (values - base)`` (``weight * values`` without a base; ``=`` when
    ``first``), in total's dtype; with a ``mean_scale``, each chunk then becomes the mean
    ``base + total * mean_scale`` at once, with :func:`_to_mean`, as :func:`_own_mean`."""
    weight = total.dtype.type(weight)
    for window in windows(total.size):
        part = total[window] if first else scratch[: window.stop - window.start]
        if base is None:
            np.multiply(values[window], weight, out=part)
        else:
            np.subtract(values[window], base[window], out=part)
            np.multiply(part, weight, out=part)
        if not first:
            np.add(total[window], part, out=total[window])
        if mean_scale is not None:
            _to_mean(total[window], None if base is None else base[window], mean_scale,
                     total[window])


def _mean_scale(dtype: np.dtype, total_weight: float):
    """The factor that turns a delta sum into the mean delta. A multiplication by the
    reciprocal: vector division is several times slower, and the extra rounding is relative to
    the (small) mean delta, not to the weights."""
    return dtype.type(_WEIGHT_UNIT / total_weight)


def _own_mean(total: np.ndarray, base: np.ndarray | None, scale,
              out: np.ndarray | None) -> np.ndarray:
    """``base + total * scale`` (``total * scale`` without a base), chunk by chunk so ``total``
    is read from memory once."""
    out = np.empty_like(total) if out is None else out
    flat_total, flat_out = total.reshape(-1), out.reshape(-1)
    flat_base = None if base is None else base.reshape(-1)
    for window in windows(flat_total.size):
        _to_mean(flat_total[window], None if flat_base is None else flat_base[window], scale,
                 flat_out[window])
    return out


def _to_mean(total: np.ndarray, base: np.ndarray | None, scale, out: np.ndarray) -> None:
    """``out = base + total * scale`` for one chunk: the one place the mean is computed, so
    the fused last fold and :func:`_own_mean` agree bitwise."""
    np.multiply(total, scale, out=out)
    if base is not None:
        np.add(out, base, out=out)


class RecycledBlocks:
    """Memory for accumulators, reused once nothing else references it.

    FedAvg's accumulator becomes the next global model, so each round needs a fresh
    model-sized buffer while the one from two rounds back is typically dead by then. Fresh
    memory from the OS costs a page fault and a zeroed page per 4 KiB (about 5,000 for the
    README model, a quarter of a 3-client round's aggregation time), and glibc returns freed
    blocks this large to the OS at once. So the strategy keeps the last few blocks and hands
    one out again when its reference count shows that no array, view or memoryview anywhere
    still uses it (every view of a numpy array keeps its base alive, so no reader can be
    holding the memory). Only ``keep`` blocks are tracked; an older one is simply forgotten
    (and freed by whoever holds it last)."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.reused = 0
        self._blocks: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray:
        """A block of ``nbytes`` bytes (uint8), with unspecified contents."""
        for index in range(len(self._blocks)):
            # Two references: our list's and getrefcount's own argument.
            if self._blocks[index].nbytes == nbytes and sys.getrefcount(self._blocks[index]) == 2:
                self.reused += 1
                return self._blocks[index]
        block = np.empty(nbytes, dtype=np.uint8)
        self._blocks = (self._blocks + [block])[-self.keep:]
        return block


def _empty_arrays(shapes, dtypes, blocks: RecycledBlocks | None) -> list[np.ndarray]:
    """Uninitialized arrays of these shapes and dtypes: views into one recycled block, or
    separate new arrays without ``blocks``."""
    if blocks is None:
        return [np.empty(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes)]
    sizes = [int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in zip(shapes, dtypes)]
    # Each array starts on a 64-byte boundary (a cache line; numpy needs the dtype's alignment).
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // 64) * 64
    block = blocks.take(end + 64)
    start = -block.ctypes.data % 64
    return [block[start + offset:start + offset + size].view(dtype).reshape(shape)
            for offset, size, shape, dtype in zip(offsets, sizes, shapes, dtypes)]


def _cast_back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iub":
        return np.rint(values).astype(dtype)
    return values.astype(dtype, copy=False)


def cast_to(values: Sequence[np.ndarray], dtypes: Sequence[np.dtype]) -> list[np.ndarray]:
    """Cast results back to the model's dtypes (no copy where the dtype already matches);
    integer and bool tensors are rounded."""
    return [_cast_back(np.asarray(v), np.dtype(d)) for v, d in zip(values, dtypes)]
