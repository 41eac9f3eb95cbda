"""Privacy accounting for user-level DP-FedAvg with dp-accounting's RDP accountant.

Each applied round is one Poisson-sampled Gaussian mechanism: every client joins independently
with probability ``q`` and the clipped sum gets Gaussian noise of multiplier ``z``. The rounds
compose, and the RDP accountant converts the composition to epsilon at ``target_delta``.
dp-accounting is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
import logging
import math

from pyfed.errors import ConfigurationError
from pyfed.privacy.dp.calibration import validate_dp_config


def epsilon(q: float, noise_multiplier: float, rounds: int, target_delta: float) -> float:
    """Epsilon at ``target_delta`` after ``rounds`` Poisson-sampled Gaussian rounds.

    ``noise_multiplier=0`` releases the updates unnoised: epsilon is infinite (after >= 1 round).
    """
    validate_dp_config(noise_multiplier=noise_multiplier, sampling_rate=q)
    _validate_delta(target_delta)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigurationError(f"rounds must be an int >= 0, got {rounds!r}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return _rdp_epsilon(float(q), float(noise_multiplier), rounds, float(target_delta))


@functools.lru_cache(maxsize=256)
def _rdp_epsilon(q: float, noise_multiplier: float, rounds: int, target_delta: float) -> float:
    # Cached: a run asks for the same figure several times a round (log, budget check), and
    # each costs about 0.2 s of RDP orders.
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.rdp import RdpAccountant

    _quiet_unconverged_orders()
    accountant = RdpAccountant()
    accountant.compose(PoissonSampledDpEvent(q, GaussianDpEvent(noise_multiplier)), rounds)
    return float(accountant.get_epsilon(target_delta))


def _quiet_unconverged_orders() -> None:
    """dp-accounting logs a warning (through absl) for every fractional RDP order whose series
    does not converge, each round: it excludes that order, which only makes epsilon a little
    more conservative, so the lines say nothing a user can act on."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _UnconvergedOrders) for f in absl.filters):
        absl.addFilter(_UnconvergedOrders())


class _UnconvergedOrders(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


def _validate_delta(target_delta: float) -> None:
    if not isinstance(target_delta, (int, float)) or not 0 < target_delta < 1:
        raise ConfigurationError(f"target_delta must be in (0, 1), got {target_delta!r}")


class PrivacyLedger:
    """Counts the rounds whose result was applied, and answers epsilon for them.

    Only the count is state: q, z and delta are the run's configuration, so a resumed run
    (``load_state_dict`` from a checkpoint) keeps counting from where it stopped.
    """

    def __init__(self, q: float, noise_multiplier: float, target_delta: float = 1e-5):
        validate_dp_config(noise_multiplier=noise_multiplier, sampling_rate=q)
        _validate_delta(target_delta)
        self.q = float(q)
        self.noise_multiplier = float(noise_multiplier)
        self.target_delta = float(target_delta)
        self.rounds = 0

    def record_round(self) -> None:
        """One more round's noised result was applied to the global model."""
        self.rounds += 1

    def epsilon(self) -> float:
        return epsilon(self.q, self.noise_multiplier, self.rounds, self.target_delta)

    def epsilon_after(self, extra_rounds: int = 1) -> float:
        return epsilon(self.q, self.noise_multiplier, self.rounds + extra_rounds,
                       self.target_delta)

    def would_exceed(self, max_epsilon: float | None) -> bool:
        """True when one more round would push epsilon above ``max_epsilon`` (None: never)."""
        if max_epsilon is None:
            return False
        return self.epsilon_after(1) > max_epsilon

    def state_dict(self) -> dict:
        # The configuration goes along so that a resume with a different q/z/delta is caught.
        return {"rounds": self.rounds, "q": self.q, "noise_multiplier": self.noise_multiplier,
                "target_delta": self.target_delta}

    def load_state_dict(self, state: dict) -> None:
        rounds = state.get("rounds")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ConfigurationError(f"checkpointed privacy rounds must be an int >= 0, "
                                     f"got {rounds!r}")
        for key in ("q", "noise_multiplier", "target_delta"):
            if key in state and float(state[key]) != getattr(self, key):
                # Epsilon composed under other parameters cannot be continued by counting.
                raise ConfigurationError(
                    f"checkpoint was accounted with {key}={state[key]!r}, this run uses "
                    f"{key}={getattr(self, key)!r}")
        self.rounds = rounds
