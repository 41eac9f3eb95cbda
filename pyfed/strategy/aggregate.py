"""Aggregation math as pure numpy functions: no sockets, no TensorFlow, tested on their own.

Updates are folded one at a time (:class:`WeightedSum`), so the server never holds more than one
accumulator plus the update being folded, whatever the number of clients.

An *update* is one client's list of arrays (one per model tensor). Functions that need every
update at once (median, trimmed mean, Krum) take ``updates[client][tensor]`` and work one tensor
at a time, so their float64 scratch is O(largest tensor x clients), not O(model x clients).

Functions here never modify their inputs. The robust and server-optimizer functions return
float64 arrays; strategies cast the final result back to the model's dtypes with
:func:`cast_to`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence

import numpy as np

# Elements per chunk when folding: 128 Ki elements (512 KiB-1 MiB) stay in L2/L3 cache, so each
# chunk is read from memory once however many operations touch it, and the scratch is one chunk,
# not one whole layer. (64 Ki measured a few percent slower: more numpy calls per update.)
_CHUNK = 1 << 17

# Weights are folded as num_examples / 2**30 (exact: a power of two), so a float32 product of a
# weight and a delta stays far below float32's maximum for any num_examples up to ~1e9.
_WEIGHT_UNIT = float(1 << 30)

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
            self._scratch[dtype] = np.empty(_CHUNK, dtype=dtype)
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


def update_norm(update: Update, reference: Update) -> float:
    """The L2 norm of ``update - reference`` over the floating-point tensors (integer and bool
    tensors are counts, not directions, and are left out), accumulated in float64.

    One pass over both, chunk by chunk with one chunk of scratch: no model-sized temporary.
    Each chunk's sum of squares is one BLAS dot product in the tensor's dtype; a chunk whose
    float32 dot overflows (values near 1e18, far beyond trained weights) is summed again in
    float64, so the norm is right for every finite input."""
    if len(update) != len(reference):
        raise ValueError(f"update has {len(update)} arrays; the reference has {len(reference)}")
    total = 0.0
    for index, (array, base) in enumerate(zip(update, reference)):
        values, base = np.asarray(array), np.asarray(base)
        if values.dtype.kind != "f":
            continue
        if values.shape != base.shape:
            raise ValueError(f"array {index} has shape {values.shape}; the reference has "
                             f"{base.shape}")
        flat, flat_base = values.reshape(-1), base.reshape(-1)
        scratch = np.empty(min(_CHUNK, flat.size),
                           dtype=np.float64 if values.dtype == np.float64 else np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow picks the slow path
            for window in _windows(flat.size):
                part = scratch[: window.stop - window.start]
                np.subtract(flat[window], flat_base[window], out=part, dtype=part.dtype)
                square = float(np.dot(part, part))
                if not math.isfinite(square):
                    exact = flat[window].astype(np.float64) - flat_base[window]
                    square = float(np.dot(exact, exact))
                total += square
    return math.sqrt(total)


def clip_delta(array: np.ndarray, reference: np.ndarray, scale: float) -> None:
    """In place, chunk by chunk: ``array = reference + scale * (array - reference)`` (for a
    float array the caller owns, e.g. a robust strategy's copy of an update)."""
    flat, flat_base = array.reshape(-1), np.asarray(reference).reshape(-1)
    scale = array.dtype.type(scale)
    for window in _windows(flat.size):
        part = flat[window]
        np.subtract(part, flat_base[window], out=part)
        np.multiply(part, scale, out=part)
        np.add(part, flat_base[window], out=part)


def common_metrics(results: list[tuple[int, dict]], limit: int) -> list[tuple[int, dict]]:
    """``results`` with at most ``limit`` distinct metric names in all: those reported by the
    most clients (then by the most examples, then by name). Clients may each report a few
    names of their own; the union over a round stays bounded, and names that every honest
    client reports win over one client's inventions."""
    names: dict[str, list] = {}
    for num_examples, metrics in results:
        for name in metrics:
            entry = names.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += num_examples
    if len(names) <= limit:
        return results
    kept = set(sorted(names, key=lambda n: (-names[n][0], -names[n][1], n))[:limit])
    return [(n, {k: v for k, v in metrics.items() if k in kept}) for n, metrics in results]


def _windows(size: int):
    """Slices covering ``range(size)`` in steps of ``_CHUNK``."""
    for start in range(0, size, _CHUNK):
        yield slice(start, min(start + _CHUNK, size))


def _fold(total: np.ndarray, values: np.ndarray, weight: float, scratch: np.ndarray,
          first: bool) -> None:
    """``total += weight * values`` (``=`` when ``first``), in float64."""
    for window in _windows(total.size):
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
    for window in _windows(total.size):
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
    for window in _windows(flat_total.size):
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


def weighted_average(updates: Iterable[Update], weights: Iterable[float]) -> list[np.ndarray]:
    """FedAvg's ``sum(n_k * w_k) / sum(n_k)`` over whole updates (non-streaming convenience)."""
    accumulator = None
    for arrays, weight in zip(updates, weights):
        if accumulator is None:
            accumulator = WeightedSum(arrays)
        accumulator.add(arrays, weight)
    if accumulator is None:
        raise ValueError("cannot average zero updates")
    return accumulator.mean()


def weighted_metrics(results: Iterable[tuple[int, dict]]) -> dict[str, float]:
    """Mean of each numeric metric, weighted by the number of examples behind it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for num_examples, metrics in results:
        for name, value in metrics.items():
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                    value, (bool, np.bool_)):
                sums[name] = sums.get(name, 0.0) + num_examples * float(value)
                weights[name] = weights.get(name, 0.0) + num_examples
    return {name: sums[name] / weights[name] for name in sums if weights[name] > 0}


def weighted_loss(results: Iterable[tuple[int, float]]) -> float | None:
    """Examples-weighted mean loss; results with no examples (or no loss) do not count."""
    total = weight = 0.0
    for num_examples, loss in results:
        if loss is None or num_examples <= 0:
            continue
        total += num_examples * float(loss)
        weight += num_examples
    return total / weight if weight > 0 else None


# ---------------------------------------------------------------------------------------------
# Robust aggregation: every update at once
# ---------------------------------------------------------------------------------------------

def _stacked(updates: Sequence[Update]):
    """Yield, per tensor, the (clients, *shape) float64 stack of that tensor."""
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    count = len(updates[0])
    for index, update in enumerate(updates):
        if len(update) != count:
            raise ValueError(f"update {index} has {len(update)} arrays; expected {count}")
    for tensor in range(count):
        shapes = {np.shape(update[tensor]) for update in updates}
        if len(shapes) != 1:
            raise ValueError(f"tensor {tensor} has different shapes across updates: "
                             f"{sorted(shapes)}")
        yield np.stack([np.asarray(update[tensor], dtype=np.float64) for update in updates])


def median(updates: Sequence[Update]) -> list[np.ndarray]:
    """Coordinate-wise median (unweighted, as Flower's FedMedian; Yin et al., 2018)."""
    return [np.median(stack, axis=0) for stack in _stacked(updates)]


def trimmed_mean(updates: Sequence[Update], beta: float) -> list[np.ndarray]:
    """Coordinate-wise mean after cutting ``int(beta * n)`` values from EACH end (unweighted).

    ``beta`` must be in [0, 0.5), so at least one value per coordinate survives.
    """
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5); received {beta}")
    cut = int(beta * len(updates))
    result = []
    for stack in _stacked(updates):
        stack.sort(axis=0)  # the stack is our own float64 copy
        result.append(stack[cut: stack.shape[0] - cut].mean(axis=0))
    return result


def pairwise_sq_distances(updates: Sequence[Update]) -> np.ndarray:
    """``D[i, j] = ||u_i - u_j||^2`` over all tensors, in float64 (by differences, not via the
    Gram matrix, so nearly equal updates are not swamped by cancellation)."""
    n = len(updates)
    distances = np.zeros((n, n), dtype=np.float64)
    for stack in _stacked(updates):
        flat = stack.reshape(n, -1)
        for i in range(n - 1):
            diff = flat[i + 1:] - flat[i]
            distances[i, i + 1:] += np.einsum("ij,ij->i", diff, diff)
    return distances + distances.T


def krum_scores(updates: Sequence[Update], num_malicious: int) -> np.ndarray:
    """Krum score of each update: the sum of its squared distances to its ``n - f - 2``
    nearest other updates (Blanchard et al., 2017).

    As Flower, at least 1 neighbour counts when ``n - f - 2 < 1`` (and at most ``n - 1``).
    """
    n = len(updates)
    distances = pairwise_sq_distances(updates)
    neighbours = min(max(1, n - num_malicious - 2), n - 1)
    scores = np.zeros(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:neighbours].sum()
    return scores


def krum_select(updates: Sequence[Update], num_malicious: int, num_to_keep: int) -> list[int]:
    """Indices of the updates Krum keeps: the ``num_to_keep`` lowest scores (MultiKrum), or the
    single lowest when ``num_to_keep`` is 0 (Krum). Ties go to the lower index."""
    if num_to_keep < 0:
        raise ValueError(f"num_to_keep must be >= 0; received {num_to_keep}")
    scores = krum_scores(updates, num_malicious)
    keep = min(max(num_to_keep, 1), len(updates))
    return sorted(np.argsort(scores, kind="stable")[:keep].tolist())


# ---------------------------------------------------------------------------------------------
# Server-side optimizers applied to the averaged update
# ---------------------------------------------------------------------------------------------

def _f64(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def fedavgm_update(current: Sequence[np.ndarray], average: Sequence[np.ndarray],
                   momentum: Sequence[np.ndarray] | None, *, server_learning_rate: float,
                   server_momentum: float) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """FedAvgM (Hsu et al., 2019), as Flower: SGD with heavy-ball momentum on the server.

    ``g = current - average`` (the pseudo-gradient), ``v = momentum * v + g`` (``v = g`` the
    first time), ``new = current - server_learning_rate * v``. Returns ``(new, v)``; ``v`` is
    None when ``server_momentum`` is 0.
    """
    current = _f64(current)
    gradient = [c - a for c, a in zip(current, _f64(average))]
    if server_momentum > 0:
        if momentum is None:
            momentum = gradient
        else:
            momentum = [server_momentum * v + g for v, g in zip(_f64(momentum), gradient)]
        step = momentum
    else:
        momentum, step = None, gradient
    return [c - server_learning_rate * s for c, s in zip(current, step)], momentum


def _fedopt(current, average, m, beta_1, second_moment, learning_rate, tau):
    current = _f64(current)
    delta = [a - c for a, c in zip(_f64(average), current)]
    m = [np.zeros_like(d) for d in delta] if m is None else _f64(m)
    m = [beta_1 * m_i + (1.0 - beta_1) * d for m_i, d in zip(m, delta)]
    v = second_moment(delta)
    new = [c + learning_rate * m_i / (np.sqrt(v_i) + tau) for c, m_i, v_i in zip(current, m, v)]
    return new, m, v


def _zeros_or(v, delta):
    return [np.zeros_like(d) for d in delta] if v is None else _f64(v)


def fedadam_update(current, average, m, v, *, server_round: int, eta: float, beta_1: float,
                   beta_2: float, tau: float):
    """FedAdam (Reddi et al., 2021) as in current Flower: WITH a bias-corrected step.

    ``delta = average - current``; ``m = b1*m + (1-b1)*delta``; ``v = b2*v + (1-b2)*delta**2``;
    ``new = current + eta_t * m / (sqrt(v) + tau)`` with the bias-corrected rate
    ``eta_t = eta * sqrt(1 - b2**(server_round + 1)) / (1 - b1**(server_round + 1))``.
    The exponent is ``server_round + 1`` (rounds start at 1), exactly as Flower's code (both
    ``flwr.server.strategy.FedAdam`` and ``flwr.serverapp.strategy.FedAdam``). Flower releases
    before PR flwrlabs/flower#4362 (late 2024) used plain ``eta``, with no bias correction.
    ``m``/``v`` None means zeros (the first round). Returns ``(new, m, v)``, all float64.
    """
    exponent = server_round + 1.0
    rate = eta * np.sqrt(1.0 - beta_2 ** exponent) / (1.0 - beta_1 ** exponent)

    def second(delta):
        return [beta_2 * v_i + (1.0 - beta_2) * d * d for v_i, d in zip(_zeros_or(v, delta), delta)]
    return _fedopt(current, average, m, beta_1, second, rate, tau)


def fedyogi_update(current, average, m, v, *, eta: float, beta_1: float, beta_2: float,
                   tau: float):
    """FedYogi, as Flower (no bias correction): ``v = v - (1-b2) * d**2 * sign(v - d**2)``;
    otherwise as :func:`fedadam_update` with the plain ``eta``."""
    def second(delta):
        return [v_i - (1.0 - beta_2) * d * d * np.sign(v_i - d * d)
                for v_i, d in zip(_zeros_or(v, delta), delta)]
    return _fedopt(current, average, m, beta_1, second, eta, tau)


def fedadagrad_update(current, average, m, v, *, eta: float, tau: float):
    """FedAdagrad, as Flower: ``beta_1 = 0`` (so ``m = delta``) and ``v = v + d**2``."""
    def second(delta):
        return [v_i + d * d for v_i, d in zip(_zeros_or(v, delta), delta)]
    return _fedopt(current, average, m, 0.0, second, eta, tau)
