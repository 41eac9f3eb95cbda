"""The built-in TensorBoard callback: the run's event files, in PyFed's layout.

``<run>/server`` holds ``fit/…``, ``test/…``, ``eval/…`` and ``round/…`` at step = round, and
``global/…`` at the clients' epoch step; ``<run>/clients/<name>`` holds each client's per-epoch
curves (``epoch_loss``…), as Keras' own TensorBoard callback names them; HParams and a
custom-scalars layout let runs be compared (:mod:`pyfed.tracking.tb_plugins`).
"""

from __future__ import annotations

from .hooks import ServerCallback
from .logs import RunLogger
from .round_logs import scalars, sections
from .tb_plugins import RunBoard, run_hparams


class TensorBoard(ServerCallback):
    """Writes the run under ``server.run_dir``. Replace it with your own subclass, or drop it
    by passing one that does nothing."""

    def __init__(self) -> None:
        self.writers: RunLogger | None = None
        self.board: RunBoard | None = None
        self._configs: list[dict] = []

    def on_train_begin(self, server) -> None:
        # A continued run rewrites from its first round on: TensorBoard drops the old points.
        self.writers = RunLogger(server.run_dir, resumed_round=server.resumed_round)
        self.board = RunBoard(self.writers.server, server.run_dir.name, run_hparams(
            server.strategy, server.num_clients, server.rounds, server.codec, server.hparams),
            client_history=self.writers.client_history)
        self.board.train_begin()

    def on_round_begin(self, server, server_round: int, clients: dict) -> None:
        self._configs = list(clients.values())  # the epochs configured, for the global/ step

    def on_client_history(self, server, server_round: int, client: str, history: dict,
                          first_epoch: int) -> None:
        if self.board is not None:
            self.board.client_history(client, history, first_epoch, server_round=server_round)

    def on_round_end(self, server, server_round: int, logs: dict) -> None:
        if self.board is None:
            return
        self.writers.server.scalars(scalars(logs), server_round)
        self.board.round_end(server_round, sections(logs), self._configs)

    def on_train_end(self, server, history) -> None:
        if self.board is not None and server.completed:
            self.board.train_end(completed=True)
        self.close()

    def test_result(self, results: dict[str, float], step: int) -> None:
        """FL_Server.test()'s result, in ``server/final`` and the HParams metrics."""
        if self.board is not None:
            self.board.test_result(results, step)

    def close(self) -> None:
        if self.writers is not None:
            self.writers.close()
