"""Aggregation strategies (pure numpy; importable without TensorFlow or sockets).

Streaming (O(model) server memory): FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad;
and asynchronously (global versions instead of rounds): FedAsync, FedBuff.
Every update kept until the round ends (O(model x clients)): FedMedian, FedTrimmedAvg, Krum,
MultiKrum. The math is in :mod:`pyfed.strategy.aggregate`.
"""

from . import aggregate
from .async_base import AsyncStrategy
from .asynchronous import FedAsync, FedBuff
from .base import EvaluateResult, FitResult, Strategy
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from .fedprox import FedProx
from .robust import BufferedStrategy, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from .state import join_arrays, split_arrays

__all__ = [
    "AsyncStrategy",
    "BufferedStrategy",
    "EvaluateResult",
    "FedAdagrad",
    "FedAdam",
    "FedAsync",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "FitResult",
    "Krum",
    "MultiKrum",
    "Strategy",
    "aggregate",
    "join_arrays",
    "split_arrays",
]
