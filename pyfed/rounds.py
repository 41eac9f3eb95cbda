"""One federated round on the server: who was asked, who answered, and the streaming fold.

Connection threads call :meth:`RoundCollector.add` as each FIT_RESULT arrives; the update is
validated and folded into the strategy immediately (under one lock), so its receive buffer can
go back to the pool. The round's thread waits in :meth:`RoundCollector.wait`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import messages
from .errors import RoundError
from .spec import TensorSpec
from .strategy import FitResult, Strategy

logger = logging.getLogger("pyfed")


class UpdateRejected(Exception):
    """An update that must not be aggregated; the reason is sent back to its client."""


def validate_update(weights: tuple, spec: list[TensorSpec], num_examples: int,
                    max_examples: int) -> None:
    if len(weights) != len(spec):
        raise UpdateRejected(f"update has {len(weights)} tensors; the model has {len(spec)}")
    for index, (array, expected) in enumerate(zip(weights, spec)):
        if tuple(array.shape) != tuple(expected.shape) or array.dtype.str != expected.dtype:
            raise UpdateRejected(
                f"tensor {index} ({expected.path or expected.name}) is {array.dtype.str}"
                f"{list(array.shape)}; expected {expected.dtype}{list(expected.shape)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UpdateRejected(
                f"tensor {index} ({expected.path or expected.name}) contains NaN or Inf")
    if not 0 < num_examples <= max_examples:
        raise UpdateRejected(f"num_examples must be in [1, {max_examples}]; received {num_examples}")


@dataclass
class RoundOutcome:
    server_round: int
    parameters: list
    fit_metrics: dict
    participants: list[str]
    failures: dict[str, str]
    seconds: float
    bytes_in: int
    bytes_out: int


@dataclass
class RoundCollector:
    server_round: int
    expected: set[str]
    strategy: Strategy
    spec: list[TensorSpec]
    max_examples: int
    on_history: object = None  # callable(name, history, first_epoch) for TensorBoard
    answered: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self._cond = threading.Condition()

    # -- called from connection threads -------------------------------------------------------

    def sent(self, nbytes: int) -> None:
        with self._cond:
            self.bytes_out += nbytes

    def add(self, client: str, result: messages.FitResult, nbytes: int) -> None:
        """Validate and fold one update. Raises UpdateRejected (the caller tells the client)."""
        with self._cond:
            self.bytes_in += nbytes
            if result.round != self.server_round:
                raise UpdateRejected(
                    f"update is for round {result.round}; the current round is {self.server_round}")
            if client not in self.expected or client in self.answered or client in self.failures:
                raise UpdateRejected(f"{client} was not asked for an update in round {self.server_round}")
            try:
                validate_update(result.weights, self.spec, result.num_examples, self.max_examples)
            except UpdateRejected as exc:
                self.failures[client] = f"update rejected: {exc}"
                self._cond.notify_all()
                raise
            self.strategy.add(FitResult(client, result.weights, result.num_examples,
                                        dict(result.metrics)))
            self.answered.append(client)
            self._cond.notify_all()
        if self.on_history and result.history:
            self.on_history(client, result.history, result.first_epoch)

    def fail(self, client: str, reason: str) -> None:
        with self._cond:
            if client in self.expected and client not in self.answered and client not in self.failures:
                self.failures[client] = reason
                self._cond.notify_all()

    # -- called from the round's thread ---------------------------------------------------------

    @property
    def pending(self) -> set[str]:
        return self.expected - set(self.answered) - set(self.failures)

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    for client in self.pending:
                        self.failures[client] = f"no answer within {timeout:g} s"
                    break
                self._cond.wait(poll if remaining is None else min(poll, remaining))
        if not self.answered:
            detail = "; ".join(f"{c}: {r}" for c, r in sorted(self.failures.items())) or "none asked"
            raise RoundError(f"round {self.server_round} failed: no client returned a usable "
                             f"update ({detail})")
