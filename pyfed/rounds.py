"""One federated round on the server: who was asked, who answered, and the streaming fold.

Connection threads call :meth:`FitCollector.add` as each FIT_RESULT arrives; the update is
validated and folded into the strategy immediately (under one lock), so its receive buffer can
go back to the pool. The round's thread waits in :meth:`Collector.wait`.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from . import messages
from .errors import ProtocolError, RoundError
from .spec import TensorSpec
from .strategy import EvaluateResult, FitResult, Strategy

logger = logging.getLogger("pyfed")


class UpdateRejected(Exception):
    """An update that must not be aggregated; the reason is sent back to its client."""


def validate_update(weights: tuple, spec: list[TensorSpec], num_examples: int,
                    max_examples: int) -> None:
    if len(weights) != len(spec):
        raise UpdateRejected(f"update has {len(weights)} tensors; the model has {len(spec)}")
    for index, (array, expected) in enumerate(zip(weights, spec)):
        label = f"tensor {index} ({expected.path or expected.name})"
        if tuple(array.shape) != tuple(expected.shape):
            raise UpdateRejected(f"{label} has shape {list(array.shape)}; expected shape "
                                 f"{list(expected.shape)}")
        if array.dtype.str != expected.dtype:
            raise UpdateRejected(f"{label} has dtype {array.dtype.str}; expected dtype {expected.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UpdateRejected(
                f"tensor {index} ({expected.path or expected.name}) contains NaN or Inf")
    if not 0 < num_examples <= max_examples:
        raise UpdateRejected(f"num_examples must be in [1, {max_examples}]; received {num_examples}")


class Collector:
    """Who was asked, who answered, who failed; connection threads report, the round waits."""

    kind = "fit"

    def __init__(self, server_round: int, expected: set[str]):
        self.server_round = server_round
        self.expected = set(expected)
        self.answered: list[str] = []
        self.failures: dict[str, str] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = time.monotonic()
        self.closed = False
        self._cond = threading.Condition()

    def sent(self, nbytes: int) -> None:
        with self._cond:
            self.bytes_out += nbytes

    def received(self, nbytes: int) -> None:
        with self._cond:
            self.bytes_in += nbytes

    def _check_expected(self, client: str, result_round: int) -> None:
        """Called with the lock held. A bad answer from a client we wait for ends its turn."""
        if self.closed and client not in self.answered:
            raise UpdateRejected(f"arrived after round {self.server_round} closed; not counted")
        if result_round != self.server_round:
            reason = (f"{self.kind} result is for round {result_round}; the current round is "
                      f"{self.server_round}")
            if client in self.pending:  # it answered, wrongly: don't wait for it any more
                self.failures[client] = reason
                self._cond.notify_all()
            raise UpdateRejected(reason)
        if client not in self.expected or client in self.answered or client in self.failures:
            raise UpdateRejected(f"{client} was not asked for a {self.kind} result in round {self.server_round}")

    def close(self, reason: str) -> None:
        """End the round now: whoever has not answered failed, and later answers are refused."""
        with self._cond:
            self.closed = True
            for client in self.pending:
                self.failures[client] = reason
            self._cond.notify_all()

    def fail(self, client: str, reason: str) -> None:
        with self._cond:
            if client in self.expected and client not in self.answered and client not in self.failures:
                self.failures[client] = reason
                self._cond.notify_all()

    @property
    def pending(self) -> set[str]:
        return self.expected - set(self.answered) - set(self.failures)

    def wait(self, timeout: float | None = None, poll: float = 1.0, mark_missing: bool = True) -> None:
        """Until every client asked has answered or failed, or ``timeout`` seconds have passed
        (then, with ``mark_missing``, the missing ones count as failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if mark_missing:
                        for client in self.pending:
                            self.failures[client] = f"no answer within {timeout:g} s"
                    break
                self._cond.wait(poll if remaining is None else min(poll, remaining))

    def failure_summary(self) -> str:
        return "; ".join(f"{c}: {r}" for c, r in sorted(self.failures.items())) or "none failed"


class FitCollector(Collector):
    """A fit round: each valid update is folded into the strategy as it arrives."""

    kind = "fit"

    def __init__(self, server_round: int, expected: set[str], strategy: Strategy,
                 spec: list[TensorSpec], max_examples: int, on_history=None, decode=None):
        super().__init__(server_round, expected)
        self.strategy = strategy
        self.spec = spec
        self.max_examples = max_examples
        self.on_history = on_history  # callable(name, history, first_epoch), for TensorBoard
        self.decode = decode  # compressed uplink -> the model's tensors (None: sent as they are)

    def add(self, client: str, result: messages.FitResult) -> None:
        """Validate and fold one update. Raises UpdateRejected (the caller tells the client)."""
        with self._cond:
            self._check_expected(client, result.round)
            try:
                weights = result.weights
                if self.decode is not None:
                    try:
                        weights = self.decode(weights)
                    except ProtocolError as exc:
                        raise UpdateRejected(f"cannot decompress: {exc}") from None
                validate_update(weights, self.spec, result.num_examples, self.max_examples)
            except UpdateRejected as exc:
                self.failures[client] = f"update rejected: {exc}"
                self._cond.notify_all()
                raise
            self.strategy.add(FitResult(client, tuple(weights), result.num_examples,
                                        dict(result.metrics)))
            self.answered.append(client)
            self._cond.notify_all()
        if self.on_history and result.history:
            try:
                self.on_history(client, result.history, result.first_epoch)
            except OSError as exc:  # e.g. too many open files: lose a curve, never the update
                logger.warning("could not write %s's TensorBoard curve: %s", client, exc)

    def require(self, min_fit_clients: int) -> None:
        needed = min(min_fit_clients, len(self.expected)) or 1
        if len(self.answered) < needed:
            raise RoundError(
                f"round {self.server_round} failed: {len(self.answered)} of {len(self.expected)} "
                f"clients returned a usable update, at least {needed} needed ({self.failure_summary()})")


class EvaluateCollector(Collector):
    """Federated evaluation: results are small, so they are simply kept."""

    kind = "evaluate"

    def __init__(self, server_round: int, expected: set[str]):
        super().__init__(server_round, expected)
        self.results: list[EvaluateResult] = []

    def add(self, client: str, result: messages.EvaluateResult) -> None:
        with self._cond:
            self._check_expected(client, result.round)
            if not 0 <= result.num_examples or not np.isfinite(result.loss):
                self.failures[client] = "invalid evaluation result"
                self._cond.notify_all()
                raise UpdateRejected(
                    f"evaluation needs num_examples >= 0 and a finite loss; received "
                    f"{result.num_examples} and {result.loss}")
            self.results.append(EvaluateResult(client, result.num_examples, float(result.loss),
                                               dict(result.metrics)))
            self.answered.append(client)
            self._cond.notify_all()
