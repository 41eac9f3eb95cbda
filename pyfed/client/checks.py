"""What a client accepts from its server: the run's name, the weights, the training config.

The trust boundaries of DESIGN.md hold from the client's side too: the server may be hostile
(anyone can listen on the port a client was told to use). What it sends becomes a folder
(the run name), overwrites the model (the weights) and sets how long and how hard the client
trains (the config). Each is checked against what the client agreed to (WELCOME's rounds and
model spec) and against a range, and a violation is one ProtocolError naming the value and
what was expected; the client tells the server why, and leaves.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..wire import messages
from ..errors import ProtocolError
from ..safe_text import single_component
from ..wire.spec import TensorSpec
from ..wire.values import first_bad_value

MAX_ROUNDS = 10**9
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 2**24
MAX_ITERATIONS = 10**6

# The config keys the built-in adapters read, with their range. Any other key is passed on
# unchanged, as Flower does: a user's on_fit_config_fn may talk to the user's own ModelAdapter,
# and the built-in adapters never read it. A None value means "not set" and is dropped.
_WHOLE = {"epochs": (1, MAX_EPOCHS), "batch_size": (1, MAX_BATCH_SIZE),
          "max_iter": (1, MAX_ITERATIONS)}
# dp_clip_norm: DifferentialPrivacy(clipping="client")'s C; the client clips its update to it.
_POSITIVE = ("lr", "dp_clip_norm")
_NON_NEGATIVE = ("proximal_mu",)
# Chosen by the client, never by the server: the round comes from the message's own field,
# and Keras' verbosity is how this machine's terminal looks.
_LOCAL = ("round", "verbose")


def check_welcome(welcome: messages.Welcome, who: str) -> None:
    """The parts of WELCOME the client acts on before any round; ``who`` is the client's name."""
    if welcome.client_id != who:  # the server would be welcoming someone else
        raise ProtocolError(f"{who}: the server's WELCOME is for client "
                            f"{welcome.client_id[:60]!r}, not {who!r}")
    if not 1 <= welcome.rounds <= MAX_ROUNDS:
        raise ProtocolError(f"{who}: the server's WELCOME announces {welcome.rounds} rounds; "
                            f"expected 1 to {MAX_ROUNDS}")
    # An honest server names its run with one folder name (FL_Server checks it); anything else
    # (../../x, /etc/cron.d) is an attempt to write outside this client's logdir.
    single_component(welcome.run_name, f"{who}: the server's run name", ProtocolError)
    run_dir = welcome.config.get("run_dir")
    if run_dir is not None and not isinstance(run_dir, str):
        raise ProtocolError(f"{who}: the server's run_dir must be a string; received "
                            f"{type(run_dir).__name__}")


def check_round(server_round: int, rounds: int, what: str) -> None:
    if not 1 <= server_round <= rounds:
        raise ProtocolError(f"{what} is for round {server_round}; this run has rounds 1 to "
                            f"{rounds}")


def training_config(config: dict, what: str) -> dict:
    """``config`` with the keys PyFed's adapters read checked for type and range, the ones
    only this client may set removed, and any other key passed on as it is."""
    checked = {}
    for key, value in config.items():
        if key in _LOCAL or value is None:
            continue
        if key in _WHOLE:
            low, high = _WHOLE[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ProtocolError(f"{what}: config {key} must be a whole number in "
                                    f"[{low}, {high}]; received {value!r:.60}")
        elif key in _POSITIVE or key in _NON_NEGATIVE:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0 or (
                    key in _POSITIVE and value == 0):
                bound = "> 0" if key in _POSITIVE else ">= 0"
                raise ProtocolError(f"{what}: config {key} must be a finite number {bound}; "
                                    f"received {value!r:.60}")
        checked[key] = value
    return checked


def check_weights(weights: Sequence[Any], spec: Sequence[TensorSpec], what: str) -> None:
    """The weights match the model spec agreed at WELCOME: count, shapes, dtypes, and every
    floating-point value finite (a NaN model would train into garbage without a word)."""
    if len(weights) != len(spec):
        raise ProtocolError(f"{what} carries {len(weights)} weight tensors; the model has "
                            f"{len(spec)}")
    for index, (array, expected) in enumerate(zip(weights, spec)):
        label = f"{what}: tensor {index} ({expected.path or expected.name})"
        if not isinstance(array, np.ndarray):
            raise ProtocolError(f"{label} is a {type(array).__name__}; expected an array")
        if tuple(array.shape) != tuple(expected.shape):
            raise ProtocolError(f"{label} has shape {list(array.shape)}; the model has "
                                f"{list(expected.shape)}")
        if array.dtype.str != expected.dtype:
            raise ProtocolError(f"{label} has dtype {array.dtype.str}; the model has "
                                f"{expected.dtype}")
        if array.dtype.kind == "f":
            bad = first_bad_value(array, math.inf)
            if bad is not None:
                raise ProtocolError(f"{label} contains {bad}; every weight must be finite")
