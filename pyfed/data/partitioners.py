"""Partitioners: who gets which examples. Pure numpy, seeded, reproducible.

Each partitioner takes the labels and returns one index array per client. The arrays are
disjoint, cover every example the scheme assigns (all of them, for these four schemes), and are
shuffled within each client, so no client's data arrives sorted by label.

- :func:`iid`: shuffle, then equal parts.
- :func:`dirichlet`: label skew, per class proportions ~ Dir(alpha) over the clients (Hsu et al.
  2019, as Flower Datasets' ``DirichletPartitioner``). Small alpha: few classes per client.
- :func:`shards`: McMahan et al.'s pathological non-IID: label-sorted shards, k per client.
- :func:`by_label`: whole classes per client.

:func:`partition` dispatches by name; :func:`split` holds out the server's test set first and
returns arrays in the shape ``FL_Experiment`` takes; :func:`summary` shows the label histogram.
The same seed always gives the same partition (``numpy.random.default_rng(seed)``).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigurationError

SCHEMES = ("iid", "dirichlet", "shards", "by_label")
DEFAULT_MIN_SIZE = 10
DEFAULT_MAX_ATTEMPTS = 100


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _labels(targets) -> np.ndarray:
    """1-D labels from integer/string labels, a (n, 1) column, or one-hot rows (Keras style)."""
    labels = np.asarray(targets)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim == 2:
        labels = labels.argmax(axis=1)  # one-hot or probabilities: the class is the argmax
    if labels.ndim != 1:
        raise ConfigurationError(f"targets must be 1-D labels or 2-D one-hot rows; received "
                                 f"shape {labels.shape}")
    if len(labels) == 0:
        raise ConfigurationError("targets is empty; there is nothing to partition")
    return labels


def _check_num_clients(num_clients, num_examples: int) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ConfigurationError(f"num_clients must be an integer >= 1; received {num_clients!r}")
    if num_clients < 1:
        raise ConfigurationError(f"num_clients must be at least 1; received {num_clients}")
    if num_clients > num_examples:
        raise ConfigurationError(f"num_clients ({num_clients}) exceeds the number of examples "
                                 f"({num_examples}); every client needs at least one")
    return int(num_clients)


def _check_alpha(alpha) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ConfigurationError(f"alpha must be a number > 0; received {alpha!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"alpha must be a finite number > 0 (small, e.g. 0.1: strong "
                                 f"label skew; large, e.g. 100: near IID); received {alpha!r}")
    return value


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}; received {value!r}")
    return int(value)


def _shuffled(rng: np.random.Generator, pieces) -> np.ndarray:
    pieces = list(pieces)
    joined = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
    return rng.permutation(joined.astype(np.int64, copy=False))


# ---------------------------------------------------------------------------------------------
# Schemes
# ---------------------------------------------------------------------------------------------

def iid(targets, num_clients: int, seed=0) -> list[np.ndarray]:
    """Shuffle, then cut into ``num_clients`` parts whose sizes differ by at most one."""
    labels = _labels(targets)
    num_clients = _check_num_clients(num_clients, len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    return [part.astype(np.int64, copy=False) for part in np.array_split(order, num_clients)]


def dirichlet(targets, num_clients: int, alpha: float, seed=0, min_size: int = DEFAULT_MIN_SIZE,
              max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[np.ndarray]:
    """Label skew: each class is spread over the clients in proportions ~ Dir(alpha).

    A draw that leaves some client with fewer than ``min_size`` examples is redrawn, at most
    ``max_attempts`` times; then :class:`ConfigurationError` says what to change.
    """
    labels = _labels(targets)
    num_clients = _check_num_clients(num_clients, len(labels))
    alpha = _check_alpha(alpha)
    min_size = _check_positive_int("min_size", min_size, minimum=0)
    max_attempts = _check_positive_int("max_attempts", max_attempts)
    if min_size * num_clients > len(labels):
        raise ConfigurationError(
            f"min_size={min_size} for each of {num_clients} clients needs "
            f"{min_size * num_clients} examples; the data has {len(labels)}. Lower min_size or "
            "use fewer clients")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    smallest = 0
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in by_class:
            members = rng.permutation(members)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        smallest_now = min(sum(len(chunk) for chunk in chunks) for chunks in parts)
        smallest = max(smallest, smallest_now)
        if smallest_now >= min_size:
            return [_shuffled(rng, chunks) for chunks in parts]
    raise ConfigurationError(
        f"dirichlet partition with alpha={alpha:g} could not give each of {num_clients} clients "
        f"at least min_size={min_size} examples in {max_attempts} draws (at best the smallest "
        f"client had {smallest} of {len(labels)} examples); raise alpha, lower min_size, or "
        "use fewer clients")


def _shards_per_class(counts: np.ndarray, total: int) -> np.ndarray:
    """Give every class one shard, then each further shard to the class whose shards are
    currently largest: that keeps shards label-pure and as equal in size as possible."""
    allotted = np.ones(len(counts), dtype=np.int64)
    for _ in range(total - len(counts)):
        allotted[np.argmax(counts / allotted)] += 1
    return allotted


def shards(targets, num_clients: int, shards_per_client: int = 2, seed=0) -> list[np.ndarray]:
    """McMahan et al.'s pathological non-IID split: ``num_clients * shards_per_client`` shards
    of label-sorted data, dealt at random, so each client sees at most ``shards_per_client``
    classes.

    When there are at least as many shards as classes, every shard holds one class only (each
    class is cut into shards in proportion to its size, so shards are as equal in size as label
    purity allows). With fewer shards than classes, shards are equal contiguous runs of the
    label-sorted data and may span classes.
    """
    labels = _labels(targets)
    num_clients = _check_num_clients(num_clients, len(labels))
    per_client = _check_positive_int("shards_per_client", shards_per_client)
    total = num_clients * per_client
    if total > len(labels):
        raise ConfigurationError(
            f"{num_clients} clients x shards_per_client={per_client} = {total} shards, but the "
            f"data has only {len(labels)} examples; lower shards_per_client or use fewer clients")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if total >= len(classes):
        pieces = []
        for c, n_shards in zip(classes, _shards_per_class(counts, total)):
            pieces.extend(np.array_split(rng.permutation(np.flatnonzero(labels == c)), n_shards))
    else:
        order = rng.permutation(len(labels))
        order = order[np.argsort(labels[order], kind="stable")]
        pieces = np.array_split(order, total)
    deal = rng.permutation(total)
    return [_shuffled(rng, (pieces[s] for s in deal[i * per_client:(i + 1) * per_client]))
            for i in range(num_clients)]


def by_label(targets, num_clients: int, seed=0) -> list[np.ndarray]:
    """Whole classes per client: the classes, shuffled, are dealt round-robin."""
    labels = _labels(targets)
    num_clients = _check_num_clients(num_clients, len(labels))
    classes = np.unique(labels)
    if num_clients > len(classes):
        raise ConfigurationError(
            f"by_label gives each client whole classes, so num_clients ({num_clients}) must not "
            f"exceed the number of classes ({len(classes)})")
    rng = np.random.default_rng(seed)
    dealt = classes[rng.permutation(len(classes))]
    return [_shuffled(rng, (np.flatnonzero(labels == c) for c in dealt[i::num_clients]))
            for i in range(num_clients)]


def partition(targets, num_clients: int, scheme: str = "iid", *, alpha: float = 0.5,
              shards_per_client: int = 2, min_size: int = DEFAULT_MIN_SIZE,
              seed=0) -> list[np.ndarray]:
    """One index array per client, by ``scheme`` (one of :data:`SCHEMES`).

    ``alpha`` and ``min_size`` apply to ``"dirichlet"``, ``shards_per_client`` to ``"shards"``.
    """
    name = str(scheme).lower().replace("-", "_")
    if name not in SCHEMES:
        raise ConfigurationError(f"unknown partition scheme {scheme!r}; expected one of "
                                 f"{', '.join(SCHEMES)}")
    labels = _labels(targets)
    _check_num_clients(num_clients, len(labels))
    # Checked whatever the scheme, so a bad value never waits for the day it matters.
    _check_alpha(alpha)
    _check_positive_int("shards_per_client", shards_per_client)
    _check_positive_int("min_size", min_size, minimum=0)
    if name == "iid":
        return iid(labels, num_clients, seed=seed)
    if name == "dirichlet":
        return dirichlet(labels, num_clients, alpha, seed=seed, min_size=min_size)
    if name == "shards":
        return shards(labels, num_clients, shards_per_client, seed=seed)
    return by_label(labels, num_clients, seed=seed)


# ---------------------------------------------------------------------------------------------
# Arrays in, arrays out
# ---------------------------------------------------------------------------------------------

def _holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator,
             stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """(server indices, remaining indices). Stratified: each class gives its share, rounded so
    the total is exactly round(n * fraction) (largest remainders get the extra examples)."""
    n = len(labels)
    wanted = 0 if fraction == 0 else max(1, round(n * fraction))
    if not stratify:
        order = rng.permutation(n)
        return order[:wanted], order[wanted:]
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * (wanted / n)
    taken = np.floor(quotas).astype(np.int64)
    extra = wanted - int(taken.sum())
    taken[np.argsort(-(quotas - taken), kind="stable")[:extra]] += 1
    server, rest = [], []
    for c, k in zip(classes, taken):
        members = rng.permutation(np.flatnonzero(labels == c))
        server.append(members[:k])
        rest.append(members[k:])
    return _shuffled(rng, server), _shuffled(rng, rest)


def split(x, y, num_clients: int, scheme: str = "iid", server_fraction: float = 0.2, seed=0, *,
          stratify: bool = True, **options):
    """Hold out the server's test set, then partition the rest among the clients.

    Returns ``(clients_data, clients_target, server_data, server_target)``, the arguments
    ``FL_Experiment`` takes. The held-out set is stratified by label unless
    ``stratify=False``; ``server_fraction=0`` holds out nothing (empty server arrays).
    ``options`` go to :func:`partition`: ``alpha``, ``shards_per_client``, ``min_size``.
    """
    if len(x) != len(y):
        raise ConfigurationError(f"x and y must have the same length; received {len(x)} and "
                                 f"{len(y)}")
    try:
        fraction = float(server_fraction)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0 <= fraction < 1:
        raise ConfigurationError(f"server_fraction must be in [0, 1); received {server_fraction!r}")
    labels = _labels(y)
    rng = np.random.default_rng(seed)
    server, rest = _holdout(labels, fraction, rng, stratify)
    # The partitioner continues the same stream, so one seed fixes the whole split.
    parts = partition(labels[rest], num_clients, scheme, seed=rng, **options)
    chosen = [rest[part] for part in parts]
    return ([x[i] for i in chosen], [y[i] for i in chosen], x[server], y[server])


def partition_data(x, y, num_clients: int, scheme: str = "iid", seed=0, **options):
    """Partition all of ``(x, y)`` among the clients, holding nothing out:
    ``(clients_data, clients_target)``."""
    clients_data, clients_target, _, _ = split(x, y, num_clients, scheme, server_fraction=0,
                                               seed=seed, **options)
    return clients_data, clients_target


# ---------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------

def summary(targets_per_client: Sequence | Mapping, num_classes: int | None = None,
            print_it: bool = True) -> str:
    """A per-client label histogram: one row per client (``n`` and the count of each class),
    then a total row. ``targets_per_client`` is a list of label arrays (rows named client_1,
    client_2, ... as PyFed names clients) or a mapping of row name to label array."""
    if isinstance(targets_per_client, Mapping):
        rows = {str(name): _labels_or_empty(t) for name, t in targets_per_client.items()}
    else:
        rows = {f"client_{i}": _labels_or_empty(t)
                for i, t in enumerate(targets_per_client, start=1)}
    present = [t for t in rows.values() if len(t)]
    if num_classes is not None:
        num_classes = _check_positive_int("num_classes", num_classes)
        classes = np.arange(num_classes)
        outside = sorted(set(np.unique(np.concatenate(present)).tolist()) - set(range(num_classes))
                         ) if present else []
        if outside:
            raise ConfigurationError(f"num_classes={num_classes} expects labels "
                                     f"0..{num_classes - 1}; the targets also hold {outside[:10]}")
    else:
        classes = np.unique(np.concatenate(present)) if present else np.empty(0)
    table = [["client", "n", *(str(c) for c in classes)]]
    totals = np.zeros(len(classes), dtype=np.int64)
    for name, labels in rows.items():
        counts = np.array([np.count_nonzero(labels == c) for c in classes], dtype=np.int64)
        totals += counts
        table.append([name, str(len(labels)), *(str(int(k)) for k in counts)])
    table.append(["total", str(sum(len(t) for t in rows.values())), *(str(int(k)) for k in totals)])
    widths = [max(len(row[j]) for row in table) for j in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if j == 0 else cell.rjust(w)
                       for j, (cell, w) in enumerate(zip(row, widths))) for row in table]
    text = "\n".join(lines)
    if print_it:
        print(text, flush=True)
    return text


def _labels_or_empty(targets) -> np.ndarray:
    targets = np.asarray(targets)
    return targets.reshape(0) if targets.size == 0 else _labels(targets)
