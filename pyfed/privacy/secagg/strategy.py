"""``SecureAggregation``: the strategy that makes the server learn only the sum of the updates.

It wraps FedAvg (or a strategy built on it, or ``DifferentialPrivacy(clipping="client")``) and
changes how a round collects: instead of FIT and one FIT_RESULT per client, the server runs the
SecAgg stages of :mod:`pyfed.server.secure_round` (key agreement, share routing, masked input,
unmasking) and hands the wrapped strategy one unmasked sum through ``add_secure_sum``.
Everything else (sampling, configs, evaluation, checkpoints) is the wrapped strategy's.

What it refuses, and why: anything that needs one client's update (the median, trimmed-mean and
Krum families, a server-side ``max_update_norm``, DP's server-side clipping), asynchronous
strategies (their updates are folded one at a time) and compression (a masked vector is uniform
on the ring: there is nothing to compress).
"""

from __future__ import annotations

import math

from ...errors import ConfigurationError
from ...strategy import FedAvg, Strategy
from ...strategy import _checks

# Flower's SecAggPlusWorkflow defaults: the clipping range of the weights, and the examples
# count at which a client's weight in the sum reaches 1 (r = min(n / max_weight, 1)).
DEFAULT_CLIPPING_RANGE = 8.0
DEFAULT_MAX_WEIGHT = 1000.0
# Without a reconstruction_threshold, any two thirds of the participants can unmask: a
# majority, so the server cannot split the clients into two groups that each unmask, and a
# third may drop out.
DEFAULT_THRESHOLD_FRACTION = 2 / 3


class SecureAggregation(Strategy):
    """Secure aggregation (SecAgg, Bonawitz et al. 2017) around a FedAvg-family strategy.

    Args:
        strategy: the wrapped strategy (default ``FedAvg()``).
        reconstruction_threshold: how many participants must survive to unmask: an int, or a
            fraction in (0, 1] of each round's participants; at least 2. Default: two thirds.
        clipping_range: every weight is clipped to ``[-c, c]`` before it is quantized.
        modulus_bits: the ring is Z/2^k; 32 keeps about 7 significant digits for 10 clients.
        timeout: seconds each stage may take (default: the round's timeout).
        max_weight: a client with this many examples or more weighs 1 in the sum; one with
            ``n`` fewer weighs ``n / max_weight`` (Flower's default is 1000).
    """

    secure = True
    asynchronous = False
    max_update_norm = None
    needs_all_updates = False

    def __init__(self, strategy: Strategy | None = None, reconstruction_threshold=None,
                 clipping_range: float = DEFAULT_CLIPPING_RANGE, modulus_bits: int = 32,
                 timeout: float | None = None, *, max_weight: float = DEFAULT_MAX_WEIGHT) -> None:
        self.strategy = FedAvg() if strategy is None else strategy
        _refuse_unsound(self.strategy)
        if reconstruction_threshold is not None:
            if isinstance(reconstruction_threshold, float):
                _checks.real("reconstruction_threshold", reconstruction_threshold, low=0.0,
                             low_open=True, high=1.0, high_open=False)
            else:
                _checks.integer("reconstruction_threshold", reconstruction_threshold, 2)
        self.reconstruction_threshold = reconstruction_threshold
        self.clipping_range = _checks.real("clipping_range", clipping_range, low=0.0,
                                           low_open=True, high=1e6)
        if isinstance(modulus_bits, bool) or not isinstance(modulus_bits, int) \
                or not 16 <= modulus_bits <= 64:
            raise ConfigurationError(f"modulus_bits must be an integer in [16, 64]; received "
                                     f"{modulus_bits!r}")
        self.modulus_bits = modulus_bits
        if timeout is not None:
            timeout = _checks.real("timeout", timeout, low=0.0, low_open=True, high=math.inf)
        self.timeout = timeout
        self.max_weight = _checks.real("max_weight", max_weight, low=0.0, low_open=True,
                                       high=1e18)

    def __repr__(self) -> str:
        return (f"SecureAggregation({self.strategy!r}, reconstruction_threshold="
                f"{self.reconstruction_threshold!r}, clipping_range={self.clipping_range:g}, "
                f"modulus_bits={self.modulus_bits})")

    def threshold(self, participants: int) -> int:
        """How many of ``participants`` must survive each stage for the round to unmask."""
        wanted = self.reconstruction_threshold
        if wanted is None:
            wanted = DEFAULT_THRESHOLD_FRACTION
        if isinstance(wanted, float):
            wanted = math.ceil(wanted * participants - 1e-9)
        return min(max(2, wanted), participants)

    # -- the wrapped strategy decides everything but how updates are collected --------------

    @property
    def min_fit_clients(self) -> int:
        # One client's "sum" is its update: a secure round needs two at least.
        return max(2, int(getattr(self.strategy, "min_fit_clients", 1)))

    @property
    def min_available_clients(self) -> int:
        return max(2, int(getattr(self.strategy, "min_available_clients", 1)))

    @property
    def min_evaluate_clients(self) -> int:
        return int(getattr(self.strategy, "min_evaluate_clients", 1))

    def configure_fit(self, server_round, parameters, clients):
        return self.strategy.configure_fit(server_round, parameters, clients)

    def begin(self, server_round, parameters) -> None:
        self.strategy.begin(server_round, parameters)

    def add(self, result) -> None:
        raise RuntimeError("SecureAggregation never sees one client's update: the secure "
                           "round calls add_secure_sum once with the sum")

    def secure_sum_request(self, server_round: int) -> dict:
        return self.strategy.secure_sum_request(server_round)

    def add_secure_sum(self, total_weight, weighted_sum, count, extras, metrics=()) -> None:
        self.strategy.add_secure_sum(total_weight, weighted_sum, count, extras, metrics=metrics)

    def finish(self):
        return self.strategy.finish()

    def configure_evaluate(self, server_round, parameters, clients):
        return self.strategy.configure_evaluate(server_round, parameters, clients)

    def aggregate_evaluate(self, server_round, results):
        return self.strategy.aggregate_evaluate(server_round, results)

    def evaluate(self, server_round, parameters):
        return self.strategy.evaluate(server_round, parameters)

    @property
    def allows_empty_rounds(self) -> bool:
        """DP's Poisson sampling may pick nobody: that round adds only noise, no secure sum."""
        return bool(getattr(self.strategy, "allows_empty_rounds", False))

    def stop_before_round(self, server_round: int) -> str | None:
        stop = getattr(self.strategy, "stop_before_round", None)
        return None if stop is None else stop(server_round)

    def round_logs(self) -> dict:
        round_logs = getattr(self.strategy, "round_logs", None)
        return {} if round_logs is None else dict(round_logs())

    def state_dict(self) -> dict:
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state)


