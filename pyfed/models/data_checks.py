"""A client's own data against the model it is about to train: checked before round 1.

Wrong data (32 features for a 64-input model, labels as strings, labels beyond the model's
classes) would otherwise fail deep inside the library's ``fit`` in round 1, with a long
traceback, after the server has waited for this client. Adapters call these with what they
know of their model (:meth:`check_data` on the built-in adapters); each raises one
ConfigurationError naming what the data has and what the model expects.

Only data with a shape is checked (numpy arrays, pandas frames, tensors, nested lists): a
``tf.data.Dataset`` or a generator is left to the library.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..errors import ConfigurationError


def _shape_of(data: Any) -> tuple | None:
    shape = getattr(data, "shape", None)
    if shape is None and isinstance(data, (list, tuple)):
        try:
            shape = np.shape(data)
        except ValueError:  # ragged: leave it to the library
            return None
    if shape is None:
        return None
    try:
        return tuple(None if d is None else int(d) for d in shape)
    except (TypeError, ValueError):
        return None


def _show(shape) -> str:
    return str(tuple(shape)) if len(shape) != 1 else f"({shape[0]},)"


def check_features(data: Any, input_shape: tuple) -> None:
    """``data`` holds examples of ``input_shape[1:]`` (``input_shape`` has the batch first,
    e.g. ``(None, 64)``); a ``None`` dimension of the model matches anything."""
    shape = _shape_of(data)
    if shape is None or not shape:
        return
    got, expected = shape[1:], tuple(input_shape[1:])
    if got == () and expected == (1,):
        return  # one feature given as a flat vector: Keras adds the axis itself
    if len(got) == len(expected) and all(e is None or g == e for g, e in zip(got, expected)):
        return
    if len(got) == 1 and len(expected) == 1:
        raise ConfigurationError(
            f"data has {got[0]} features per example; the model expects {expected[0]} "
            f"(input shape {tuple(input_shape)})")
    raise ConfigurationError(
        f"data has examples of shape {_show(got)}; the model expects {_show(expected)} "
        f"(input shape {tuple(input_shape)})")


_ALL_NUMBERS = object()


def _first_non_number(values: np.ndarray):
    for value in values.reshape(-1):
        if not isinstance(value, numbers.Number) or isinstance(value, bool):
            return value
    return _ALL_NUMBERS


def check_labels(target: Any, num_classes: int, output: str) -> None:
    """Class numbers for a model of ``num_classes`` outputs: one whole number in
    ``0..num_classes-1`` per example, or one-hot rows of ``num_classes`` columns. ``output``
    describes the model's output for the message, e.g. ``"output shape (None, 10)"``."""
    if target is None or _shape_of(target) is None:
        return
    labels = np.asarray(target)
    expectation = f"the model expects class numbers 0..{num_classes - 1} ({output})"
    if labels.dtype.kind in "USO":
        if labels.dtype.kind in "US":
            odd = labels.reshape(-1)[0].item() if labels.size else ""  # '0', not np.str_('0')
        else:
            odd = _first_non_number(labels)
        if odd is not _ALL_NUMBERS:
            raise ConfigurationError(
                f"labels are {'strings' if isinstance(odd, (str, bytes)) else 'not numbers'} "
                f"(e.g. {odd!r:.40}); {expectation}. Map them to numbers first "
                "(e.g. sklearn.preprocessing.LabelEncoder)")
        try:
            labels = labels.astype(np.float64)
        except (TypeError, ValueError):  # e.g. complex numbers: left to the library
            return
    if labels.dtype.kind not in "biuf":
        return
    if labels.ndim == 2 and labels.shape[1] not in (1, num_classes):
        raise ConfigurationError(
            f"labels have {labels.shape[1]} columns per example; the model outputs "
            f"{num_classes} ({output}): pass one class number per example or one-hot rows of "
            f"{num_classes}")
    if labels.ndim == 2 and labels.shape[1] == num_classes and num_classes > 1:
        return  # one-hot rows
    if labels.ndim > 2 or labels.size == 0 or labels.dtype.kind == "b":
        return
    flat = labels.reshape(-1)
    if flat.dtype.kind == "f":
        whole = np.isfinite(flat) & (flat == np.round(flat))
        if not whole.all():
            raise ConfigurationError(
                f"labels include {flat[~whole][0]:g}, which is not a class number; {expectation}")
    outside = (flat < 0) | (flat >= num_classes)
    if outside.any():
        low, high = flat.min(), flat.max()
        raise ConfigurationError(
            f"labels include {flat[outside][0]:g} (they range over {low:g}..{high:g}); "
            f"{expectation}")
