"""Training history, shaped like Keras' ``History``: ``history.history["fit_loss"][round - 1]``.

As in Keras, the History is itself a callback: the server's built-in one records each round's
logs in ``on_round_end``, and ``FL_Server.train()`` returns it."""

from __future__ import annotations

import logging

from ..safe_text import printable
from ..wire.limits import MAX_HISTORY_KEYS
from .hooks import ServerCallback

logger = logging.getLogger("pyfed")


class History(ServerCallback):
    """Every series has one entry per round, so a name first seen in round ``r`` costs ``r``
    entries: at most ``max_keys`` names are kept over a run (metric names come from the
    clients), so the history and every checkpoint grow linearly with the rounds."""

    def __init__(self, max_keys: int = MAX_HISTORY_KEYS) -> None:
        self.history: dict[str, list] = {}
        self.rounds: list[int] = []
        self.max_keys = max_keys
        self._warned = False

    def on_round_end(self, server, server_round: int, logs: dict) -> None:
        self.record(server_round, logs)

    def record(self, server_round: int, values: dict) -> None:
        self.rounds.append(server_round)
        for name, value in values.items():
            series = self.history.get(name)
            if series is None:
                if len(self.history) >= self.max_keys:
                    self._drop(server_round, name)
                    continue
                series = self.history[name] = [None] * (len(self.rounds) - 1)
            series.append(value)
        for series in self.history.values():  # keep every series one entry per round
            if len(series) < len(self.rounds):
                series.append(None)

    def _drop(self, server_round: int, name: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("round %d: the history already holds %d different names; new ones "
                           "(%s...) are not recorded", server_round, self.max_keys,
                           printable(name, 40))

    def last(self, name: str, default=None):
        series = self.history.get(name)
        return series[-1] if series else default

    def to_dict(self) -> dict:
        return {"rounds": list(self.rounds), "history": {k: list(v) for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        history = cls()
        history.load_dict(data)
        return history

    def load_dict(self, data: dict) -> None:
        """Continue a checkpoint's history (resume), in place: the server's callbacks keep
        this same object."""
        self.rounds = list(data.get("rounds", []))
        self.history = {k: list(v) for k, v in data.get("history", {}).items()}

    def __repr__(self) -> str:
        return f"History(rounds={len(self.rounds)}, keys={sorted(self.history)})"
