"""Adaptive federated optimization (Reddi et al., 2021): FedAdam, FedYogi, FedAdagrad.

The clients' examples-weighted average streams exactly as in FedAvg; at the end of the round a
server-side optimizer treats ``delta = average - current`` as its (negative) gradient.
Formulas follow Flower's current ``framework/py/flwr/server/strategy`` (see
:mod:`pyfed.strategy.aggregate`): FedAdam with the bias-corrected step, FedYogi and FedAdagrad
without bias correction.
"""

from __future__ import annotations

from abc import abstractmethod

from . import _checks
from .aggregate import fedadagrad_update, fedadam_update, fedyogi_update
from .fedavg import FedAvg, arrays_or_none


class FedOpt(FedAvg):
    """Base of the server-optimizer strategies: holds eta, eta_l, beta_1, beta_2, tau and the
    moments ``m`` and ``v`` (float64, one array per tensor; in :meth:`state_dict`).

    ``eta`` is the server learning rate. ``eta_l`` (the clients' learning rate in the paper)
    is kept for parity with Flower but not used by the server: set the clients' rate in
    ``FL_Client.train(lr=...)``. The moments start at zero in the first round this strategy
    aggregates. Other keyword arguments as :class:`FedAvg`.
    """

    def __init__(self, *, eta: float = 1e-1, eta_l: float = 1e-1, beta_1: float = 0.0,
                 beta_2: float = 0.0, tau: float = 1e-9, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eta = _checks.real("eta", eta, low=0.0, low_open=True)
        self.eta_l = _checks.real("eta_l", eta_l, low=0.0)
        self.beta_1 = _checks.real("beta_1", beta_1, low=0.0, high=1.0)
        self.beta_2 = _checks.real("beta_2", beta_2, low=0.0, high=1.0)
        self.tau = _checks.real("tau", tau, low=0.0, low_open=True)
        self.m = None
        self.v = None

    def _server_update(self, server_round, current, aggregate):
        new, self.m, self.v = self._step(server_round, current, aggregate)
        return new

    @abstractmethod
    def _step(self, server_round, current, average):
        """Return ``(new_weights, m, v)`` in float64."""

    def state_dict(self) -> dict:
        return {**super().state_dict(), "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.m = arrays_or_none(state.get("m"), "m")
        self.v = arrays_or_none(state.get("v"), "v")


class FedAdam(FedOpt):
    """Adam on the server. Uses Flower's bias-corrected rate
    ``eta * sqrt(1 - beta_2**(round+1)) / (1 - beta_1**(round+1))``."""

    def __init__(self, *, eta: float = 1e-1, eta_l: float = 1e-1, beta_1: float = 0.9,
                 beta_2: float = 0.99, tau: float = 1e-9, **kwargs) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)

    def _step(self, server_round, current, average):
        return fedadam_update(current, average, self.m, self.v, server_round=server_round,
                              eta=self.eta, beta_1=self.beta_1, beta_2=self.beta_2, tau=self.tau)


class FedYogi(FedOpt):
    """Yogi on the server (no bias correction, as Flower)."""

    def __init__(self, *, eta: float = 1e-2, eta_l: float = 0.0316, beta_1: float = 0.9,
                 beta_2: float = 0.99, tau: float = 1e-3, **kwargs) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)

    def _step(self, server_round, current, average):
        return fedyogi_update(current, average, self.m, self.v, eta=self.eta,
                              beta_1=self.beta_1, beta_2=self.beta_2, tau=self.tau)


class FedAdagrad(FedOpt):
    """Adagrad on the server: ``m = delta`` (beta_1 = 0), ``v += delta**2``."""

    def __init__(self, *, eta: float = 1e-1, eta_l: float = 1e-1, tau: float = 1e-9,
                 **kwargs) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=0.0, beta_2=0.0, tau=tau, **kwargs)

    def _step(self, server_round, current, average):
        return fedadagrad_update(current, average, self.m, self.v, eta=self.eta, tau=self.tau)
