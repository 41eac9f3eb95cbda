"""Evaluating a round's new global model: centrally (``evaluate_fn`` or ``test_data``) and on
the clients that hold out data (federated, examples-weighted)."""

from __future__ import annotations

import logging

from ..deadline import Deadline
from ..errors import ConfigurationError
from ..tracking.tensorboard import TensorBoard
from ..wire import compression, messages
from .collect import EvaluateCollector
from .session import RequestJob

logger = logging.getLogger("pyfed")


def evaluate_centrally(server, server_round: int, parameters) -> dict[str, float] | None:
    """``{"loss": …, metric: …}`` from the strategy's ``evaluate_fn``, else ``test_data``."""
    result = server.strategy.evaluate(server_round, parameters)
    if result is None and server.test_data is not None:
        loss, _, metrics = server.adapter.evaluate(*server.test_data, {"batch_size": 256})
        result = (loss, metrics)
    return None if result is None else {"loss": result[0], **result[1]}


class FederatedEvaluation:
    """The clients that hold out data evaluate the new global model."""

    def __init__(self, driver) -> None:
        self.driver = driver
        self.server = driver.server
        self.bytes_in = self.bytes_out = 0

    def run(self, server_round: int, parameters, sessions: dict,
            timeout: float | None) -> dict[str, float] | None:
        """``{"loss": …, metric: …}`` weighted by examples; None when no client evaluated."""
        server = self.server
        self.bytes_in = self.bytes_out = 0
        capable = sorted(name for name, session in sessions.items() if session.evaluates)
        if not capable:
            return None
        plan = self.driver.plan(
            server.strategy.configure_evaluate(server_round, parameters, capable), sessions)
        if not plan:
            return None
        collector = EvaluateCollector(server_round, set(plan))
        deadline = Deadline(timeout)
        weights = tuple(parameters)
        if server.downlink is not None:  # evaluation needs no shared base: fp16 is stateless
            arrays, meta = compression.encode("fp16", parameters)
            weights = tuple(arrays)
            plan = {name: {**config, "compression": meta} for name, config in plan.items()}
        for name, config in plan.items():
            sessions[name].post(RequestJob(collector, messages.Evaluate(
                round=server_round, weights=weights, config=config), deadline))
        self.driver.wait_for_answers(collector, deadline, "evaluating")
        for client, reason in sorted(collector.failures.items()):
            logger.warning("round %d: %s did not evaluate: %s", server_round, client, reason)
        self.bytes_in, self.bytes_out = collector.bytes_in, collector.bytes_out
        if not collector.results:
            return None
        loss, metrics = server.strategy.aggregate_evaluate(server_round, collector.results)
        return None if loss is None else {"loss": loss, **metrics}


def test_global_model(server, data, target, loss=None, *args, metrics=None, optimizer=None,
                      lr=None, batch_size: int = 128) -> dict:
    """FL_Server.test(): prints and returns ``{"loss": …, metric: …}``; TensorBoard keeps it
    in ``server/final`` and among the HParams metrics."""
    if len(args) == 1:
        metrics = args[0]
    elif len(args) == 3:
        optimizer, lr, metrics = args
    elif args:
        raise ConfigurationError(
            "test() takes (data, target, loss, metrics) or (data, target, loss, optimizer, lr, "
            f"metrics); received {2 + 1 + len(args)} positional arguments")
    if hasattr(server.adapter, "compile"):
        server.adapter.compile(loss=loss, optimizer=optimizer, lr=lr, metrics=metrics)
    test_loss, _, results = server.adapter.evaluate(data, target, {"batch_size": batch_size})
    results = {"loss": test_loss, **results}
    print("test · " + " · ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
    board = server.callbacks.find(TensorBoard)
    if board is not None:
        board.test_result(results, server.history.rounds[-1] if server.history.rounds else 0)
    return results
