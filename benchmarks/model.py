"""The benchmarked models: the README's dense net (the overhead and memory sections) and a small
one for the scale section, as lists of float32 arrays. No TensorFlow."""

from __future__ import annotations

import math

import numpy as np

LAYERS = (784, 500, 1000, 2000, 1000, 500, 10)
SCALE_SHAPES = [(256, 384), (384,), (384, 10), (10,)]  # 102,538 float32 parameters (0.41 MB)


def model_shapes() -> list[tuple[int, ...]]:
    shapes = []
    for fan_in, fan_out in zip(LAYERS[:-1], LAYERS[1:]):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


def model_weights(random: bool) -> list[np.ndarray]:
    if not random:  # np.zeros is lazily mapped: a client's start-up does not pay for 21.6 MB
        return [np.zeros(shape, dtype=np.float32) for shape in model_shapes()]
    rng = np.random.default_rng(0)
    # dtype=float32 draws directly into float32: no float64 temporary inflates the RSS baseline.
    weights = [rng.random(shape, dtype=np.float32) for shape in model_shapes()]
    for w in weights:
        w -= np.float32(0.5)
    return weights


def same_weights(a, b) -> bool:
    # Averaging N echoes of x gives x back up to rounding (the products w*x are float32).
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.allclose(x, y, rtol=4e-6, atol=0)
        for x, y in zip(a, b))


def model_params() -> int:
    return sum(math.prod(shape) for shape in model_shapes())


def shapes_to_text(shapes) -> str:
    return ",".join("x".join(map(str, shape)) for shape in shapes)


def shapes_from_text(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in part.split("x")) for part in text.split(",")]


def seeded_weights(shapes) -> list[np.ndarray]:
    """Deterministic float32 weights (regenerated for the final check instead of being kept,
    so that the bench holds no second copy of the model in the server's memory)."""
    rng = np.random.default_rng(0)
    weights = [rng.random(shape, dtype=np.float32) for shape in shapes]
    for w in weights:
        w -= np.float32(0.5)
    return weights
