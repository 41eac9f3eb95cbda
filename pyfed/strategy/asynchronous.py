"""Asynchronous strategies: FedAsync (Xie et al., 2019) and FedBuff (Nguyen et al., 2022).

(The module is not called ``async``: that is a keyword.) ``asynchronous = True`` tells the
server to run its async driver, which keeps every free client busy and uses the same streaming
interface as a synchronous round, where a round is a global model *version* whose size the
strategy decides::

    plan = strategy.configure_fit(version, parameters, free_clients)  # a job for every one
    strategy.begin(version, parameters)        # parameters: the version's global weights
    result = strategy.screen(result)           # FitResult with .staleness and .base set
    strategy.add(result)                       # fold it (may refuse it: UpdateRejected)
    if strategy.ready():                       # FedAsync: every update; FedBuff: K of them
        parameters, metrics = strategy.finish()
        stats = strategy.version_stats()       # {"updates", "staleness", "clients"}

``result.base`` is the global weights of the version the client trained from (the arrays sent
in its FIT; the strategy keeps a reference only until the fold returns), and
``result.staleness`` the current version minus that version.

Integer and bool tensors follow FedAvg: they are mixed (FedAsync) or stepped (FedBuff) in
float64 like any value and rounded to the nearest integer when the version is published;
float16 tensors are computed in float64 and cast back. Neither strategy copies an update.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigurationError
from .async_base import AsyncStrategy, work_arrays
from .async_rules import accumulate_tensor, mix_tensor, step_tensor
from .base import FitResult
from .staleness import check_staleness_options


class FedAsync(AsyncStrategy):
    """FedAsync: each update is mixed into the global model as it arrives,
    ``x <- (1 - alpha_t) x + alpha_t x_client`` with ``alpha_t = mixing * s(staleness)``, and
    every update publishes a new version.

    Args:
        mixing: ``alpha``, in (0, 1].
        staleness: ``"constant"``, ``"polynomial"`` (``(s + 1) ** -staleness_exponent``) or
            ``"hinge"`` (1 while ``s <= hinge_b``, then ``1 / (hinge_a * (s - hinge_b) + 1)``).
        max_staleness: updates staler than this are refused (None: none is).

    Memory: one model-sized working copy, from recycled blocks (see FedAvg); no update is
    copied. Other keyword arguments as :class:`FedAvg`.
    """

    def __init__(self, *, mixing: float = 0.6, staleness: str = "polynomial",
                 staleness_exponent: float = 0.5, hinge_a: float = 10, hinge_b: float = 4,
                 max_staleness: int | None = None, **kwargs) -> None:
        check_staleness_options(staleness, staleness_exponent, hinge_a, hinge_b, max_staleness,
                                mixing=mixing)
        super().__init__(staleness=staleness, staleness_exponent=staleness_exponent,
                         hinge_a=hinge_a, hinge_b=hinge_b, max_staleness=max_staleness, **kwargs)
        self.mixing = float(mixing)

    def __repr__(self) -> str:
        return f"FedAsync(mixing={self.mixing:g}, {self._options()})"

    def _start(self) -> None:
        self._mixed: list[np.ndarray] | None = None  # made by the first fold of a version

    def _fold(self, result: FitResult) -> None:
        self._check_update(result)
        alpha = self.mixing * self.weight(result.staleness)
        scale = self._clip_scale(result)
        reference = self._delta_reference(result) if scale != 1.0 else None
        if self._mixed is None:  # the first mix reads the global weights, writes our copy
            self._mixed = work_arrays(self._current, self._blocks)
            source = self._current
        else:
            source = self._mixed
        for index, (out, now, update) in enumerate(zip(self._mixed, source, result.weights)):
            clip = reference is not None and np.asarray(self._current[index]).dtype.kind == "f"
            mix_tensor(out, now, update, alpha, self._scratch,
                       reference[index] if clip else None, scale if clip else 1.0)

    def ready(self) -> bool:
        return bool(self._seen)

    def _publish(self) -> list[np.ndarray]:
        mixed, self._mixed = self._mixed, None
        return mixed


class FedBuff(AsyncStrategy):
    """FedBuff: updates are buffered as staleness-weighted deltas,
    ``buffer += s(staleness) * (x_client - x_base)``; after ``buffer_size`` (K) of them a new
    version ``x + server_learning_rate * buffer / K`` is published (the mean of the weighted
    deltas; clients' ``num_examples`` do not weight it, as in the paper).

    Args:
        buffer_size: K, updates per version.
        server_learning_rate: ``eta_g``, > 0.
        staleness, staleness_exponent, hinge_a, hinge_b, max_staleness: as :class:`FedAsync`
            (the paper's ``1 / sqrt(1 + staleness)`` is the default polynomial).

    Memory: one model-sized buffer (recycled across versions); no update is copied. A
    checkpoint taken mid-version holds the buffer (:meth:`state_dict`): after
    :meth:`load_state_dict`, the next :meth:`begin` (of the same version) continues it.
    """

    def __init__(self, *, buffer_size: int = 10, staleness: str = "polynomial",
                 staleness_exponent: float = 0.5, server_learning_rate: float = 1.0,
                 max_staleness: int | None = None, hinge_a: float = 10, hinge_b: float = 4,
                 **kwargs) -> None:
        check_staleness_options(staleness, staleness_exponent, hinge_a, hinge_b, max_staleness,
                                buffer_size=buffer_size,
                                server_learning_rate=server_learning_rate)
        super().__init__(staleness=staleness, staleness_exponent=staleness_exponent,
                         hinge_a=hinge_a, hinge_b=hinge_b, max_staleness=max_staleness, **kwargs)
        self.buffer_size = int(buffer_size)
        self.server_learning_rate = float(server_learning_rate)
        self._restored: dict | None = None  # a checkpoint's buffer, for the next begin()

    def __repr__(self) -> str:
        return (f"FedBuff(buffer_size={self.buffer_size}, "
                f"server_learning_rate={self.server_learning_rate:g}, {self._options()})")

    def begin(self, server_round: int, parameters: list[np.ndarray]) -> None:
        restored = self._restored
        if restored is not None and restored["version"] != server_round:
            raise ConfigurationError(
                f"the checkpoint holds FedBuff's buffer of version {restored['version']} "
                f"({restored['count']} updates); version {server_round} begins")
        super().begin(server_round, parameters)
        if restored is not None:
            self._adopt(restored)  # raises, leaving it pending, if the shapes do not match
            self._restored = None

    def _start(self) -> None:
        if self._round is None:
            self._buffer = None
            return
        self._buffer = work_arrays(self._current, self._blocks)
        for total in self._buffer:
            total.fill(0)

    def _fold(self, result: FitResult) -> None:
        self._check_update(result)
        base = result.base
        if base is None:
            raise ValueError("FedBuff needs result.base, the global weights the client trained "
                             f"from (the server's async driver sets it); {result.client}'s "
                             "result has none")
        if len(base) != len(self._current) or any(
                np.shape(b) != np.shape(c) for b, c in zip(base, self._current)):
            raise ValueError(f"{result.client}'s result.base does not match the model's shapes")
        weight = self.weight(result.staleness)
        scale = self._clip_scale(result)  # the delta is from base: clipping scales its weight
        for total, update, origin, model in zip(self._buffer, result.weights, base,
                                                self._current):
            clip = scale if np.asarray(model).dtype.kind == "f" else 1.0
            accumulate_tensor(total, update, origin, weight * clip, self._scratch)

    def ready(self) -> bool:
        return len(self._seen) >= self.buffer_size

    def _publish(self) -> list[np.ndarray]:
        # In place: the buffer becomes the new global model; the next version takes another
        # block (RecycledBlocks hands this one out again only once nothing references it).
        factor = self.server_learning_rate / len(self._seen)
        for total, model in zip(self._buffer, self._current):
            step_tensor(total, model, total, factor)
        published, self._buffer = self._buffer, None
        return published

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["buffer"] = None
        if self._round is not None and self._seen:
            state["buffer"] = {
                "version": self._round, "count": len(self._seen),
                "sum": [total.copy() for total in self._buffer],
                "staleness": [s for _, s in self._seen], "clients": [c for c, _ in self._seen],
                "fit_metrics": [[n, dict(m)] for n, m in self._fit_metrics]}
        elif self._restored is not None:  # loaded, not yet begun: keep it for the next save
            state["buffer"] = self._restored
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        buffer = state.get("buffer")
        if buffer is None:
            self._restored = None
            return
        try:
            restored = {"version": int(buffer["version"]), "count": int(buffer["count"]),
                        "sum": [np.asarray(total) for total in buffer["sum"]],
                        "staleness": [int(s) for s in buffer["staleness"]],
                        "clients": [str(c) for c in buffer["clients"]],
                        "fit_metrics": [(int(n), dict(m)) for n, m in buffer["fit_metrics"]]}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad FedBuff buffer in checkpoint: {exc!r}") from None
        count = restored["count"]
        if not (1 <= count and len(restored["staleness"]) == len(restored["clients"])
                == len(restored["fit_metrics"]) == count):
            raise ConfigurationError(f"bad FedBuff buffer in checkpoint: count {count} does "
                                     "not match its lists")
        self._restored = restored
        if self._round == restored["version"]:  # loaded mid-version: continue at once
            self._adopt(restored)
            self._restored = None

    def _adopt(self, restored: dict) -> None:
        sums = restored["sum"]
        if len(sums) != len(self._buffer) or any(
                s.shape != b.shape for s, b in zip(sums, self._buffer)):
            raise ConfigurationError("the checkpoint's FedBuff buffer does not match the "
                                     "model's shapes")
        for total, saved in zip(self._buffer, sums):
            np.copyto(total, saved, casting="same_kind")
        self._seen = list(zip(restored["clients"], restored["staleness"]))
        self._fit_metrics = [(n, dict(m)) for n, m in restored["fit_metrics"]]

