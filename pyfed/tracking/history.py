"""Training history, shaped like Keras' ``History``: ``history.history["fit_loss"][round - 1]``."""

from __future__ import annotations

import logging

from ..wire.limits import MAX_HISTORY_KEYS
from ..safe_text import printable

logger = logging.getLogger("pyfed")


class History:
    """Every series has one entry per round, so a name first seen in round ``r`` costs ``r``
    entries: at most ``max_keys`` names are kept over a run (metric names come from the
    clients), so the history and every checkpoint grow linearly with the rounds."""

    def __init__(self, max_keys: int = MAX_HISTORY_KEYS) -> None:
        self.history: dict[str, list] = {}
        self.rounds: list[int] = []
        self.max_keys = max_keys
        self._warned = False

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
        history.rounds = list(data.get("rounds", []))
        history.history = {k: list(v) for k, v in data.get("history", {}).items()}
        return history

    def __repr__(self) -> str:
        return f"History(rounds={len(self.rounds)}, keys={sorted(self.history)})"
