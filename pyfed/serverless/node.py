"""FederatedNode: federated learning without a server, through a shared folder.

Each node publishes its update as one file (:mod:`.frames`: PyFed's wire format, never a
pickle) and aggregates its peers' files itself:

- ``mode="sync"``: waits (backing off from 0.05 s to 1 s, at most ``timeout`` seconds) until
  ``num_nodes`` nodes have published this epoch, then aggregates them with ``strategy``
  (FedAvg by default). After ``timeout`` it goes on with who is there, says so in a warning,
  and waits for that many in later epochs (a node that left does not cost every epoch a
  timeout); ``metrics["nodes"]`` says how many took part.
- ``mode="async"``: aggregates the latest update of every node at once, each weighted by
  ``num_examples * s(staleness)`` with FedAsync's staleness functions
  (:func:`pyfed.strategy.staleness.staleness_weight`), staleness being this node's epoch minus
  that node's (at least 0). ``staleness="constant"`` is flwr-serverless's unweighted mixing.

Every node of one federation must derive its model spec the same way (the spec hash includes
the tensors' names): from the weights of the first update by default, or ``spec=``.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..errors import ConfigurationError, StorageError, UpdateRejected
from ..safe_text import path_component, printable, single_component
from ..strategy import _checks
from ..strategy.aggregate import WeightedSum, common_metrics, weighted_metrics
from ..strategy.base import FitResult, Strategy
from ..strategy.fedavg import FedAvg
from ..strategy.staleness import check_staleness_options, staleness_weight
from ..wire.limits import MAX_EPOCH, MAX_METRIC_NAME, MAX_METRICS, metric_name, real
from ..wire.messages import NodeUpdate
from ..wire.spec import TensorSpec, first_difference, spec_hash, spec_of_arrays
from .frames import UPDATES, encode_update, parse_update_path, update_path, value_problem
from .names import NameClaim
from .peers import PeerReader
from .storage import open_folder

logger = logging.getLogger("pyfed")

MODES = ("sync", "async")
FIRST_POLL, MAX_POLL = 0.05, 1.0  # sync mode's backoff between looks at the folder (seconds)


class FederatedNode:
    """One node of a serverless federation; see the module docstring.

    ``update(weights, num_examples, metrics=None, epoch=None) -> (weights, metrics)``
    publishes this node's update and returns the federated weights (in the dtypes given)
    and the aggregated metrics. ``keep_epochs``: each node keeps only its files of the last
    ``keep_epochs`` epochs, so the folder stays bounded. ``close()`` (or ``with``) frees the
    node's name.
    """

    def __init__(self, folder, name: str, strategy: Strategy | None = None, mode: str = "async",
                 num_nodes: int | None = None, timeout: float = 60,
                 storage_options: dict | None = None, *, staleness: str = "polynomial",
                 staleness_exponent: float = 0.5, hinge_a: float = 10, hinge_b: float = 4,
                 keep_epochs: int = 2, spec: list[TensorSpec] | None = None):
        self.name = single_component(name, "node name", ConfigurationError)
        if len(name) > MAX_METRIC_NAME:  # peers refuse a longer name in an update's header
            raise ConfigurationError(f"node name must be at most {MAX_METRIC_NAME} characters; "
                                     f"received {len(name)}")
        if mode not in MODES:
            raise ConfigurationError(f"mode must be 'sync' or 'async'; received {mode!r:.60}")
        self.mode = mode
        self.timeout = _checks.real("timeout", timeout, low=0.0, low_open=True, high=math.inf)
        if mode == "sync" and num_nodes is None:
            raise ConfigurationError("mode='sync' needs num_nodes: how many nodes publish "
                                     "each epoch")
        self.num_nodes = None if num_nodes is None else _checks.integer("num_nodes", num_nodes, 1)
        self.keep_epochs = _checks.integer("keep_epochs", keep_epochs, 2 if mode == "sync" else 1)
        check_staleness_options(staleness, staleness_exponent, hinge_a, hinge_b)
        self.staleness = (staleness, float(staleness_exponent), float(hinge_a), float(hinge_b))
        self.strategy = self._check_strategy(strategy)
        self.spec = None if spec is None else list(spec)
        self.spec_hash = None if spec is None else spec_hash(self.spec)
        self.folder = open_folder(folder, storage_options)
        self._claim = NameClaim(self.folder, self.name, self.timeout)
        self._claim.claim()  # before anything is written or removed: a duplicate stops here
        try:
            self._remove_earlier_updates()
        except BaseException:
            self._claim.release()  # or a retry would be refused as our own duplicate
            raise
        self.epoch = 0  # the epoch of the next update, when update() is not told
        self._expected = self.num_nodes  # sync: nodes to wait for (fewer after a timeout)
        self._published: list[tuple[int, str]] = []
        self._global: list[np.ndarray] | None = None  # sync: the last federated weights
        self._reader: PeerReader | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"FederatedNode({self.folder.url!r}, {self.name!r}, mode={self.mode!r})"

    def __enter__(self) -> "FederatedNode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free this node's name (its last updates stay for the peers still reading them)."""
        if not self.closed:
            self.closed = True
            try:
                self._claim.release()
            except StorageError as exc:  # the marker goes stale after timeout all the same
                logger.warning("node %s: could not remove its marker: %s",
                               printable(self.name, 60), exc)

    # -- the update ---------------------------------------------------------------------------

    def update(self, weights, num_examples: int, metrics: dict | None = None,
               epoch: int | None = None) -> tuple[list[np.ndarray], dict]:
        if self.closed:
            raise ConfigurationError(f"{self!r} is closed")
        arrays = [np.asarray(w) for w in weights]
        self._check_spec(arrays)
        epoch = self.epoch if epoch is None else _checks.integer("epoch", epoch, 0)
        if epoch > MAX_EPOCH:
            raise ConfigurationError(f"epoch must be at most {MAX_EPOCH}; received {epoch}")
        num_examples = _checks.integer("num_examples", num_examples, 1)
        problem = value_problem(arrays, self.spec)
        if problem:
            raise UpdateRejected(f"node {self.name!r} epoch {epoch}: {problem}; not published")
        own = NodeUpdate(node=self.name, epoch=epoch, num_examples=num_examples,
                         metrics=publishable(metrics), spec_hash=self.spec_hash,
                         weights=tuple(arrays))
        self._claim.refresh()  # a duplicate that took the name over stops us here
        self._publish(own)
        if self.mode == "sync":
            new, aggregated = self._sync(own)
        else:
            new, aggregated = self._async(own)
        self.epoch = epoch + 1
        return new, aggregated

    def _publish(self, own: NodeUpdate) -> None:
        path = update_path(self.name, own.epoch, self.spec_hash)
        self.folder.put(path, encode_update(own))
        # Keep (epoch - keep_epochs, epoch]: older files are no use to anyone, and newer ones
        # (an epoch count that started again) would pass for this node's latest.
        kept = []
        for epoch, old in self._published:
            if old != path and not own.epoch - self.keep_epochs < epoch <= own.epoch:
                self.folder.remove(old)
            elif old != path:
                kept.append((epoch, old))
        self._published = kept + [(own.epoch, path)]

    # -- sync ---------------------------------------------------------------------------------

    def _sync(self, own: NodeUpdate) -> tuple[list[np.ndarray], dict]:
        found = {path_component(self.name): own}
        deadline = time.monotonic() + self.timeout
        delay = FIRST_POLL
        while True:
            self._reader.epoch(own.epoch, found)
            remaining = deadline - time.monotonic()
            if len(found) >= self._expected or remaining <= 0:
                break
            time.sleep(min(delay, remaining))
            delay = min(2 * delay, MAX_POLL)
        names = sorted(update.node for update in found.values())
        if len(found) < self._expected:
            logger.warning("node %s: epoch %d: only %d of %d nodes published within %g s (%s); "
                           "going on with them", printable(self.name, 60), own.epoch,
                           len(found), self._expected, self.timeout,
                           printable(", ".join(names), 300))
            self._expected = len(found)  # who is there: later epochs wait for them only
        else:
            self._expected = max(self._expected, min(len(found), self.num_nodes))
        # Every node folds the same updates in the same order from the same reference, so all
        # of them compute the same weights.
        updates = [found[key] for key in sorted(found)]
        reference = self._global if self._global is not None else list(updates[0].weights)
        self.strategy.begin(own.epoch, reference)
        counted = 0
        for index, update in enumerate(updates):
            result = FitResult(client=update.node, weights=update.weights,
                               num_examples=update.num_examples, metrics=dict(update.metrics))
            try:
                (self.strategy.add_last if index == len(updates) - 1 else self.strategy.add)(result)
                counted += 1
            except UpdateRejected as exc:
                logger.warning("node %s: epoch %d: the update of %s is refused: %s",
                               printable(self.name, 60), own.epoch, printable(update.node, 60),
                               printable(exc))
        if counted == 0:  # the strategy refused every update (the next begin() resets it)
            return list(own.weights), {"nodes": 0}
        new, metrics = self.strategy.finish()
        # Kept by reference (no copy of the model): the next epoch's reference, the same on
        # every node as long as the caller does not modify the returned arrays in place.
        self._global = new
        return new, {**metrics, "nodes": counted}

    # -- async --------------------------------------------------------------------------------

    def _async(self, own: NodeUpdate) -> tuple[list[np.ndarray], dict]:
        latest = self._reader.latest()
        latest[path_component(self.name)] = own
        kind, exponent, hinge_a, hinge_b = self.staleness
        total = WeightedSum(own.weights)  # float64 sums, cast back to the model's dtypes
        pairs, staleness_max = [], 0
        for key in sorted(latest):
            update = latest[key]
            staleness = max(0, own.epoch - update.epoch)
            staleness_max = max(staleness_max, staleness)
            total.add(update.weights,
                      update.num_examples * staleness_weight(staleness, kind, exponent,
                                                             hinge_a, hinge_b))
            pairs.append((update.num_examples, dict(update.metrics)))
        metrics = self._aggregate_metrics(pairs)
        return total.mean(), {**metrics, "nodes": len(latest), "staleness_max": staleness_max}

    def _aggregate_metrics(self, pairs: list[tuple[int, dict]]) -> dict:
        """As the server does (FedAvg's fit_metrics_aggregation_fn, by default the
        examples-weighted mean); a failing custom function costs the metrics, not the epoch."""
        fn = getattr(self.strategy, "fit_metrics_aggregation_fn", None) or weighted_metrics
        try:
            return dict(fn(common_metrics(pairs, MAX_METRICS)) or {})
        except Exception as exc:  # noqa: BLE001  (the values come from the peers)
            logger.warning("node %s: the nodes' metrics could not be aggregated (%s: %s)",
                           printable(self.name, 60), type(exc).__name__, printable(exc))
            return {}

    # -- checks and set-up --------------------------------------------------------------------

    def _check_strategy(self, strategy):
        if self.mode == "sync":
            strategy = FedAvg() if strategy is None else strategy
            if not isinstance(strategy, Strategy) or strategy.asynchronous:
                raise ConfigurationError(
                    "mode='sync' needs a synchronous Strategy (FedAvg, FedProx, FedAdam...); "
                    f"received {type(strategy).__name__} (for staleness weighting use "
                    "mode='async')")
            return strategy
        # Async mixing is the staleness rule itself: a strategy would only be ignored, which
        # is worse than refused. FedAvg is accepted for its metrics aggregation function.
        if strategy is not None and type(strategy) is not FedAvg:
            raise ConfigurationError(
                "mode='async' mixes the nodes' latest updates by staleness (staleness=...); "
                f"strategy= applies to mode='sync' only; received {type(strategy).__name__}")
        return strategy

    def _check_spec(self, arrays: list[np.ndarray]) -> None:
        theirs = spec_of_arrays(arrays)
        if self.spec is None:
            self.spec, self.spec_hash = theirs, spec_hash(theirs)
        elif [(s.shape, s.dtype) for s in theirs] != [(s.shape, s.dtype) for s in self.spec]:
            raise ConfigurationError(f"node {self.name!r}: these weights do not fit the model "
                                     f"spec: {first_difference(self.spec, theirs)}")
        if self._reader is None:
            self._reader = PeerReader(self.folder, self.name, self.spec, self.spec_hash)

    def _remove_earlier_updates(self) -> None:
        """A node starts its history afresh: its files from an earlier run would pass for
        its latest update (async) or for this run's epochs (sync)."""
        own = path_component(self.name)
        for path in self.folder.list(f"{UPDATES}/{own}"):
            if parse_update_path(path) is not None:
                self.folder.remove(path)


def publishable(metrics: dict | None) -> dict:
    """The metrics an update can carry: named by printable strings, finite numbers within
    +-1e18, at most MAX_METRICS (peers refuse an update breaking these rules; anything else,
    e.g. a diverged NaN loss, is left out rather than cost the update)."""
    kept = {}
    for name, value in (metrics or {}).items():
        if len(kept) == MAX_METRICS:
            break
        if not isinstance(value, (int, float)):
            try:  # numpy and framework scalars
                value = np.asarray(value).item() if np.ndim(value) == 0 else None
            except (TypeError, ValueError):
                continue
        if isinstance(name, str) and metric_name(name) is None and real(value) is None:
            kept[name] = value
    return kept