def _refuse_unsound(strategy) -> None:
    """Refuse a wrapped strategy that needs what secure aggregation hides."""
    name = type(strategy).__name__
    if not isinstance(strategy, Strategy):
        raise ConfigurationError(f"SecureAggregation wraps a Strategy; received {name}")
    if getattr(strategy, "needs_all_updates", False):
        raise ConfigurationError(
            f"SecureAggregation cannot wrap {name}: it needs every client's update (median, "
            "trimmed mean and Krum choose among individual updates), and secure aggregation "
            "gives the server only their sum. Use FedAvg or a strategy built on it.")
    if getattr(strategy, "asynchronous", False):
        raise ConfigurationError(
            f"SecureAggregation cannot wrap {name}: an asynchronous strategy folds each "
            "update on its own, and a secure sum needs a round of at least two clients")
    if getattr(strategy, "max_update_norm", None) is not None:
        raise ConfigurationError(
            f"SecureAggregation cannot wrap {name} with max_update_norm: the server cannot "
            "measure one client's update norm under secure aggregation. Bound updates on the "
            "clients instead: DifferentialPrivacy(..., clipping='client').")
    if getattr(strategy, "clipping", "client") != "client":
        raise ConfigurationError(
            f"SecureAggregation cannot wrap {name} with clipping={strategy.clipping!r}: the "
            "server never sees one update to clip. Use clipping='client', so each client "
            "clips its own update before masking it.")
    if isinstance(strategy, SecureAggregation):
        raise ConfigurationError("SecureAggregation inside SecureAggregation: wrap once")
    for method in ("secure_sum_request", "add_secure_sum"):
        if not callable(getattr(strategy, method, None)):
            raise ConfigurationError(
                f"SecureAggregation cannot wrap {name}: it has no {method}(); FedAvg, the "
                "strategies built on it and DifferentialPrivacy(clipping='client') have")
