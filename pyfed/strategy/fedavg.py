"""FedAvg (McMahan et al., 2017): the examples-weighted mean of the clients' weights.

FedAvg is also the base of every variant: it owns client sampling, per-round configs, metrics
and evaluation, and runs a round as three hooks a subclass may override::

    _start()                 begin(): make the round's accumulator
    _accumulate(result)      add(): fold (or copy) one result
    _combine() -> arrays     finish(): the aggregate of this round's updates
    _server_update(round, current, aggregate) -> arrays    finish(): e.g. a server optimizer

finish() casts the result back to the model's dtypes (a no-op for FedAvg's own result).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from ..errors import ConfigurationError, RoundError, UpdateRejected
from ..wire.limits import MAX_METRICS
from ..safe_text import printable
from . import _checks
from .aggregate import (RecycledBlocks, WeightedSum, cast_to, common_metrics, update_norm,
                        weighted_loss, weighted_metrics)
from .base import EvaluateResult, FitResult, Strategy

logger = logging.getLogger("pyfed")

# Rounds asking at most this many clients sum the weights plainly in float32 (error at most
# 15 float32 steps); larger ones sum deltas from the global weights (see FedAvg._start).
PLAIN_SUM_MAX_CLIENTS = 16


class FedAvg(Strategy):
    """Federated Averaging: sampled clients train; their weights are averaged by ``num_examples``.

    Args:
        fraction_fit: fraction of the connected clients asked to train each round, in (0, 1].
        fraction_evaluate: fraction asked to evaluate, in [0, 1]; 0 turns federated evaluation
            off.
        min_fit_clients: clients asked to train at least (sample size is
            ``max(floor(n * fraction_fit), min_fit_clients)``, capped at ``n``); also the
            number of answers a round needs to close at its deadline.
        min_evaluate_clients: the same for evaluation.
        min_available_clients: clients that must be connected for a round to start.
        evaluate_fn: ``evaluate_fn(server_round, parameters, config) -> (loss, metrics) | None``
            for centralized evaluation on the server (``config`` is ``{}``, as in Flower).
        on_fit_config_fn / on_evaluate_config_fn: ``fn(server_round) -> dict`` sent to every
            sampled client with FIT / EVALUATE.
        fit_metrics_aggregation_fn / evaluate_metrics_aggregation_fn:
            ``fn([(num_examples, metrics), ...]) -> dict``; default: examples-weighted mean of
            each numeric metric.
        seed: seeds the client sampling; the client list is sorted first, so the seed alone
            fixes who is chosen each round.
        max_update_norm: bound on an update's L2 norm as a change to the model: the norm of
            ``weights - global_weights`` over the floating-point tensors (the norm-bounding
            defence against backdoors, Sun et al., 2019). None (the default) bounds nothing
            and costs nothing; set, it costs one more pass over each update.
        update_norm_action: what an update beyond ``max_update_norm`` gets: ``"clip"`` (its
            delta is scaled down to the bound before it is folded, so no client moves the
            mean by more than its weight's share of the bound) or ``"reject"`` (refused; the
            client is told its norm and the bound).

    A client's weight is the ``num_examples`` it declares, which the server caps at
    ``FL_Server(max_examples=...)``; that bounds its influence only weakly (see there), while
    ``max_update_norm`` bounds the update itself.

    The average streams: each result is folded into a running sum of the deltas from the
    global weights as it arrives, so the strategy holds one model-sized accumulator however
    many clients there are.
    """

    def __init__(self, *, fraction_fit: float = 1.0, fraction_evaluate: float = 1.0,
                 min_fit_clients: int = 1, min_evaluate_clients: int = 1,
                 min_available_clients: int = 1, evaluate_fn=None, on_fit_config_fn=None,
                 on_evaluate_config_fn=None, fit_metrics_aggregation_fn=None,
                 evaluate_metrics_aggregation_fn=None, seed: int | None = None,
                 max_update_norm: float | None = None,
                 update_norm_action: str = "clip") -> None:
        self.fraction_fit = _checks.fraction("fraction_fit", fraction_fit)
        self.fraction_evaluate = _checks.fraction("fraction_evaluate", fraction_evaluate,
                                                  allow_zero=True)
        self.min_fit_clients = _checks.integer("min_fit_clients", min_fit_clients, 1)
        self.min_evaluate_clients = _checks.integer("min_evaluate_clients",
                                                    min_evaluate_clients, 1)
        self.min_available_clients = _checks.integer("min_available_clients",
                                                     min_available_clients, 1)
        self.evaluate_fn = _checks.optional_callable("evaluate_fn", evaluate_fn)
        self.on_fit_config_fn = _checks.optional_callable("on_fit_config_fn", on_fit_config_fn)
        self.on_evaluate_config_fn = _checks.optional_callable("on_evaluate_config_fn",
                                                               on_evaluate_config_fn)
        self.fit_metrics_aggregation_fn = _checks.optional_callable(
            "fit_metrics_aggregation_fn", fit_metrics_aggregation_fn)
        self.evaluate_metrics_aggregation_fn = _checks.optional_callable(
            "evaluate_metrics_aggregation_fn", evaluate_metrics_aggregation_fn)
        if seed is not None:
            seed = _checks.integer("seed", seed, 0)
        self.seed = seed
        if max_update_norm is not None:
            max_update_norm = _checks.real("max_update_norm", max_update_norm, low=0.0,
                                           low_open=True, high=math.inf)
        self.max_update_norm = max_update_norm
        if update_norm_action not in ("clip", "reject"):
            raise ConfigurationError("update_norm_action must be 'clip' or 'reject'; received "
                                     f"{update_norm_action!r}")
        self.update_norm_action = update_norm_action
        if self.min_available_clients < self.min_fit_clients:
            logger.warning("min_available_clients (%d) is below min_fit_clients (%d): a round "
                           "may start with too few clients to close",
                           self.min_available_clients, self.min_fit_clients)
        # Separate streams, so whether evaluation samples never changes who trains.
        fit_seed, evaluate_seed = np.random.SeedSequence(seed).spawn(2)
        self._fit_rng = np.random.default_rng(fit_seed)
        self._evaluate_rng = np.random.default_rng(evaluate_seed)
        self._round: int | None = None
        self._current: list[np.ndarray] = []
        self._fit_metrics: list[tuple[int, dict]] = []
        self._blocks = RecycledBlocks()  # accumulator memory, reused across rounds
        self._fit_size: int | None = None  # clients asked this round, from configure_fit
        # A secure round's mean (add_secure_sum), which finish() takes instead of _combine().
        self._secure_mean: list[np.ndarray] | None = None

    def __repr__(self) -> str:
        bound = ("" if self.max_update_norm is None else
                 f", max_update_norm={self.max_update_norm:g}, "
                 f"update_norm_action={self.update_norm_action!r}")
        return (f"{type(self).__name__}(fraction_fit={self.fraction_fit}, "
                f"fraction_evaluate={self.fraction_evaluate}, "
                f"min_fit_clients={self.min_fit_clients}, seed={self.seed}{bound})")

    # -- sampling ---------------------------------------------------------------------------

    def num_fit_clients(self, num_available: int) -> int:
        return _sample_size(num_available, self.fraction_fit, self.min_fit_clients)

    def num_evaluate_clients(self, num_available: int) -> int:
        return _sample_size(num_available, self.fraction_evaluate, self.min_evaluate_clients)

    def configure_fit(self, server_round, parameters, clients):
        pool = sorted(set(clients))
        if len(pool) < self.min_available_clients:
            raise RoundError(f"round {server_round}: {len(pool)} clients connected; "
                             f"min_available_clients is {self.min_available_clients}")
        chosen = _sample(self._fit_rng, pool, self.num_fit_clients(len(pool)))
        config = _config(self.on_fit_config_fn, "on_fit_config_fn", server_round)
        self._fit_size = len(chosen)  # how begin() sums this round (see _start)
        return [(name, dict(config)) for name in chosen]

    def configure_evaluate(self, server_round, parameters, clients):
        if self.fraction_evaluate == 0:
            return []
        pool = sorted(set(clients))
        if len(pool) < self.min_available_clients:
            logger.warning("round %d: no federated evaluation: %d clients connected; "
                           "min_available_clients is %d", server_round, len(pool),
                           self.min_available_clients)
            return []
        chosen = _sample(self._evaluate_rng, pool, self.num_evaluate_clients(len(pool)))
        config = _config(self.on_evaluate_config_fn, "on_evaluate_config_fn", server_round)
        return [(name, dict(config)) for name in chosen]

    # -- streaming aggregation --------------------------------------------------------------

    def begin(self, server_round: int, parameters: list[np.ndarray]) -> None:
        # ``parameters`` are the global weights the server sent; kept by reference (not a
        # pooled buffer) and read again in finish(), so they must not change until then.
        self._round = server_round
        self._current = list(parameters)
        self._fit_metrics = []
        self._start()

    def screen(self, result: FitResult) -> FitResult:
        """With ``max_update_norm``: measure the update's delta norm (one pass over it and the
        global weights), refuse it if it is beyond the bound and the action is ``"reject"``,
        and return it with its ``delta_norm``. Without: the result as it is, at no cost."""
        if self.max_update_norm is None:
            return result
        norm = result.delta_norm
        if norm is None:
            norm = update_norm(result.weights, self._delta_reference(result))
            result = dataclasses.replace(result, delta_norm=norm)
        if not math.isfinite(norm):
            raise UpdateRejected(f"update norm is {norm}; it must be finite")
        if norm > self.max_update_norm and self.update_norm_action == "reject":
            raise UpdateRejected(
                f"update norm {norm:.6g} exceeds max_update_norm {self.max_update_norm:g} (the "
                "L2 norm of the update's change to the global model)")
        return result

    def _delta_reference(self, result: FitResult) -> list[np.ndarray]:
        """The weights an update's delta is measured from: the round's global weights."""
        if self._round is None:
            raise RuntimeError(f"{type(self).__name__}.screen called before begin()")
        return self._current

    def _clip_scale(self, result: FitResult) -> float:
        """The factor max_update_norm's clip applies to this (screened) result's delta."""
        norm = result.delta_norm
        if self.max_update_norm is None or norm is None or norm <= self.max_update_norm:
            return 1.0
        return self.max_update_norm / norm

    def add(self, result: FitResult) -> None:
        self._add(result, self._accumulate)

    def add_last(self, result: FitResult) -> None:
        # FedAvg's own fold computes the mean as it folds the last result (one pass over the
        # model less, on the round's critical path); a subclass's _accumulate is left alone.
        own_fold = type(self)._accumulate is FedAvg._accumulate
        self._add(result, self._accumulate_last if own_fold else self._accumulate)

    def _add(self, result: FitResult, fold) -> None:
        if self._round is None:
            raise RuntimeError(f"{type(self).__name__}.add called before begin()")
        result = self.screen(result)  # the server screened it already: then this is free
        fold(result)
        self._fit_metrics.append((result.num_examples, dict(result.metrics)))

    def finish(self) -> tuple[list[np.ndarray], dict]:
        if self._round is None:
            raise RuntimeError(f"{type(self).__name__}.finish called before begin()")
        server_round, current = self._round, self._current
        try:
            if not self._fit_metrics and self._secure_mean is None:
                raise RuntimeError(f"{type(self).__name__}.finish: round {server_round} "
                                   "has no results")
            aggregate = self._combine() if self._secure_mean is None else self._secure_mean
            new = self._server_update(server_round, current, aggregate)
            parameters = cast_to(new, [np.asarray(p).dtype for p in current])
            metrics = self._aggregate_metrics(self.fit_metrics_aggregation_fn, self._fit_metrics)
        finally:
            self._round, self._current, self._fit_metrics = None, [], []
            self._fit_size, self._secure_mean = None, None
            self._start()
        return parameters, metrics

    def _start(self) -> None:
        # Sums are kept in the model's own float dtype (half the memory of float64, see
        # WeightedSum). A plain float32 sum's error grows with the number of updates (up to
        # N - 1 float32 steps of |x|); summing the deltas from the weights the clients
        # started from rounds relative to the small deltas instead, at the cost of reading
        # those weights once more per update (about 5% of a 3-client round in the bench). So
        # small rounds, whose plain-sum error stays within 15 steps (1e-6 relative), sum the
        # weights themselves, and larger ones (or when the size is unknown) sum deltas.
        if self._round is None:
            self._sum = None
            return
        # A norm bound sums deltas too: clipping a delta is then just a smaller weight.
        plain = (self._fit_size is not None and self._fit_size <= PLAIN_SUM_MAX_CLIENTS
                 and self.max_update_norm is None)
        self._sum = WeightedSum(self._current, reference=None if plain else self._current,
                                blocks=self._blocks, own_dtype=True)

    def _accumulate(self, result: FitResult) -> None:
        self._sum.add(result.weights, result.num_examples, delta_scale=self._clip_scale(result))

    def _accumulate_last(self, result: FitResult) -> None:
        self._sum.add(result.weights, result.num_examples, last=True,
                      delta_scale=self._clip_scale(result))

    def _combine(self) -> list[np.ndarray]:
        return self._sum.mean(cast=False, in_place=True)  # the accumulator is replaced next

    def _server_update(self, server_round: int, current: list[np.ndarray],
                       aggregate: list[np.ndarray]) -> list[np.ndarray]:
        return aggregate

    # -- secure aggregation (pyfed.privacy.SecureAggregation) ------------------------------

    def secure_sum_request(self, server_round: int) -> dict:
        """What each client of a secure round sums: its weights, weighted by its examples."""
        return {"vector": "weights"}

    def add_secure_sum(self, total_weight: float, weighted_sum: list[np.ndarray], count: int,
                       extras: dict, metrics: list[dict] = ()) -> None:
        """A secure round's only result, instead of add(): ``sum_i r_i w_i`` and ``sum_i r_i``
        over ``count`` clients (r_i: client i's examples over max_weight). The server
        optimizers (_server_update) then see the mean as they would see FedAvg's."""
        if self._round is None:
            raise RuntimeError(f"{type(self).__name__}.add_secure_sum called before begin()")
        if not total_weight > 0:
            raise RoundError(f"round {self._round}: the secure sum's total weight is "
                             f"{total_weight:g}; it must be positive")
        self._secure_mean = [np.asarray(s, dtype=np.float64) / total_weight for s in weighted_sum]
        # The examples behind each client's metrics stay hidden: each counts once.
        self._fit_metrics = [(1, dict(m)) for m in metrics]

    # -- evaluation -------------------------------------------------------------------------

    def aggregate_evaluate(self, server_round: int,
                           results: list[EvaluateResult]) -> tuple[float | None, dict]:
        usable = [r for r in results if r.num_examples > 0]
        loss = weighted_loss((r.num_examples, r.loss) for r in usable)
        metrics = self._aggregate_metrics(self.evaluate_metrics_aggregation_fn,
                                          [(r.num_examples, dict(r.metrics)) for r in usable])
        return loss, metrics

    def evaluate(self, server_round: int, parameters: list[np.ndarray]):
        if self.evaluate_fn is None:
            return None
        result = self.evaluate_fn(server_round, parameters, {})
        if result is None:
            return None
        loss, metrics = result
        return float(loss), dict(metrics or {})

    @staticmethod
    def _aggregate_metrics(fn, pairs: list[tuple[int, dict]]) -> dict:
        """The clients' metrics, aggregated. At most MAX_METRICS names (the most reported) go
        in, whatever each client invents; and a failure here (a custom ``fn`` meeting a
        metric it did not expect) costs the round's metrics, never the round."""
        if not pairs:
            return {}
        pairs = common_metrics(pairs, MAX_METRICS)
        try:
            return dict((fn or weighted_metrics)(pairs) or {})
        except Exception as exc:  # noqa: BLE001  (the values come from the clients)
            logger.warning("the clients' metrics could not be aggregated (%s: %s); this "
                           "round reports none", type(exc).__name__, printable(exc))
            return {}

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"strategy": type(self).__name__,
                "rng_fit": self._fit_rng.bit_generator.state,
                "rng_evaluate": self._evaluate_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        name = state.get("strategy")
        if name != type(self).__name__:
            raise ConfigurationError(f"the checkpoint holds {name} state; this strategy is "
                                     f"{type(self).__name__}")
        try:
            self._fit_rng.bit_generator.state = state["rng_fit"]
            self._evaluate_rng.bit_generator.state = state["rng_evaluate"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad sampling state in checkpoint: {exc!r}") from None


def _sample_size(num_available: int, fraction: float, minimum: int) -> int:
    # The epsilon keeps e.g. 100 * 0.29 = 28.999999999999996 from sampling 28.
    return min(max(math.floor(num_available * fraction + 1e-9), minimum), num_available)


def _sample(rng: np.random.Generator, pool: list[str], size: int) -> list[str]:
    if size <= 0:
        return []
    picks = rng.choice(len(pool), size=size, replace=False)
    return [pool[i] for i in sorted(picks.tolist())]


def _config(fn, name: str, server_round: int) -> dict:
    if fn is None:
        return {}
    config = fn(server_round)
    if not isinstance(config, dict):
        raise ConfigurationError(f"{name} must return a dict; returned {type(config).__name__}")
    return config


def arrays_or_none(value, name: str) -> list[np.ndarray] | None:
    """Optimizer state from a checkpoint: None, or a list of float64 arrays (lists accepted,
    for state that went through JSON)."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{name} in checkpoint must be a list of arrays or None; "
                                 f"received {type(value).__name__}")
    return [np.array(v, dtype=np.float64) for v in value]
