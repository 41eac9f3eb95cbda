"""FedProx (Li et al., 2020): FedAvg aggregation plus a proximal term applied by the clients."""

from __future__ import annotations

from . import _checks
from .fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg that sends ``{"proximal_mu": mu}`` in every FIT config.

    Each client adds ``mu / 2 * ||w - w_global||^2`` to its local loss; that happens on the
    client, not here. ``proximal_mu = 0`` is plain FedAvg. Other keyword arguments as
    :class:`FedAvg`.
    """

    def __init__(self, proximal_mu: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.proximal_mu = _checks.real("proximal_mu", proximal_mu, low=0.0)

    def configure_fit(self, server_round, parameters, clients):
        return [(client, {**config, "proximal_mu": self.proximal_mu})
                for client, config in super().configure_fit(server_round, parameters, clients)]
