"""The server's callback list: the built-in callbacks first, then the user's."""

from __future__ import annotations

from typing import Iterable

from ..errors import ConfigurationError
from ..tracking.history import History
from ..tracking.hooks import CallbackList, ServerCallback
from ..tracking.progress import ProgressPrinter
from ..tracking.tensorboard import TensorBoard
from .checkpointer import Checkpointer

BUILTINS = (History, TensorBoard, Checkpointer, ProgressPrinter)


def with_builtins(callbacks: Iterable[ServerCallback] | None, verbose: int) -> CallbackList:
    """History, TensorBoard, Checkpointer and (verbose) ProgressPrinter, in that order, each
    replaced by the user's instance of its class (a subclass too); then the user's others."""
    user = list(callbacks or [])
    for callback in user:
        if not isinstance(callback, ServerCallback):
            raise ConfigurationError(f"callbacks must be pyfed.callbacks.ServerCallback objects; "
                                     f"received {type(callback).__name__}")
    chosen = []
    for builtin in BUILTINS:
        mine = next((c for c in user if isinstance(c, builtin)), None)
        if mine is not None:
            user.remove(mine)
            chosen.append(mine)
        elif builtin is not ProgressPrinter or verbose:
            chosen.append(builtin())
    return CallbackList(chosen + user)
