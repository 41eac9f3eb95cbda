"""Model specs: the names, shapes and dtypes of a model's weights, and their hash.

The spec hash travels in HELLO so a client that brings its own model is refused at the handshake
if its architecture differs from the server's (as FedSync does), instead of failing mid-round.
Pure Python + numpy: no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One weight tensor. ``name`` is stable ("kernel"), ``path`` is for humans ("dense_1/kernel").

    Only ``name``, ``shape`` and ``dtype`` enter the hash: Keras numbers auto-named layers per
    process (``dense`` vs ``dense_3``), and that must not make two identical models mismatch.
    """

    name: str
    shape: tuple
    dtype: str
    path: str = ""

    def describe(self) -> str:
        return f"{self.path or self.name} {list(self.shape)} {self.dtype}"


def spec_of_arrays(arrays, names=None) -> list[TensorSpec]:
    names = names or [f"weight_{i}" for i in range(len(arrays))]
    return [TensorSpec(str(n), tuple(int(d) for d in np.shape(a)), np.asarray(a).dtype.str)
            for n, a in zip(names, arrays)]


def spec_hash(spec: list[TensorSpec]) -> str:
    canonical = json.dumps([[s.name, list(s.shape), s.dtype] for s in spec], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def spec_to_json(spec: list[TensorSpec]) -> list:
    return [[s.name, list(s.shape), s.dtype, s.path] for s in spec]


def spec_from_json(data: list) -> list[TensorSpec]:
    return [TensorSpec(str(n), tuple(shape), str(dtype), str(path)) for n, shape, dtype, path in data]


def first_difference(ours: list[TensorSpec], theirs: list[TensorSpec]) -> str:
    """Human-readable description of the first differing tensor, for mismatch errors."""
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if (a.shape, a.dtype) != (b.shape, b.dtype):
            return f"tensor {index}: expected {a.describe()}, received {b.describe()}"
    if len(ours) != len(theirs):
        return f"expected {len(ours)} tensors, received {len(theirs)}"
    return "no difference in shapes or dtypes (names differ)"
