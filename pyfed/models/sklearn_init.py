"""Building a scikit-learn estimator's structures without data, or adopting a fitted one.

Either way the adapter ends up with float64, C-contiguous parameters it can overwrite in place
(see :mod:`pyfed.models.sklearn_adapter` for the weight layout).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from ..errors import ConfigurationError
from .sklearn_checks import DTYPE, MAX_PARAMETERS, _check_classes, _parameter_count


def initialize(name: str, est, n_features: int, classes: np.ndarray) -> None:
    """Give an unfitted estimator its structures for ``n_features`` and ``classes`` (see the
    adapter module's docstring: one step on a zero row, then the parameters overwritten)."""
    count = _parameter_count(name, est, n_features, len(classes))
    if count > MAX_PARAMETERS:
        raise ConfigurationError(
            f"a {name} with {n_features} features and {len(classes)} classes has "
            f"{count} parameters; PyFed's limit is {MAX_PARAMETERS}")
    zero_row = np.zeros((1, n_features), dtype=DTYPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if name == "LogisticRegression":
            k = 1 if len(classes) == 2 else len(classes)
            est.classes_ = classes
            est.coef_ = np.zeros((k, n_features), dtype=DTYPE)
            est.intercept_ = np.zeros(k, dtype=DTYPE)
            est.n_features_in_ = n_features
            est.n_iter_ = np.zeros(1, dtype=np.int32)
        elif name == "SGDClassifier":
            est.partial_fit(zero_row, classes[:1], classes=classes)
            est.coef_[...] = 0.0
            est.intercept_[...] = 0.0
            est.t_ = 1.0
        elif est.solver == "lbfgs":  # no partial_fit: one zero row per class, one iteration
            max_iter = est.max_iter
            est.set_params(max_iter=1)
            try:
                est.fit(np.zeros((len(classes), n_features), dtype=DTYPE), classes)
            finally:
                est.set_params(max_iter=max_iter)
            reseed_mlp(est)
        else:
            est.partial_fit(zero_row, classes[:1], classes=classes)
            reseed_mlp(est)


def reseed_mlp(est) -> None:
    """Undo the initialising step: scikit-learn's Glorot init, fresh optimizer state."""
    rng = check_random_state(est.random_state)
    factor = 2.0 if est.activation == "logistic" else 6.0
    for coef, intercept in zip(est.coefs_, est.intercepts_):
        bound = math.sqrt(factor / (coef.shape[0] + coef.shape[1]))
        coef[...] = rng.uniform(-bound, bound, coef.shape)
        intercept[...] = rng.uniform(-bound, bound, intercept.shape)
    if hasattr(est, "_optimizer"):
        del est._optimizer  # scikit-learn builds a fresh one when it is missing
    for attr, value in (("t_", 0), ("n_iter_", 0), ("loss_curve_", []),
                        ("best_loss_", np.inf), ("_no_improvement_count", 0)):
        if hasattr(est, attr):
            setattr(est, attr, value)


def adopt_fitted(name: str, est, n_features, classes) -> tuple[int, np.ndarray]:
    """Take a fitted estimator as it is: check ``n_features`` and ``classes`` against it, make
    its parameters private float64 arrays, and return its ``(n_features, classes)``."""
    own_classes = _check_classes(est.classes_)
    own_features = int(est.n_features_in_)
    if n_features is not None and int(n_features) != own_features:
        raise ConfigurationError(
            f"the {name} is fitted on {own_features} features; received n_features="
            f"{n_features}")
    if classes is not None and not np.array_equal(_check_classes(classes), own_classes):
        raise ConfigurationError(
            f"the {name} is fitted on classes {own_classes.tolist()}; received classes="
            f"{list(classes)}")
    if name == "MLPClassifier":
        converted = any(a.dtype != DTYPE for a in est.coefs_ + est.intercepts_)
        if converted and hasattr(est, "_optimizer"):
            del est._optimizer  # its moments belong to the arrays being replaced
        est.coefs_ = [np.array(a, dtype=DTYPE, order="C") for a in est.coefs_]
        est.intercepts_ = [np.array(a, dtype=DTYPE, order="C") for a in est.intercepts_]
    else:
        # Private, writable float64 copies: set_weights writes into them in place.
        est.coef_ = np.array(np.atleast_2d(est.coef_), dtype=DTYPE, order="C")
        est.intercept_ = np.array(np.atleast_1d(est.intercept_), dtype=DTYPE, order="C")
    return own_features, own_classes
