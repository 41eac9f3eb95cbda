"""Rebuilding the server's scikit-learn estimator from WELCOME's JSON description, never a
pickle: only the allow-listed classes, only their own parameters, only JSON scalars."""

from __future__ import annotations

import typing

import sklearn

from ..errors import ModelMismatchError
from .sklearn_checks import ESTIMATORS, _SCALARS, _decode

if typing.TYPE_CHECKING:
    from .sklearn_adapter import SklearnAdapter


def sklearn_from_description(description: dict) -> SklearnAdapter:
    """Rebuild the server's estimator from WELCOME's ``{"kind": "sklearn", ...}``.

    Only SGDClassifier, LogisticRegression and MLPClassifier are built, only with parameters
    that class has, and only from JSON scalars (or flat lists of them): anything else is a
    ModelMismatchError naming the offending value.
    """
    if not isinstance(description, dict) or description.get("kind") != "sklearn":
        raise ModelMismatchError(f"not a scikit-learn model description: {description!r:.200}")
    name = description.get("estimator")
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ModelMismatchError(
            f"refusing to build estimator {name!r:.100} from the network: PyFed clients build "
            f"only {', '.join(ESTIMATORS)}. For another model, pass your own to "
            "FL_Client(model=...)")
    cls = ESTIMATORS[name]
    versions = (f"scikit-learn {sklearn.__version__} here, "
                f"{description.get('sklearn_version', 'unknown')} on the server")
    params = description.get("params", {})
    if not isinstance(params, dict):
        raise ModelMismatchError(
            f"{name} params must be an object; received {type(params).__name__}")
    known = cls().get_params(deep=False)
    decoded = {}
    for key, value in params.items():
        if key not in known:
            raise ModelMismatchError(
                f"unknown {name} parameter {key!r:.100} ({versions}); known: {sorted(known)}")
        decoded[key] = _decode(name, key, value)
    n_features, classes = description.get("n_features"), description.get("classes")
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        raise ModelMismatchError(
            f"{name} n_features must be a positive integer; received {n_features!r:.100}")
    if (not isinstance(classes, list) or len(classes) < 2
            or not all(isinstance(c, _SCALARS[1:]) for c in classes)):
        raise ModelMismatchError(
            f"{name} classes must be a list of at least 2 labels (numbers or strings); "
            f"received {classes!r:.200}")
    from .sklearn_adapter import SklearnAdapter  # here: the adapter module re-exports this one

    estimator = cls()
    try:
        estimator.set_params(**decoded)
        if hasattr(estimator, "_validate_params"):  # scikit-learn's own constraints, early
            estimator._validate_params()
        return SklearnAdapter(estimator, n_features=n_features, classes=classes)
    except (ValueError, TypeError) as exc:  # InvalidParameterError and ConfigurationError too
        raise ModelMismatchError(f"cannot build the server's {name} ({versions}): {exc}") from exc
