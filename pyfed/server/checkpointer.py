"""The built-in Checkpointer callback: after each round, the checkpoint a resumed run continues
from (round, weights, strategy state, history), written atomically.

A failed write (a full disk, no file descriptor left) costs that checkpoint, not the run: it is
said, and the next round writes a whole one. A stop signal that arrives during a write waits
until the file is whole.
"""

from __future__ import annotations

from pathlib import Path

from ..tracking.hooks import ServerCallback
from .checkpoint import CHECKPOINT_FILE, Checkpoint, save_checkpoint


class Checkpointer(ServerCallback):
    """Writes ``checkpoint.npz`` in ``server.checkpoint_dir`` (default: the run folder)."""

    def __init__(self) -> None:
        self.saved_round = 0  # the round the checkpoint on disk holds (0: none)
        self.directory: Path | None = None

    def on_train_begin(self, server) -> None:
        self.directory = server.checkpoint_dir or server.run_dir
        self.saved_round = server.first_round - 1  # a resumed run's checkpoint is on disk

    def on_round_end(self, server, server_round: int, logs: dict) -> None:
        unit = _unit(server)
        stage, server.stage = server.stage, f"during {unit} {server_round}, while saving its checkpoint"
        strategy = server.strategy
        checkpoint = Checkpoint(
            server_round=server_round, weights=server.adapter.get_weights(),
            strategy_state=strategy.state_dict() if hasattr(strategy, "state_dict") else {},
            history=server.history.to_dict(), run_name=server.run_dir.name,
            spec_hash=server.spec_hash)
        with server.stop_signals.deferred():  # a stop signal waits until the file is whole
            try:
                save_checkpoint(self.directory, checkpoint)
            except OSError as exc:
                server.warn(f"checkpoint for {unit} {server_round} was not written to "
                            f"{self.directory / CHECKPOINT_FILE}: {exc.strerror or exc}; the run "
                            f"goes on and the next {unit} tries again")
            else:
                self.saved_round = server_round
        # Not reached when a stop signal held during the write is raised: its message then
        # names the write.
        server.stage = stage

    def resume_hint(self, server) -> str:
        """The end of the stop message: what is saved, and how to continue."""
        done, unit = self.saved_round, _unit(server)
        if not done:
            if server.history.rounds:
                return "no checkpoint could be written, so there is none to resume from"
            return f"no {unit} had completed, so there is no checkpoint"
        rounds = f"{unit} 1 is" if done == 1 else f"{unit}s 1-{done} are"
        return (f"{rounds} saved in {self.directory}; restart with resume=True (--resume) to "
                "continue")


def _unit(server) -> str:
    """What a run counts: rounds, or (asynchronous strategies) versions of the global model."""
    return "version" if getattr(server.strategy, "asynchronous", False) else "round"
