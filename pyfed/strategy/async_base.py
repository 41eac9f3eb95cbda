"""What the asynchronous strategies share (:class:`AsyncStrategy`): staleness weighting,
``max_staleness``, a job for every free client, per-version statistics, and the working arrays
they compute in. The strategies themselves are in :mod:`pyfed.strategy.asynchronous`."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ConfigurationError, UpdateRejected
from .async_rules import Scratch
from .base import FitResult
from .fedavg import FedAvg, _config
from .staleness import check_staleness_options, staleness_weight
from .weighted_sum import RecycledBlocks, _empty_arrays, cast_to

logger = logging.getLogger("pyfed")


def work_arrays(template: list[np.ndarray], blocks: RecycledBlocks) -> list[np.ndarray]:
    """Uninitialized arrays shaped as ``template``, from recycled ``blocks``, where each tensor
    is computed: float32/float64 in their own dtype, the rest (float16, integers, bool) in
    float64 (as FedAvg sums them)."""
    dtypes = []
    for array in template:
        dtype = np.asarray(array).dtype
        dtypes.append(dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64))
    return _empty_arrays([np.shape(a) for a in template], dtypes, blocks)


class AsyncStrategy(FedAvg):
    """What FedAsync and FedBuff share: staleness weighting, ``max_staleness``, a job for every
    free client, per-version statistics. Subclasses implement ``_fold``, ``ready`` and
    ``_publish``. Other keyword arguments as :class:`FedAvg` (``fraction_fit`` has no effect:
    every client offered gets a job)."""

    asynchronous = True

    def __init__(self, *, staleness: str = "polynomial", staleness_exponent: float = 0.5,
                 hinge_a: float = 10, hinge_b: float = 4, max_staleness: int | None = None,
                 evaluate_every: int = 1, **kwargs) -> None:
        check_staleness_options(staleness, staleness_exponent, hinge_a, hinge_b, max_staleness)
        if isinstance(evaluate_every, bool) or not isinstance(evaluate_every, int) or evaluate_every < 1:
            raise ConfigurationError(f"evaluate_every must be an integer >= 1; received "
                                     f"{evaluate_every!r}")
        #: Evaluate (evaluate_fn, test_data) every this many versions, and at the last one.
        self.evaluate_every = evaluate_every
        super().__init__(**kwargs)
        self.staleness = staleness
        self.staleness_exponent = float(staleness_exponent)
        self.hinge_a, self.hinge_b = float(hinge_a), float(hinge_b)
        self.max_staleness = None if max_staleness is None else int(max_staleness)
        if self.fraction_fit != 1.0:
            logger.warning("%s: fraction_fit=%g has no effect; every free client trains",
                           type(self).__name__, self.fraction_fit)
        self._scratch = Scratch()
        self._seen: list[tuple[str, int]] = []  # (client, staleness) this version
        self._last_seen: list[tuple[str, int]] = []  # the version finished last

    def _options(self) -> str:
        text = f"staleness={self.staleness!r}"
        if self.staleness == "polynomial":
            text += f", staleness_exponent={self.staleness_exponent:g}"
        elif self.staleness == "hinge":
            text += f", hinge_a={self.hinge_a:g}, hinge_b={self.hinge_b:g}"
        text += f", max_staleness={self.max_staleness}"
        if self.max_update_norm is not None:
            text += (f", max_update_norm={self.max_update_norm:g}, "
                     f"update_norm_action={self.update_norm_action!r}")
        return text

    def weight(self, staleness: int) -> float:
        """``s(staleness)`` with this strategy's staleness function."""
        return staleness_weight(staleness, self.staleness, self.staleness_exponent,
                                self.hinge_a, self.hinge_b)

    def configure_fit(self, server_round, parameters, clients):
        config = _config(self.on_fit_config_fn, "on_fit_config_fn", server_round)
        return [(name, dict(config)) for name in sorted(set(clients))]

    def begin(self, server_round: int, parameters: list[np.ndarray]) -> None:
        # ``parameters`` are kept by reference and only read, as FedAvg does.
        self._round = server_round
        self._current = list(parameters)
        self._fit_metrics = []
        self._seen = []
        self._start()

    def _refuse_stale(self, result: FitResult) -> None:
        staleness = result.staleness
        if isinstance(staleness, bool) or not isinstance(staleness, (int, np.integer)):
            raise UpdateRejected(f"update staleness {staleness!r} is not an integer")
        if staleness < 0:
            raise UpdateRejected(f"update has staleness {staleness}: it claims a version "
                                 "after the current one")
        if self.max_staleness is not None and staleness > self.max_staleness:
            raise UpdateRejected(f"update is {staleness} versions stale; max_staleness is "
                                 f"{self.max_staleness}")

    def _delta_reference(self, result: FitResult) -> list[np.ndarray]:
        """An update's delta is measured from the model its client trained from."""
        if result.base is not None:
            return list(result.base)
        return super()._delta_reference(result)

    def screen(self, result: FitResult) -> FitResult:
        self._refuse_stale(result)  # staleness only grows: refuse before the norm pass
        return super().screen(result)

    def add(self, result: FitResult) -> None:
        if self._round is None:
            raise RuntimeError(f"{type(self).__name__}.add called before begin()")
        self._refuse_stale(result)
        result = self.screen(result)  # free when the server screened it already
        self._fold(result)
        self._fit_metrics.append((result.num_examples, dict(result.metrics)))
        self._seen.append((result.client, int(result.staleness)))

    def add_last(self, result: FitResult) -> None:
        self.add(result)

    def _check_update(self, result: FitResult) -> None:
        if len(result.weights) != len(self._current):
            raise ValueError(f"update has {len(result.weights)} arrays; the model has "
                             f"{len(self._current)}")
        for index, (array, model) in enumerate(zip(result.weights, self._current)):
            if np.shape(array) != np.shape(model):
                raise ValueError(f"update array {index} has shape {np.shape(array)}; the "
                                 f"model's is {np.shape(model)}")

    def ready(self) -> bool:
        """True when a new version should be published now (:meth:`finish`)."""
        raise NotImplementedError

    def finish(self) -> tuple[list[np.ndarray], dict]:
        """The new version's weights (in the model's dtypes) and its aggregated fit metrics.
        With no update folded the weights are the version's own, unchanged."""
        if self._round is None:
            raise RuntimeError(f"{type(self).__name__}.finish called before begin()")
        try:
            dtypes = [np.asarray(p).dtype for p in self._current]
            new = list(self._current) if not self._seen else cast_to(self._publish(), dtypes)
            metrics = self._aggregate_metrics(self.fit_metrics_aggregation_fn, self._fit_metrics)
        finally:
            self._last_seen, self._seen = self._seen, []
            self._round, self._current, self._fit_metrics = None, [], []
            self._start()
        return new, metrics

    def version_stats(self) -> dict:
        """This version's updates so far, or (between :meth:`finish` and the next
        :meth:`begin`) the last finished version's: ``{"updates": n, "staleness": [s, ...],
        "clients": [name, ...]}``, in the order they were folded."""
        seen = self._seen if self._round is not None else self._last_seen
        return {"updates": len(seen), "staleness": [s for _, s in seen],
                "clients": [c for c, _ in seen]}
