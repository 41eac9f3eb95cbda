"""Aggregation strategies (pure numpy; importable without TensorFlow or sockets)."""

from .base import EvaluateResult, FitResult, Strategy
from .fedavg import FedAvg

__all__ = ["Strategy", "FitResult", "EvaluateResult", "FedAvg"]
