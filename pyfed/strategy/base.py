"""The Strategy interface, after Flower's ``server/strategy``: small, with streaming aggregation.

The server calls, each round::

    plan = strategy.configure_fit(round, parameters, clients)   # who trains, with what config
    strategy.begin(round, parameters)
    result = strategy.screen(result)  # per result, outside the server's lock (may refuse it)
    strategy.add(result)            # once per arriving result, as it arrives
    strategy.add_last(result)       # instead, for the last one expected (default: add)
    parameters, metrics = strategy.finish()
    plan = strategy.configure_evaluate(round, parameters, clients)   # optional
    loss, metrics = strategy.aggregate_evaluate(round, results)
    strategy.evaluate(round, parameters)                             # centralized, optional

``add`` folds a result into running state and must not keep a reference to ``result.weights``:
those arrays live in a pooled receive buffer that is reused as soon as ``add`` returns.
Strategies that need every update at once set ``needs_all_updates = True`` and copy.
``screen`` and ``add`` refuse a result by raising :class:`~pyfed.errors.UpdateRejected` before
changing any state; the server sends its reason to the client and the round goes on.

``state_dict()`` (between rounds) returns what a checkpoint must hold to resume: JSON scalars,
lists, dicts, None, numpy arrays or lists of numpy arrays; never anything that needs pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FitResult:
    """One client's contribution to a round, as the strategy sees it."""

    client: str
    weights: tuple
    num_examples: int
    metrics: dict = field(default_factory=dict)
    #: The L2 norm of ``weights`` minus the round's global weights (floating-point tensors),
    #: once :meth:`Strategy.screen` has measured it; None: not measured.
    delta_norm: float | None = None
    #: Asynchronous rounds only (the driver sets both): the current global version minus the
    #: version the client trained from, and that version's global weights (the arrays sent in
    #: its FIT; None: the round's own global weights).
    staleness: int = 0
    base: tuple | None = None


@dataclass(frozen=True)
class EvaluateResult:
    client: str
    num_examples: int
    loss: float
    metrics: dict = field(default_factory=dict)


class Strategy(ABC):
    """Base class of every aggregation strategy. Subclass it to plug in your own."""

    #: Clients that must answer before a round may close at its deadline.
    min_fit_clients: int = 1
    #: Clients that must be connected before a round starts.
    min_available_clients: int = 1
    #: Clients asked to evaluate, at least (when federated evaluation is on).
    min_evaluate_clients: int = 1
    #: True when ``add`` copies every update (memory O(model x clients)); False when it folds.
    needs_all_updates: bool = False
    #: Bound on the L2 norm of an update's delta from the global model (None: unbounded), and
    #: what happens to an update beyond it: ``"clip"`` (scaled to the bound) or ``"reject"``.
    #: FedAvg and every strategy built on it take both as keyword arguments.
    max_update_norm: float | None = None
    update_norm_action: str = "clip"
    #: True: the server runs its asynchronous driver (global versions, every free client
    #: busy; see :mod:`pyfed.strategy.asynchronous`); False: synchronous rounds.
    asynchronous: bool = False
    #: True: a round whose sample is empty still runs (``finish`` with no ``add``), as
    #: DP-FedAvg's Poisson sampling needs; False: the round fails for lack of updates.
    allows_empty_rounds: bool = False
    #: True: a round needs every sampled client's answer (one missing fails it, and the
    #: server's retry rule samples again); False: ``min_fit_clients`` answers at the deadline.
    requires_every_answer: bool = False

    @abstractmethod
    def configure_fit(self, server_round: int, parameters: list[np.ndarray],
                      clients: list[str]) -> list[tuple[str, dict]]:
        """Choose this round's participants; return ``[(client_name, fit_config), ...]``."""

    @abstractmethod
    def begin(self, server_round: int, parameters: list[np.ndarray]) -> None:
        """Start aggregating a round whose global weights are ``parameters``."""

    def screen(self, result: FitResult) -> FitResult:
        """Check one result before :meth:`add` folds it, changing no state, and return it
        (possibly annotated, e.g. with its ``delta_norm``). The server calls this on the
        connection's thread, outside its lock, so a pass over the update here overlaps other
        clients' folds. Raise :class:`~pyfed.errors.UpdateRejected` to refuse the result.
        Default: the result as it is."""
        return result

    @abstractmethod
    def add(self, result: FitResult) -> None:
        """Fold one result in. Copy anything you keep: ``result.weights`` is reused afterwards.
        May raise :class:`~pyfed.errors.UpdateRejected`, before changing any state."""

    def add_last(self, result: FitResult) -> None:
        """Fold the round's last result: ``finish`` follows, with no other ``add`` between.
        The server calls this when every client it asked has answered, so a strategy can
        begin finishing in the same pass (FedAvg computes the mean there). Default: ``add``."""
        self.add(result)

    @abstractmethod
    def finish(self) -> tuple[list[np.ndarray], dict]:
        """Close the round: the new global weights and the aggregated fit metrics."""

    def configure_evaluate(self, server_round: int, parameters: list[np.ndarray],
                           clients: list[str]) -> list[tuple[str, dict]]:
        """Federated evaluation plan; none by default."""
        return []

    def aggregate_evaluate(self, server_round: int,
                           results: list[EvaluateResult]) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: list[np.ndarray]) -> tuple[float, dict] | None:
        """Centralized (server-side) evaluation; none by default."""
        return None

    def stop_before_round(self, server_round: int) -> str | None:
        """Why the run must end cleanly before ``server_round`` (e.g. a privacy budget spent),
        or None to run it. The server then sends the final model with this reason."""
        return None

    def round_logs(self) -> dict:
        """Extra values for the round just finished (History, TensorBoard, progress line),
        e.g. ``{"epsilon": 1.2}``; none by default."""
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint must keep to resume this strategy (see the module docstring)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (possibly after a JSON round trip)."""
