"""User-level DP-FedAvg (McMahan et al. 2018) as a strategy wrapper, with adaptive clipping
(Andrew et al. 2021) and dp-accounting's RDP accountant.

A round, as the analysis assumes it:

1. Poisson sampling: each of the N idle clients joins independently with probability
   ``q = fraction_fit`` of the wrapped strategy. An empty sample still runs the round.
2. Each sampled client's delta from the global model is clipped to L2 norm C, on the server or
   (``clipping="client"``) on the client, and the server clips again as a guard.
3. The clipped deltas are summed with weight 1 each (one model-sized float64 accumulator), and
   ``sum / (q N) + N(0, (z C / (q N))^2)`` is the noised mean delta: the fixed denominator
   q N, not the number that answered, so one client changes the mean by at most C / (q N).
4. The wrapped strategy's server update runs on ``global + noised mean delta``: FedAvg takes it
   as it is, FedAvgM's momentum and the FedOpt family's moments are post-processing of a private
   output and cost no privacy.

Every sampled client must answer (the server's retry rule resamples a round that lost one), and
the accountant counts a round when its result is applied (``finish``), one
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` each.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from ...errors import ConfigurationError, RoundError, UpdateRejected
from ...strategy.base import Strategy
from ...strategy.weighted_sum import cast_to
from . import checks as dp_checks
from .accountant import PrivacyLedger
from .clipped_sum import ClippedSum
from .calibration import (adaptive_noise_multiplier, default_count_stddev, delta_norm,
                      noised_unclipped_fraction, update_clipping_norm, validate_dp_config)

logger = logging.getLogger("pyfed")

# With clipping="client" an honest update arrives clipped to C and rounded to the model's
# dtype, so its measured norm may sit a little above or below C. Counted unclipped (the
# adaptive-clipping bit) only below C * (1 - this), so a clipped update is never counted so.
CLIENT_CLIP_TOLERANCE = 1e-3


class DifferentialPrivacy(Strategy):
    """User-level differential privacy for FedAvg and the strategies built on it.

    Args:
        strategy: a FedAvg, FedAvgM, FedProx, FedAdam, FedYogi or FedAdagrad (FedOpt's optimizer
            runs on the noised mean: post-processing). Its ``fraction_fit`` is the sampling rate
            q; its ``min_fit_clients`` has no effect (the sample is Poisson); its configs,
            evaluation and metrics aggregation are used as they are.
        noise_multiplier: z >= 0; the noise on the mean delta has std ``z C / (q N)``.
        clipping_norm: C > 0 for fixed clipping (required unless ``adaptive_clipping``).
        clipping: ``"server"`` clips each received update; ``"client"`` sends C in FIT
            (``config["dp_clip_norm"]``) and the client clips before sending (what secure
            aggregation needs); the server clips again, a no-op for an honest client.
        adaptive_clipping: C follows the ``target_quantile`` of the update norms, starting at
            ``initial_clipping_norm``, by ``C *= exp(-clip_norm_lr * (b - target_quantile))``
            with b the noised fraction of unclipped updates.
        clipped_count_stddev: sigma_b, the noise on the unclipped count (default q N / 20, the
            paper's). z must stay below 2 sigma_b.
        target_delta: the delta epsilon is reported at.
        max_epsilon: stop cleanly before a round that would take epsilon beyond it.

    Client-reported fit metrics (loss, accuracy) are aggregated as the wrapped strategy does and
    are NOT covered by the guarantee, nor is federated evaluation (``fraction_evaluate``);
    ``fit_metrics_aggregation_fn=lambda pairs: {}`` and ``fraction_evaluate=0`` on the wrapped
    strategy leave them out. Non-float tensors (step counters) keep the server's values.
    The noise comes from numpy's generator seeded from the OS (never from ``seed``, never
    checkpointed: its state would let a reader subtract the noise). A wrapped strategy's ``seed``
    fixes the Poisson samples, so whoever knows it knows who took part in each round.
    """

    allows_empty_rounds = True      # an empty Poisson sample still adds its noise
    requires_every_answer = True    # a round short of a sampled client is resampled

    def __init__(self, strategy, noise_multiplier: float, clipping_norm: float | None = None,
                 clipping: str = "server", adaptive_clipping: bool = False,
                 initial_clipping_norm: float = 0.1, target_quantile: float = 0.5,
                 clip_norm_lr: float = 0.2, target_delta: float = 1e-5,
                 max_epsilon: float | None = None, *,
                 clipped_count_stddev: float | None = None) -> None:
        dp_checks.check_wrappable(strategy)
        validate_dp_config(noise_multiplier=noise_multiplier, sampling_rate=strategy.fraction_fit)
        self.strategy = strategy
        self.noise_multiplier = float(noise_multiplier)
        self.clipping = dp_checks.clipping_mode(clipping)
        self.adaptive_clipping = bool(adaptive_clipping)
        if self.adaptive_clipping:
            if clipping_norm is not None:
                raise ConfigurationError(
                    "clipping_norm is the fixed clipping norm; with adaptive_clipping=True the "
                    "norm starts at initial_clipping_norm (received clipping_norm="
                    f"{clipping_norm!r})")
            self.clipping_norm = dp_checks.positive("initial_clipping_norm",
                                                    initial_clipping_norm)
        elif clipping_norm is None:
            raise ConfigurationError("clipping_norm is required (the L2 norm C each update is "
                                     "clipped to), unless adaptive_clipping=True")
        else:
            self.clipping_norm = dp_checks.positive("clipping_norm", clipping_norm)
        self.initial_clipping_norm = dp_checks.positive("initial_clipping_norm",
                                                        initial_clipping_norm)
        self.target_quantile = dp_checks.within("target_quantile", target_quantile, 0.0, 1.0)
        self.clip_norm_lr = dp_checks.positive("clip_norm_lr", clip_norm_lr)
        self.clipped_count_stddev = None
        if clipped_count_stddev is not None:
            self.clipped_count_stddev = dp_checks.positive("clipped_count_stddev",
                                                           clipped_count_stddev)
            if self.adaptive_clipping:
                adaptive_noise_multiplier(self.noise_multiplier, self.clipped_count_stddev)
        if max_epsilon is not None:
            max_epsilon = dp_checks.positive("max_epsilon", max_epsilon)
            if self.noise_multiplier == 0:
                raise ConfigurationError("max_epsilon needs noise: with noise_multiplier=0 "
                                         "epsilon is infinite after one round")
        self.max_epsilon = max_epsilon
        self.ledger = PrivacyLedger(strategy.fraction_fit, self.noise_multiplier, target_delta)
        self.target_delta = self.ledger.target_delta
        self._sampling_rng = np.random.default_rng(
            np.random.SeedSequence(strategy.seed).spawn(3)[2])
        self._noise_rng = np.random.default_rng()  # OS entropy, see the class docstring
        self._available: int | None = None  # N at this round's sampling
        self._round: int | None = None
        self._last_logs: dict = {}

    def __repr__(self) -> str:
        clip = (f"adaptive_clipping=True, initial_clipping_norm={self.initial_clipping_norm:g}, "
                f"target_quantile={self.target_quantile:g}" if self.adaptive_clipping
                else f"clipping_norm={self.clipping_norm:g}")
        return (f"DifferentialPrivacy({self.strategy!r}, noise_multiplier="
                f"{self.noise_multiplier:g}, {clip}, clipping={self.clipping!r}, "
                f"target_delta={self.target_delta:g}, max_epsilon={self.max_epsilon})")

    # -- what the server reads from the wrapped strategy ----------------------------------------

    @property
    def q(self) -> float:
        return self.strategy.fraction_fit

    @property
    def min_available_clients(self) -> int:
        return self.strategy.min_available_clients

    @property
    def min_evaluate_clients(self) -> int:
        return self.strategy.min_evaluate_clients

    # -- sampling -----------------------------------------------------------------------------

    def configure_fit(self, server_round, parameters, clients):
        pool = sorted(set(clients))
        if len(pool) < self.min_available_clients:
            raise RoundError(f"round {server_round}: {len(pool)} clients connected; "
                             f"min_available_clients is {self.min_available_clients}")
        expected = self.q * len(pool)
        self._check_count_noise(expected)  # before anyone trains on a round that cannot finish
        # The wrapped strategy's own per-round config (on_fit_config_fn, FedProx's mu...),
        # whichever clients it would have chosen itself.
        configs = dict(self.strategy.configure_fit(server_round, parameters, pool))
        template = next(iter(configs.values()), {})
        joins = self._sampling_rng.random(len(pool)) < self.q
        self._available = len(pool)
        extra = {"dp_clip_norm": self.clipping_norm} if self.clipping == "client" else {}
        return [(name, {**configs.get(name, template), **extra})
                for name, joined in zip(pool, joins) if joined]

    def _count_stddev(self, expected: float) -> float:
        return self.clipped_count_stddev or default_count_stddev(expected)

    def _check_count_noise(self, expected: float) -> None:
        if self.adaptive_clipping and self.noise_multiplier > 0:
            sigma_b = self._count_stddev(expected)
            if 2 * sigma_b <= self.noise_multiplier:
                raise ConfigurationError(
                    f"adaptive clipping with q*N = {expected:g} expected clients per round "
                    f"gives sigma_b = {sigma_b:g} (q*N/20), and it needs noise_multiplier < "
                    f"2*sigma_b = {2 * sigma_b:g}; received noise_multiplier="
                    f"{self.noise_multiplier:g}: pass clipped_count_stddev, sample more "
                    "clients, or lower the noise")

    # -- one round: clipped sum, noise, the wrapped strategy's server update ---------------------

    def begin(self, server_round: int, parameters: list[np.ndarray]) -> None:
        if self._available is None:
            raise RuntimeError("DifferentialPrivacy.begin called before configure_fit (the "
                               "round's N comes from the sampling)")
        self._round = server_round
        self._sum = ClippedSum(parameters)
        self._round_clip = self.clipping_norm
        self._fit_metrics: list[tuple[int, dict]] = []

    def screen(self, result):
        """Measure the update's delta norm (outside the server's lock); refuse a non-finite one."""
        if self._round is None:
            raise RuntimeError("DifferentialPrivacy.screen called before begin()")
        norm = result.delta_norm
        if norm is None:
            norm = delta_norm(result.weights, self._sum.current)
            result = dataclasses.replace(result, delta_norm=norm)
        if not math.isfinite(norm):
            raise UpdateRejected(f"update norm is {norm}; it must be finite")
        return result

    def add(self, result) -> None:
        if result.delta_norm is None or not math.isfinite(result.delta_norm):
            result = self.screen(result)  # not screened by the server (called directly)
        clip = self._round_clip
        bound = clip * (1 - CLIENT_CLIP_TOLERANCE) if self.clipping == "client" else clip
        self._sum.add(result.weights, result.delta_norm, clip, bound)
        self._fit_metrics.append((result.num_examples, dict(result.metrics)))

    def finish(self) -> tuple[list[np.ndarray], dict]:
        if self._round is None:
            raise RuntimeError("DifferentialPrivacy.finish called before begin()")
        try:
            summed, clip, expected = self._sum, self._round_clip, self.q * self._available
            noise_std = self._delta_noise_multiplier(expected) * clip / expected
            new = summed.noised_weights(expected, noise_std, self._noise_rng)
            new = self.strategy._server_update(self._round, summed.current, new)
            parameters = cast_to(new, [p.dtype for p in summed.current])
            metrics = self.strategy._aggregate_metrics(self.strategy.fit_metrics_aggregation_fn,
                                                       self._fit_metrics)
            if self.adaptive_clipping:
                fraction = noised_unclipped_fraction(
                    summed.unclipped, summed.count, self._count_stddev(expected), expected,
                    self._noise_rng)
                self.clipping_norm = update_clipping_norm(clip, fraction, self.target_quantile,
                                                          self.clip_norm_lr)
            self.ledger.record_round()  # applied: the server sets these weights next
            self._last_logs = {"epsilon": self.ledger.epsilon(), "dp_clipping_norm": clip,
                               "dp_noise_std": noise_std}
        finally:
            self._round, self._sum, self._fit_metrics, self._available = None, None, [], None
        return parameters, metrics

    def _delta_noise_multiplier(self, expected: float) -> float:
        """z, or with adaptive clipping z_delta (Theorem 1: the count's noise pays the rest)."""
        if not self.adaptive_clipping:
            return self.noise_multiplier
        return adaptive_noise_multiplier(self.noise_multiplier, self._count_stddev(expected))

    # -- the secure-aggregation seam (see DESIGN14): a sum instead of add() calls ---------------

    def secure_sum_request(self, server_round: int) -> dict:
        if self.clipping != "client":
            raise ConfigurationError(
                "DifferentialPrivacy(clipping='server') needs every individual update to clip "
                "it, which secure aggregation hides; use clipping='client'")
        return {"vector": "clipped_delta", "clip_norm": self.clipping_norm,
                "clipped_bit": self.adaptive_clipping}

    def add_secure_sum(self, total_weight: float, weighted_sum: list[np.ndarray], count: int,
                       extras: dict, metrics=()) -> None:
        """The unmasked sum of ``count`` clipped deltas, instead of add() calls. Each weight is 1
        (``total_weight`` is then ``count``): the fixed denominator q N does not use it.
        ``metrics`` are the clients' own (sent in the clear), each counted once."""
        if self._round is None:
            raise RuntimeError("DifferentialPrivacy.add_secure_sum called before begin()")
        if self.adaptive_clipping and "unclipped" not in extras:
            raise ConfigurationError("adaptive clipping needs extras['unclipped'], the summed "
                                     "clipped bits")
        self._sum.add_sum(weighted_sum, count, extras.get("unclipped")
                          if self.adaptive_clipping else None)
        self._fit_metrics = [(1, dict(m)) for m in metrics]
        norm, bound = self._sum.norm(), self._sum.count * self._round_clip
        if norm > bound * (1 + CLIENT_CLIP_TOLERANCE) + 1e-9:
            # The server cannot re-clip what it cannot see: say that a client did not clip.
            logger.warning("round %d: the secure sum's norm %.6g exceeds %d x C = %.6g: a "
                           "client did not clip its update", self._round, norm,
                           self._sum.count, bound)

    # -- the server's other questions ---------------------------------------------------------

    def stop_before_round(self, server_round: int) -> str | None:
        """Why the run must end before ``server_round`` (its epsilon would pass max_epsilon)."""
        if not self.ledger.would_exceed(self.max_epsilon):
            return None
        return (f"privacy budget reached: epsilon is {self.ledger.epsilon():.4g} after "
                f"{self.ledger.rounds} rounds, and round {server_round} would take it to "
                f"{self.ledger.epsilon_after(1):.4g}, beyond max_epsilon={self.max_epsilon:g} "
                f"(delta={self.target_delta:g})")

    def round_logs(self) -> dict:
        return dict(self._last_logs)

    def epsilon(self) -> float:
        """Epsilon at ``target_delta`` spent so far (the rounds applied)."""
        return self.ledger.epsilon()

    def configure_evaluate(self, server_round, parameters, clients):
        return self.strategy.configure_evaluate(server_round, parameters, clients)

    def aggregate_evaluate(self, server_round, results):
        return self.strategy.aggregate_evaluate(server_round, results)

    def evaluate(self, server_round, parameters):
        return self.strategy.evaluate(server_round, parameters)

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"strategy": type(self).__name__, "inner": self.strategy.state_dict(),
                "ledger": self.ledger.state_dict(), "clipping_norm": self.clipping_norm,
                "rng_sampling": self._sampling_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("strategy") != type(self).__name__:
            found = state.get("strategy") if isinstance(state, dict) else None
            raise ConfigurationError(f"the checkpoint holds {found} state; this strategy is "
                                     f"{type(self).__name__}")
        self.strategy.load_state_dict(state.get("inner", {}))
        self.ledger.load_state_dict(state.get("ledger", {}))
        if self.adaptive_clipping:  # a fixed C is the configuration's, as a changed one says
            self.clipping_norm = dp_checks.positive("checkpointed clipping_norm",
                                                    state.get("clipping_norm"))
        try:
            self._sampling_rng.bit_generator.state = state["rng_sampling"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad sampling state in checkpoint: {exc!r}") from None
