"""Checks and JSON for scikit-learn models: what may be built from the network, and how.

Everything here judges values that may come from a peer (WELCOME's model description) or from a
user: the allow-list of estimator classes, parameter encoding to JSON scalars and back, shape
limits. Kept apart from the adapter so the trust boundary is one short file.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier

from ..errors import ConfigurationError, ModelMismatchError

logger = logging.getLogger("pyfed")

# The only classes a client builds from the network; a name is looked up here, never imported.
ESTIMATORS = {"SGDClassifier": SGDClassifier, "LogisticRegression": LogisticRegression,
              "MLPClassifier": MLPClassifier}
DTYPE = np.dtype(np.float64)
# 4 GiB of float64, PyFed's default message cap: refuse to allocate more on a server's say-so.
MAX_PARAMETERS = 1 << 29
_SCALARS = (type(None), bool, int, float, str)


def _estimator_name(estimator) -> str:
    for name, cls in ESTIMATORS.items():
        if isinstance(estimator, cls):
            if type(estimator) is not cls:
                logger.warning("%s is federated as a plain %s: clients that rebuild it from the "
                               "server build a %s", type(estimator).__name__, name, name)
            return name
    kind = type(estimator)
    raise ConfigurationError(
        f"PyFed federates scikit-learn's {', '.join(ESTIMATORS)}; received "
        f"{kind.__module__}.{kind.__name__}. For another model, implement "
        "pyfed.models.ModelAdapter")


def _check_settings(name: str, est) -> None:
    """Settings whose hidden state or training loop cannot follow the global weights."""
    if name == "SGDClassifier" and est.average:
        raise ConfigurationError(
            "SGDClassifier(average=...) keeps averaged weights that FedAvg cannot share; "
            f"use average=False (received average={est.average!r})")
    if name == "SGDClassifier" and isinstance(est.class_weight, str):
        raise ConfigurationError(
            "SGDClassifier(class_weight='balanced') cannot train with partial_fit; pass a dict of "
            "weights, e.g. from sklearn.utils.class_weight.compute_class_weight")
    if name == "LogisticRegression" and est.solver == "liblinear":
        raise ConfigurationError(
            "LogisticRegression(solver='liblinear') ignores warm_start, so local training would "
            "not start from the global weights; use 'lbfgs', 'newton-cg', 'sag' or 'saga'")
    if name in ("SGDClassifier", "MLPClassifier") and est.early_stopping and not (
            name == "MLPClassifier" and est.solver == "lbfgs"):
        raise ConfigurationError(
            f"{name}(early_stopping=True) is not supported: PyFed trains with partial_fit, and "
            "the rounds and epochs bound the training; use early_stopping=False")


def _is_fitted(est) -> bool:
    return hasattr(est, "coefs_" if isinstance(est, MLPClassifier) else "coef_")


def _check_n_features(n_features) -> int:
    if (isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer))
            or n_features < 1):
        raise ConfigurationError(f"n_features must be a positive integer; received {n_features!r}")
    return int(n_features)


def _check_classes(classes) -> np.ndarray:
    if isinstance(classes, (str, bytes)):
        raise ConfigurationError(
            f"classes must be a list of labels; received the string {classes!r:.100}")
    try:
        values = np.unique(np.asarray(list(classes)))
    except TypeError as exc:
        raise ConfigurationError(
            f"classes must be labels of one type; received {classes!r:.200} ({exc})") from None
    if values.ndim != 1 or len(values) < 2 or values.dtype.kind not in "biufU":
        raise ConfigurationError(
            "classes must list at least 2 labels (numbers or strings), e.g. range(10); received "
            f"{classes!r:.200}")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ConfigurationError(f"classes must be finite; received {values.tolist()[:20]}")
    return values


def _labels(target, n: int) -> np.ndarray:
    y = np.asarray(target)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ConfigurationError(
            f"scikit-learn targets must be one label per row; received shape {list(y.shape)} "
            "(one-hot? use y.argmax(axis=1))")
    if len(y) != n:
        raise ConfigurationError(f"data has {n} rows but targets have {len(y)}")
    return y


def _parameter_count(name: str, est, n_features: int, n_classes: int) -> int:
    outputs = 1 if n_classes == 2 else n_classes
    if name != "MLPClassifier":
        return (n_features + 1) * outputs
    hidden = est.hidden_layer_sizes
    hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
    units = [n_features] + [int(h) for h in hidden] + [outputs]
    return sum((a + 1) * b for a, b in itertools.pairwise(units))


def _encode(value):
    """A parameter as JSON: scalars, flat lists of them; non-finite floats as {"float": "inf"}."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}  # 'inf', '-inf', 'nan'
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(item) for item in value]
        if any(isinstance(item, (list, dict)) for item in items):
            raise TypeError("nested")
        return items
    raise TypeError(type(value).__name__)


def _decode(name: str, key: str, value):
    if isinstance(value, _SCALARS):
        return value
    if (isinstance(value, dict) and set(value) == {"float"}
            and value["float"] in ("inf", "-inf", "nan")):
        return float(value["float"])
    if isinstance(value, list) and all(isinstance(item, _SCALARS) for item in value):
        return tuple(value)  # hidden_layer_sizes=(32,) travels as [32]
    raise ModelMismatchError(
        f"{name} parameter {key!r} must be a number, string, boolean, null or a flat list of "
        f"those; received {value!r:.100}")
