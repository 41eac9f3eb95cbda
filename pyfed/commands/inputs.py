"""What the command line names: a model function (``module:function`` or ``file.py:function``)
and .npy arrays, read without ever unpickling anything."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

from ..errors import ConfigurationError


def mnist_model():
    """The MLP of PyFed's README, for 784-pixel MNIST images."""
    import keras

    model = keras.Sequential([keras.Input((784,))])
    for units in (500, 1000, 2000, 1000, 500):
        model.add(keras.layers.Dense(units, activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    return model


def load_object(reference: str) -> Callable:
    """``package.module:function`` or ``path/to/file.py:function``, as uvicorn and gunicorn do."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"--model must look like module:function; received {reference!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigurationError(f"model file {path} does not exist (from --model {reference!r})")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        # A console script does not put the working directory on sys.path; `python -m` does.
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise ConfigurationError(f"cannot import module {module_name!r} (from --model "
                                         f"{reference!r}); is it on PYTHONPATH?") from None
            raise
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r} "
                                 f"(from --model {reference!r})") from None
    if not callable(target):
        raise ConfigurationError(f"{reference!r} is not callable; --model names a function that "
                                 "returns a model")
    return target


def build_model(reference: str):
    return load_object(reference)()


def load_array(path: str, what: str):
    """An array from a .npy file, never unpickling anything (DESIGN.md: no pickle, ever)."""
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} file not found: {file}")
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as exc:
        raise ConfigurationError(f"cannot load {what} file {file}: {exc} (PyFed reads plain .npy "
                                 "arrays and never unpickles)") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise ConfigurationError(f"{what} file {file} is an .npz archive; pass one .npy array")
    return array


def parse_metrics(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip() and name.strip() != "none"]
