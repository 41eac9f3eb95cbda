"""Training history, shaped like Keras' ``History``: ``history.history["fit_loss"][round - 1]``."""

from __future__ import annotations


class History:
    def __init__(self) -> None:
        self.history: dict[str, list] = {}
        self.rounds: list[int] = []

    def record(self, server_round: int, values: dict) -> None:
        self.rounds.append(server_round)
        for name, value in values.items():
            series = self.history.setdefault(name, [None] * (len(self.rounds) - 1))
            series.append(value)
        for series in self.history.values():  # keep every series one entry per round
            if len(series) < len(self.rounds):
                series.append(None)

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
