"""scikit-learn estimators as federated models: SGDClassifier, LogisticRegression, MLPClassifier.

Weight layout (what ``get_weights`` returns and ``spec`` describes; float64, C-contiguous):

- ``SGDClassifier``, ``LogisticRegression``: ``[coef_ (k, n_features), intercept_ (k,)]``,
  with ``k = 1`` for two classes and ``k = n_classes`` otherwise (scikit-learn's own shapes).
- ``MLPClassifier``: one (kernel, bias) pair per layer, interleaved like a stack of Keras Dense
  layers: ``[coefs_[0], intercepts_[0], coefs_[1], intercepts_[1], ...]``.

Inputs are converted to float64, so the weights stay float64 whatever the data's dtype (scikit-
learn would otherwise follow float32 data, and the spec would depend on each client's data).

Initialising without real data (an unfitted estimator plus ``n_features`` and ``classes``):
a stochastic estimator takes one ``partial_fit`` step on a single zero row, so scikit-learn
builds its own structures, and the parameters are then overwritten: zeros for SGDClassifier
(scikit-learn's own start), Glorot-uniform from ``random_state`` for MLPClassifier (exactly
scikit-learn's initialisation, so the hidden units are not symmetric), with the optimizer state
of that step discarded. LogisticRegression gets ``classes_``, zero ``coef_`` and ``intercept_``
set directly. A fitted estimator is taken as it is, its shapes read from it.

The architecture travels as JSON (:meth:`SklearnAdapter.describe`), never pickled; a client
rebuilds it with :func:`sklearn_from_description`, which builds only the three classes above.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import scipy.sparse
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import hinge_loss, log_loss
from sklearn.utils import check_array

from ..errors import ConfigurationError, ModelMismatchError
from ..wire.spec import TensorSpec
from .base import FitOutcome
from .sklearn_checks import (DTYPE, _check_classes, _check_n_features, _check_settings, _encode,
                             _estimator_name, _is_fitted, _labels)
from .sklearn_description import sklearn_from_description
from .sklearn_init import adopt_fitted, initialize

logger = logging.getLogger("pyfed")

# sklearn_from_description is re-exported: rebuilding lives in a module of its own.
__all__ = ["SklearnAdapter", "sklearn_from_description"]


class SklearnAdapter:
    """``SklearnAdapter(estimator, n_features=None, classes=None)``.

    ``estimator`` is an SGDClassifier, LogisticRegression or MLPClassifier, fitted or not. An
    unfitted one needs ``n_features`` (columns of X) and ``classes`` (every label, e.g.
    ``range(10)``), or a later :meth:`initialize_from_data`; until then :attr:`initialized` is
    False and the weight methods raise a ConfigurationError that says what to pass.
    """

    def __init__(self, estimator: Any, n_features: int | None = None, classes: Any = None):
        self.estimator = estimator
        self.name = _estimator_name(estimator)
        _check_settings(self.name, estimator)
        if self._uses_full_fit():
            # Local training must start from the global weights, not from scratch.
            estimator.set_params(warm_start=True)
        self.n_features: int | None = None
        self.classes: np.ndarray | None = None
        self._warned: set[str] = set()
        if _is_fitted(estimator):
            self.n_features, self.classes = adopt_fitted(self.name, estimator, n_features,
                                                         classes)
        elif n_features is not None or classes is not None:
            if n_features is None or classes is None:
                missing = "n_features" if n_features is None else "classes"
                raise ConfigurationError(
                    f"an unfitted {self.name} needs both n_features and classes; {missing} is "
                    f"missing (e.g. SklearnAdapter({self.name}(...), n_features=64, "
                    "classes=range(10)))")
            self._initialize(_check_n_features(n_features), _check_classes(classes))

    # -- initialisation ---------------------------------------------------------------------

    @property
    def model(self):
        """The estimator (what FL_Client.train returns)."""
        return self.estimator

    @property
    def initialized(self) -> bool:
        return self.n_features is not None

    def initialize_from_data(self, x: Any, y: Any) -> SklearnAdapter:
        """Take the shapes from data that holds every class (e.g. the server's test set).

        Already initialised: only checks that the data fits the model.
        """
        x = check_array(x, accept_sparse="csr", dtype=DTYPE, ensure_min_samples=0)
        y = _labels(y, len(x))
        if self.initialized:
            self._check_xy(x, y)
            return self
        self._initialize(_check_n_features(x.shape[1]), _check_classes(np.unique(y)))
        return self

    def initialize_like(self, description: dict) -> SklearnAdapter:
        """Take the shapes from the server's :meth:`describe` (WELCOME's ``model``), keeping
        this estimator's own hyperparameters: for a client that brings an unfitted estimator."""
        if not isinstance(description, dict) or description.get("estimator") != self.name:
            raise ModelMismatchError(
                f"this client brings a {self.name}; the server trains "
                f"{description.get('estimator') if isinstance(description, dict) else None!r:.100}")
        try:
            n_features = _check_n_features(description.get("n_features"))
            classes = _check_classes(description.get("classes") or [])
        except ConfigurationError as exc:
            raise ModelMismatchError(f"the server's {self.name} description: {exc}") from None
        if not self.initialized:
            self._initialize(n_features, classes)
        elif n_features != self.n_features or not np.array_equal(classes, self.classes):
            raise ModelMismatchError(
                f"this client's {self.name} has {self.n_features} features and classes "
                f"{self.classes.tolist()[:20]}; the server's has {n_features} and "
                f"{classes.tolist()[:20]}")
        return self

    def _uses_full_fit(self) -> bool:
        return self.name == "LogisticRegression" or (
            self.name == "MLPClassifier" and self.estimator.solver == "lbfgs")

    def _initialize(self, n_features: int, classes: np.ndarray) -> None:
        initialize(self.name, self.estimator, n_features, classes)
        self.n_features, self.classes = n_features, classes

    def _require_initialized(self) -> None:
        if not self.initialized:
            raise ConfigurationError(
                f"the {self.name} is not fitted, so PyFed cannot know its weight shapes. Pass "
                f"SklearnAdapter({self.name}(...), n_features=<number of columns of X>, "
                "classes=<every label, e.g. range(10)>), fit the estimator on a sample first, or "
                "call adapter.initialize_from_data(x, y) with data that contains every class")

    # -- weights ----------------------------------------------------------------------------

    def _live(self) -> list[tuple[str, np.ndarray]]:
        est = self.estimator
        if self.name == "MLPClassifier":
            pairs = []
            for i, (coef, intercept) in enumerate(zip(est.coefs_, est.intercepts_)):
                pairs += [(f"coefs_{i}", coef), (f"intercepts_{i}", intercept)]
            return pairs
        return [("coef", est.coef_), ("intercept", est.intercept_)]

    def get_weights(self) -> list[np.ndarray]:
        self._require_initialized()
        # Copies: the estimator trains its arrays in place, and a sent array must not change.
        return [np.array(array, dtype=DTYPE, order="C") for _, array in self._live()]

    def set_weights(self, weights) -> None:
        self._require_initialized()
        weights = list(weights)
        live = self._live()
        if len(weights) != len(live):
            raise ModelMismatchError(
                f"the {self.name} has {len(live)} weight tensors; received {len(weights)}")
        for (name, target), source in zip(live, weights):
            if np.shape(source) != target.shape:
                raise ModelMismatchError(
                    f"{self.name}/{name} has shape {list(target.shape)}; received "
                    f"{list(np.shape(source))}")
        # In place: received arrays may be read-only views of a network buffer, and MLP's
        # optimizer and SGD's per-class views must keep pointing at the same arrays.
        for (_, target), source in zip(live, weights):
            np.copyto(target, source, casting="same_kind")

    def spec(self) -> list[TensorSpec]:
        self._require_initialized()
        return [TensorSpec(name=name, shape=tuple(int(d) for d in array.shape), dtype=DTYPE.str,
                           path=f"{self.name}/{name}") for name, array in self._live()]

    def describe(self) -> dict:
        self._require_initialized()
        params, dropped = {}, []
        for key, value in self.estimator.get_params(deep=False).items():
            try:
                params[key] = _encode(value)
            except TypeError:
                dropped.append(key)
        if dropped:
            logger.warning("%s parameters %s are not JSON values; clients use their defaults",
                           self.name, dropped)
        return {"kind": "sklearn", "estimator": self.name, "params": params,
                "n_features": self.n_features, "classes": self.classes.tolist(),
                "sklearn_version": sklearn.__version__}

    # -- training ---------------------------------------------------------------------------

    def compile(self, loss=None, optimizer=None, lr=None, metrics=None) -> None:
        """Keras-style hook called by FL_Client/FL_Server: only ``lr`` applies (see fit)."""
        self._apply_lr(lr)

    def fit(self, data, target, config: dict) -> FitOutcome:
        """``epochs`` passes from the current weights.

        SGDClassifier and adam/sgd MLPClassifier: one ``partial_fit`` per epoch (MLP with
        ``batch_size``). LogisticRegression and lbfgs MLPClassifier: one warm-started ``fit`` of
        ``config["max_iter"]`` (else the estimator's) iterations per epoch. ``config["lr"]``
        sets SGD's ``eta0`` or MLP's ``learning_rate_init``.
        """
        self._require_initialized()
        _check_settings(self.name, self.estimator)
        x, y = self._check_xy(data, target)
        epochs = int(config.get("epochs", 1))
        first_epoch = (int(config.get("round", 1)) - 1) * epochs
        self._apply_lr(config.get("lr"))
        if config.get("proximal_mu") and "proximal_mu" not in self._warned:
            self._warned.add("proximal_mu")
            logger.warning("%s: FedProx's proximal term is not applied to scikit-learn "
                           "estimators; training without it", self.name)
        if len(x) == 0:
            return FitOutcome(num_examples=0, first_epoch=first_epoch)
        history: dict[str, list[float]] = {}
        with warnings.catch_warnings():
            # A round is a bounded amount of local work: not converging is expected.
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(epochs):
                self._one_epoch(x, y, config)
                for key, value in self._score(x, y).items():
                    history.setdefault(key, []).append(value)
        metrics = {key: values[-1] for key, values in history.items()}
        return FitOutcome(num_examples=len(x), metrics=metrics, history=history,
                          first_epoch=first_epoch)

    def _one_epoch(self, x, y, config: dict) -> None:
        est = self.estimator
        if not self._uses_full_fit():
            if self.name == "MLPClassifier":
                est.batch_size = max(1, min(int(config.get("batch_size", 200)), len(x)))
            est.partial_fit(x, y, classes=self.classes)
            return
        x, y, weight = self._with_every_class(x, y)
        max_iter = est.max_iter
        est.max_iter = int(config.get("max_iter", max_iter))
        try:
            est.fit(x, y, sample_weight=weight)
        finally:
            est.max_iter = max_iter

    def _with_every_class(self, x, y):
        """A full ``fit`` learns the classes from y: add one zero-weight row per absent class,
        so a client whose data lacks a class keeps the model's shape and contributes nothing
        for that class."""
        missing = np.setdiff1d(self.classes, y)
        if not len(missing):
            return x, y, None
        pad = np.zeros((len(missing), x.shape[1]), dtype=DTYPE)
        if scipy.sparse.issparse(x):
            x = scipy.sparse.vstack([x, pad], format="csr")
        else:
            x = np.vstack([x, pad])
        weight = np.concatenate([np.ones(len(y)), np.zeros(len(missing))])
        return x, np.concatenate([y, missing]), weight

    def _apply_lr(self, lr) -> None:
        if lr is None:
            return
        est = self.estimator
        if self.name == "SGDClassifier":
            est.eta0 = float(lr)
            if est.learning_rate == "optimal" and "lr" not in self._warned:
                self._warned.add("lr")
                logger.warning("SGDClassifier: lr sets eta0, which learning_rate='optimal' "
                               "ignores; use learning_rate='constant', 'invscaling' or 'adaptive'")
        elif self.name == "MLPClassifier":
            est.learning_rate_init = float(lr)
            optimizer = getattr(est, "_optimizer", None)  # built once, keeps its own copy
            for attr in ("learning_rate_init", "learning_rate"):
                if optimizer is not None and hasattr(optimizer, attr):
                    setattr(optimizer, attr, float(lr))

    def evaluate(self, data, target, config: dict) -> tuple[float, int, dict]:
        """``(loss, n, {"accuracy": ...})``. The loss is the log loss when the estimator has
        ``predict_proba``; otherwise (e.g. SGDClassifier's hinge loss) the multiclass hinge
        loss, also named in the metrics as ``hinge_loss``."""
        self._require_initialized()
        x, y = self._check_xy(data, target)
        if len(x) == 0:
            return float("nan"), 0, {}
        scores = self._score(x, y)
        loss = scores["loss"] if "loss" in scores else scores["hinge_loss"]
        return loss, len(x), {k: v for k, v in scores.items() if k != "loss"}

    def _score(self, x, y) -> dict[str, float]:
        est = self.estimator
        accuracy = float(np.mean(est.predict(x) == y))
        if hasattr(est, "predict_proba"):
            return {"loss": float(log_loss(y, est.predict_proba(x), labels=self.classes)),
                    "accuracy": accuracy}
        loss = hinge_loss(y, est.decision_function(x), labels=self.classes)
        return {"hinge_loss": float(loss), "accuracy": accuracy}

    def check_data(self, data, target) -> None:
        """Before round 1: the data's width and labels fit this estimator (one clear line)."""
        self._require_initialized()
        try:
            self._check_xy(data, target)
        except ConfigurationError:
            raise
        except (ValueError, TypeError) as exc:  # check_array: strings, NaN, ragged rows
            raise ConfigurationError(f"the data cannot be read as numbers for the {self.name}: "
                                     f"{exc}") from None

    def _check_xy(self, data, target):
        x = check_array(data, accept_sparse="csr", dtype=DTYPE, ensure_min_samples=0)
        y = _labels(target, len(x))
        if x.shape[1] != self.n_features:
            raise ConfigurationError(
                f"the data has {x.shape[1]} features per example; the {self.name} expects "
                f"{self.n_features} (n_features={self.n_features})")
        unknown = np.setdiff1d(y, self.classes)
        if len(unknown):
            raise ConfigurationError(
                f"the targets hold labels {unknown.tolist()[:10]} that are not among the "
                f"{self.name}'s classes {self.classes.tolist()[:20]}")
        return x, y
