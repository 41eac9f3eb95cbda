"""Strategy state <-> (JSON document, list of arrays), so checkpoints never need pickle.

``split_arrays`` replaces every numpy array in a nested dict/list with ``{"__array__": i}`` and
returns the arrays separately (for ``np.savez``; load them back with ``allow_pickle=False``);
``join_arrays`` puts them back. Numpy scalars become Python numbers, tuples become lists.
"""

from __future__ import annotations

import numpy as np

_KEY = "__array__"


def split_arrays(state) -> tuple[object, list[np.ndarray]]:
    arrays: list[np.ndarray] = []

    def walk(value):
        if isinstance(value, np.ndarray):
            arrays.append(value)
            return {_KEY: len(arrays) - 1}
        if isinstance(value, dict):
            if _KEY in value:
                raise ValueError(f"state may not use the reserved key {_KEY!r}")
            return {str(k): walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"strategy state holds a {type(value).__name__}, which cannot be "
                        "checkpointed without pickle")

    return walk(state), arrays


def join_arrays(document, arrays) -> object:
    arrays = list(arrays)

    def walk(value):
        if isinstance(value, dict):
            if set(value) == {_KEY}:
                return arrays[value[_KEY]]
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(document)
