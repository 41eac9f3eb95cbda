"""Built-in datasets and partitioners. Defaults work offline: scikit-learn ships digits.

The partitioners (``iid``, ``dirichlet``, ``shards``, ``by_label``, ``partition``, ``split``,
``summary``) live in :mod:`pyfed.data.partitioners` and are re-exported here.

``load_mnist`` reads a local file, or asks ``fetch_openml`` when online; offline, it fails with
a :class:`~pyfed.errors.DatasetUnavailableError` that says what to do instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigurationError, DatasetUnavailableError
from .partitioners import (SCHEMES, by_label, dirichlet, iid, partition, partition_data, shards,
                        split, summary)

__all__ = ["load_digits", "load_mnist", "split_for_clients", "load_dataset", "save_partitions",
           "digits_model", "SCHEMES", "iid", "dirichlet", "shards", "by_label", "partition",
           "partition_data", "split", "summary"]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: 1,797 images as float32 in [0, 1], labels int64."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def load_mnist(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST as (70000, 784) float32 in [0, 1] and int64 labels.

    ``path`` may be an ``.npz`` with arrays ``x``/``y`` (or ``data``/``target``); otherwise
    ``PYFED_MNIST`` names one; otherwise ``fetch_openml("mnist_784")`` is tried.
    """
    path = path or os.environ.get("PYFED_MNIST")
    if path:
        file = Path(path)
        if not file.is_file():
            raise DatasetUnavailableError(f"MNIST file {file} does not exist; expected an .npz "
                                          "with arrays x and y (or data and target)")
        try:
            archive = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as exc:  # a pickle, or not numpy at all: never unpickled
            raise DatasetUnavailableError(f"cannot read MNIST file {file}: {exc}; expected an "
                                          ".npz with arrays x and y (or data and target)") from None
        if isinstance(archive, np.ndarray):
            raise DatasetUnavailableError(f"MNIST file {file} is a single .npy array; expected an "
                                          ".npz with arrays x and y (or data and target)")
        with archive:
            keys = ("x", "y") if "x" in archive else ("data", "target")
            try:
                x, y = archive[keys[0]], archive[keys[1]]
            except KeyError:
                raise DatasetUnavailableError(
                    f"{file} holds {sorted(archive.files)}; expected x and y (or data and target)") from None
            except ValueError as exc:  # an object array: reading it would mean unpickling
                raise DatasetUnavailableError(f"cannot read MNIST file {file}: {exc}; PyFed never "
                                              "unpickles, so save plain numeric arrays") from None
    else:
        try:
            from sklearn.datasets import fetch_openml

            bunch = fetch_openml("mnist_784", version=1, as_frame=False, parser="liac-arff")
        except Exception as exc:  # URLError, HTTPError, OSError, timeouts: all mean "unavailable"
            raise DatasetUnavailableError(
                f"MNIST could not be downloaded with fetch_openml ({type(exc).__name__}: {exc}). "
                "Offline? Pass a local .npz (path=... or PYFED_MNIST=...), or use the built-in "
                "digits dataset: pyfed.data.load_digits()") from None
        x, y = bunch.data, bunch.target
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    if x.max(initial=0) > 1.0:
        x = x / 255.0
    return x, np.asarray(y).astype(np.int64)


def split_for_clients(x: np.ndarray, y: np.ndarray, num_clients: int, seed: int = 0,
                      server_fraction: float | None = None):
    """PyFed's split: shuffle, then ``num_clients + 1`` equal parts; the last is the server's
    test set (or ``server_fraction`` of the data). Returns
    ``(clients_data, clients_target, server_data, server_target)``."""
    if num_clients < 1:
        raise ConfigurationError(f"num_clients must be at least 1; received {num_clients}")
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    if server_fraction is None:
        per_client = len(y) // (num_clients + 1)
    else:
        if not 0 < server_fraction < 1:
            raise ConfigurationError(f"server_fraction must be in (0, 1); received {server_fraction}")
        per_client = int(len(y) * (1 - server_fraction)) // num_clients
    clients_data = [x[i * per_client:(i + 1) * per_client] for i in range(num_clients)]
    clients_target = [y[i * per_client:(i + 1) * per_client] for i in range(num_clients)]
    return clients_data, clients_target, x[num_clients * per_client:], y[num_clients * per_client:]


def load_dataset(name: str, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist(path)
    raise ConfigurationError(f"unknown dataset {name!r}; expected 'digits' or 'mnist'")


def save_partitions(directory: str | os.PathLike, clients_data, clients_target,
                    server_data, server_target) -> list[Path]:
    """Write PyFed's files: data_client_<i>.npy, target_client_<i>.npy, data_server.npy, ..."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (x, y) in enumerate(zip(clients_data, clients_target), start=1):
        for stem, array in ((f"data_client_{i}", x), (f"target_client_{i}", y)):
            np.save(out / f"{stem}.npy", array)
            written.append(out / f"{stem}.npy")
    for stem, array in (("data_server", server_data), ("target_server", server_target)):
        np.save(out / f"{stem}.npy", array)
        written.append(out / f"{stem}.npy")
    return written


def digits_model(hidden: int = 64):
    """The small Keras MLP the demo, tests and examples train on digits."""
    import keras

    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
