"""The two asynchronous update rules as pure numpy functions, in cache-sized chunks.

- FedAsync (Xie et al., 2019, Algorithm 1): ``x <- (1 - alpha_t) x + alpha_t x_client`` with
  ``alpha_t = alpha * s(staleness)`` (:func:`fedasync_mix`).
- FedBuff (Nguyen et al., 2022, Algorithm 1): ``buffer += s(staleness) * (x_client - x_base)``
  for each of K updates (:func:`fedbuff_accumulate`), then
  ``x <- x + eta_g * buffer / K`` (:func:`fedbuff_step`). The paper's client sends
  ``x_base - x_client`` and the server subtracts; this is the same step with the sign folded in.

Arithmetic runs in the dtype of the array written (the caller picks it: the strategies use the
model's float32/float64 and float64 for other tensors), chunk by chunk with one chunk of
scratch, so no model-sized temporary is made. Inputs not written are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .chunks import CHUNK_ELEMENTS, windows


class Scratch:
    """One chunk of scratch per dtype, reused across calls (a strategy keeps one)."""

    def __init__(self):
        self._chunks: dict[np.dtype, np.ndarray] = {}

    def __call__(self, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype not in self._chunks:
            self._chunks[dtype] = np.empty(CHUNK_ELEMENTS, dtype=dtype)
        return self._chunks[dtype]


def _check_float(arrays: Sequence[np.ndarray], what: str) -> None:
    for index, array in enumerate(arrays):
        if np.asarray(array).dtype.kind != "f":
            raise ValueError(f"{what} array {index} is {np.asarray(array).dtype}; the result is "
                             "written there, so it must be floating-point")


def _check_shapes(arrays: Sequence[np.ndarray], template: Sequence[np.ndarray], what: str) -> None:
    if len(arrays) != len(template):
        raise ValueError(f"{what} has {len(arrays)} arrays; expected {len(template)}")
    for index, (array, model) in enumerate(zip(arrays, template)):
        if np.shape(array) != np.shape(model):
            raise ValueError(f"{what} array {index} has shape {np.shape(array)}; expected "
                             f"{np.shape(model)}")


def mix_tensor(out: np.ndarray, current: np.ndarray, client: np.ndarray, alpha: float,
               scratch: Scratch, reference: np.ndarray | None = None, scale: float = 1.0) -> None:
    """One tensor of FedAsync's mix: ``out = current + alpha * (c - current)`` where ``c`` is
    ``client``, or ``reference + scale * (client - reference)`` with a ``reference`` (the
    client's update clipped to a norm bound). ``out`` may be ``current`` (in place)."""
    flat_out, flat_current = out.reshape(-1), np.asarray(current).reshape(-1)
    flat_client = np.asarray(client).reshape(-1)
    flat_reference = None if reference is None else np.asarray(reference).reshape(-1)
    chunk = scratch(out.dtype)
    kind = out.dtype.type
    for window in windows(flat_out.size):
        part = chunk[: window.stop - window.start]
        if flat_reference is None:
            np.subtract(flat_client[window], flat_current[window], out=part, dtype=out.dtype)
        else:
            np.subtract(flat_client[window], flat_reference[window], out=part, dtype=out.dtype)
            np.multiply(part, kind(scale), out=part)
            np.add(part, flat_reference[window], out=part, dtype=out.dtype)
            np.subtract(part, flat_current[window], out=part, dtype=out.dtype)
        np.multiply(part, kind(alpha), out=part)
        np.add(flat_current[window], part, out=flat_out[window], dtype=out.dtype)


def accumulate_tensor(total: np.ndarray, client: np.ndarray, base: np.ndarray, weight: float,
                      scratch: Scratch) -> None:
    """One tensor of FedBuff's fold: ``total += weight * (client - base)``."""
    flat_total = total.reshape(-1)
    flat_client, flat_base = np.asarray(client).reshape(-1), np.asarray(base).reshape(-1)
    chunk = scratch(total.dtype)
    for window in windows(flat_total.size):
        part = chunk[: window.stop - window.start]
        np.subtract(flat_client[window], flat_base[window], out=part, dtype=total.dtype)
        np.multiply(part, total.dtype.type(weight), out=part)
        np.add(flat_total[window], part, out=flat_total[window])


def step_tensor(out: np.ndarray, current: np.ndarray, total: np.ndarray, factor: float) -> None:
    """One tensor of FedBuff's server step: ``out = current + factor * total`` (``factor`` is
    ``eta_g / K``). ``out`` may be ``total`` (in place)."""
    flat_out, flat_total = out.reshape(-1), total.reshape(-1)
    flat_current = np.asarray(current).reshape(-1)
    for window in windows(flat_out.size):
        np.multiply(flat_total[window], out.dtype.type(factor), out=flat_out[window])
        np.add(flat_out[window], flat_current[window], out=flat_out[window], dtype=out.dtype)


def fedasync_mix(current: list[np.ndarray], client: Sequence[np.ndarray], alpha: float, *,
                 out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """FedAsync's update ``(1 - alpha) * current + alpha * client`` (computed as
    ``current + alpha * (client - current)``), written into ``current`` in place, or into
    ``out`` when given (``current`` is then only read). The arrays written must be
    floating-point; ``alpha`` is ``mixing * s(staleness)``. Returns the arrays written."""
    target = current if out is None else out
    _check_shapes(client, current, "client")
    _check_shapes(target, current, "out")
    _check_float(target, "out" if out is not None else "current")
    scratch = Scratch()
    for written, now, update in zip(target, current, client):
        mix_tensor(written, now, update, alpha, scratch)
    return target


def fedbuff_accumulate(buffer_sum: list[np.ndarray], client: Sequence[np.ndarray],
                       base: Sequence[np.ndarray], weight: float) -> list[np.ndarray]:
    """FedBuff's fold of one update, in place: ``buffer_sum += weight * (client - base)``, where
    ``base`` is the global model the client trained from and ``weight`` is ``s(staleness)``.
    ``buffer_sum`` must be floating-point (start it at zeros). Returns ``buffer_sum``."""
    _check_shapes(client, buffer_sum, "client")
    _check_shapes(base, buffer_sum, "base")
    _check_float(buffer_sum, "buffer_sum")
    scratch = Scratch()
    for total, update, origin in zip(buffer_sum, client, base):
        accumulate_tensor(total, update, origin, weight, scratch)
    return buffer_sum


def fedbuff_step(current: Sequence[np.ndarray], buffer_sum: list[np.ndarray], count: int,
                 server_learning_rate: float, *,
                 out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """FedBuff's server step ``current + server_learning_rate * buffer_sum / count``: the mean
    of the ``count`` staleness-weighted deltas, scaled by the server learning rate. Written
    into new arrays of the buffer's dtypes, or into ``out`` (which may be ``buffer_sum``)."""
    if count < 1:
        raise ValueError(f"count must be >= 1 (updates in the buffer); received {count}")
    _check_shapes(buffer_sum, current, "buffer_sum")
    target = [np.empty_like(total) for total in buffer_sum] if out is None else out
    _check_shapes(target, current, "out")
    _check_float(target, "out")
    factor = float(server_learning_rate) / count
    for written, now, total in zip(target, current, buffer_sum):
        step_tensor(written, now, total, factor)
    return target
