"""The server's public seam: :class:`ServerCallback` (no-op hooks, as Keras callbacks) and the
:class:`CallbackList` that fans each hook out. Import them from :mod:`pyfed.callbacks`.

Subclass ServerCallback, override the hooks you need, and pass ``FL_Server(..., callbacks=[...])``.

A run calls, in order::

    on_train_begin(server)
    for each round (a retried round begins again):
        on_round_begin(server, round, clients)          clients: {name: its FIT config}
        on_fit_result(server, round, client, num_examples, metrics)   once per folded update
        on_client_history(server, round, client, history, first_epoch)  its epoch curves
        on_evaluate_end(server, round, logs)            test_* and eval_* results, if any
        on_round_end(server, round, logs)               what History records for the round
    on_train_end(server, history)

``on_status(server, line, warning)`` carries the server's status lines (listening, waiting for
clients, retries); the progress printer prints them.

``on_fit_result`` and ``on_client_history`` run on the connection's thread as each update is
folded; the fan-out holds a lock, so a callback never runs concurrently with itself. The other
hooks run on the thread that called ``train()``.

History, TensorBoard, checkpoints and the progress lines are built-in callbacks
(:mod:`pyfed.callbacks`), added by default. Passing an instance of one of their classes
replaces the default one; ``verbose=0`` drops the printer. An exception from a callback is
logged and the run goes on; a stop signal (Ctrl-C) is not an exception and still stops it.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Iterable

from ..safe_text import printable

logger = logging.getLogger("pyfed")

HOOKS = ("on_train_begin", "on_round_begin", "on_fit_result", "on_client_history",
         "on_evaluate_end", "on_round_end", "on_train_end", "on_status")


class ServerCallback:
    """No-op hooks; override the ones you need."""

    def on_train_begin(self, server) -> None:
        """The server listens and ``num_clients`` are connected; round 1 (or the first round
        after a resume) is next."""

    def on_round_begin(self, server, server_round: int, clients: dict[str, dict]) -> None:
        """The round's clients are chosen: ``clients`` maps each name to its FIT config. FIT
        has not been sent yet."""

    def on_fit_result(self, server, server_round: int, client: str, num_examples: int,
                      metrics: dict[str, float]) -> None:
        """One client's update was checked and folded into the aggregate."""

    def on_client_history(self, server, server_round: int, client: str, history: dict,
                          first_epoch: int) -> None:
        """The per-epoch curves the client reported with its update (Keras ``History``)."""

    def on_evaluate_end(self, server, server_round: int, logs: dict[str, float]) -> None:
        """The new global model was evaluated: ``test_*`` (centralized) and ``eval_*``
        (federated, examples-weighted) values; not called when nothing evaluated it."""

    def on_round_end(self, server, server_round: int, logs: dict[str, Any]) -> None:
        """The round's record: ``fit_*``, ``test_*``, ``eval_*`` metrics, ``participants``,
        ``round_seconds``, ``bytes_in``, ``bytes_out`` and ``clients``."""

    def on_train_end(self, server, history) -> None:
        """The last round ended, the final model was saved and sent (or the run stopped: then
        ``server.completed`` is False)."""

    def on_status(self, server, line: str, warning: bool = False) -> None:
        """A status line: listening, waiting for clients, resuming, a retried round."""


class CallbackList:
    """Fans each hook out to the callbacks in order; one callback's exception is logged and
    does not stop the others or the round."""

    # Hooks called from connection threads: one at a time, so a callback needs no lock.
    SERIALIZED = ("on_fit_result", "on_client_history")

    def __init__(self, callbacks: Iterable[ServerCallback] = ()):
        self.callbacks = list(callbacks)
        self._lock = threading.Lock()

    def __iter__(self):
        return iter(self.callbacks)

    def find(self, kind: type) -> ServerCallback | None:
        """The first callback of this class (e.g. the built-in History)."""
        return next((callback for callback in self.callbacks if isinstance(callback, kind)), None)

    def call(self, hook: str, *args) -> None:
        if hook in self.SERIALIZED:
            with self._lock:
                self._call(hook, args)
        else:
            self._call(hook, args)

    # One method per hook, so the server's calls read like a ServerCallback's.
    def on_train_begin(self, *args) -> None:
        self.call("on_train_begin", *args)

    def on_round_begin(self, *args) -> None:
        self.call("on_round_begin", *args)

    def on_fit_result(self, *args) -> None:
        self.call("on_fit_result", *args)

    def on_client_history(self, *args) -> None:
        self.call("on_client_history", *args)

    def on_evaluate_end(self, *args) -> None:
        self.call("on_evaluate_end", *args)

    def on_round_end(self, *args) -> None:
        self.call("on_round_end", *args)

    def on_train_end(self, *args) -> None:
        self.call("on_train_end", *args)

    def on_status(self, *args) -> None:
        self.call("on_status", *args)

    def _call(self, hook: str, args: tuple) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception as exc:  # a user's bug must not cost the round
                line = (f"callback {type(callback).__name__}.{hook} raised "
                        f"{type(exc).__name__}: {printable(exc)}; the run goes on")
                logger.error(line)
                if not logging_configured():  # pyfed's NullHandler would swallow it
                    print(f"error: {line}", file=sys.stderr, flush=True)


def logging_configured() -> bool:
    """Does a record from the ``pyfed`` logger reach a real handler? pyfed installs a
    NullHandler, so an application without logging set up would see nothing."""
    current = logger
    while current is not None:
        if any(not isinstance(handler, logging.NullHandler) for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False
