"""FedAvgM (Hsu et al., 2019): FedAvg with server-side SGD momentum on the averaged update."""

from __future__ import annotations

from . import _checks
from .aggregate import fedavgm_update
from .fedavg import FedAvg, arrays_or_none


class FedAvgM(FedAvg):
    """FedAvg followed by a server SGD step with heavy-ball momentum (as Flower's FedAvgM).

    ``g = current - average``; ``v = server_momentum * v + g``;
    ``new = current - server_learning_rate * v``. With the defaults (1.0, 0.0) this is exactly
    FedAvg. The momentum ``v`` (float64, one array per tensor) is in :meth:`state_dict`.
    Aggregation still streams. Other keyword arguments as :class:`FedAvg`.
    """

    def __init__(self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.server_learning_rate = _checks.real("server_learning_rate", server_learning_rate,
                                                 low=0.0, low_open=True)
        self.server_momentum = _checks.real("server_momentum", server_momentum,
                                            low=0.0, high=1.0)
        self.momentum = None

    def _server_update(self, server_round, current, aggregate):
        if self.server_learning_rate == 1.0 and self.server_momentum == 0.0:
            return aggregate  # as Flower: no server optimizer, so no extra rounding either
        new, self.momentum = fedavgm_update(
            current, aggregate, self.momentum, server_learning_rate=self.server_learning_rate,
            server_momentum=self.server_momentum)
        return new

    def state_dict(self) -> dict:
        return {**super().state_dict(), "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.momentum = arrays_or_none(state.get("momentum"), "momentum")
