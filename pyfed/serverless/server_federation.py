"""ServerFederation: the federation of a :class:`~pyfed.keras.FederatedCallback` through an
``FL_Server`` running an asynchronous strategy (FedAsync, FedBuff), with a FederatedNode's
``update(weights, num_examples, metrics, epoch) -> (weights, metrics)``.

The asynchronous server keeps every free client busy: it sends FIT with the current global
model, and after each FIT_RESULT the next FIT. Here the "client" is an ordinary
:class:`~pyfed.client.fl_client.FL_Client` on a thread of its own whose model is a
:class:`Relay`: a FIT's weights are handed to the caller of :meth:`ServerFederation.update`,
and the weights the caller passes to its next ``update`` are that job's FIT_RESULT. So the
handshake, the token, TLS, compression, reconnecting, the checks of everything the server sends
and FINISH are FL_Client's own code, not a second copy of it; Keras trains on the caller's
thread, and only numpy arrays cross between the two.
"""

from __future__ import annotations

import math
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..deadline import Deadline
from ..errors import ConfigurationError, ModelMismatchError, NetworkError, ProtocolError, PyFedError
from ..models import FitOutcome, as_adapter
from ..wire.values import first_bad_value

LEAVE = object()  # the caller closed the federation: the relay's job ends without a result


class NodeLeft(PyFedError):
    """The node closed its ServerFederation while the server waited for its next update (the
    FL_Client thread tells the server so, with this message, and ends)."""


class Relay:
    """A ModelAdapter whose ``fit`` is the caller's next epoch: FL_Client calls it for each FIT,
    and it returns what the caller passes to :meth:`ServerFederation.update`.

    Its spec is the server's model's (rebuilt from WELCOME, as an FL_Client without a model of
    its own does), or the ``model``'s given to ServerFederation (then checked at the handshake)."""

    def __init__(self, model: Any = None):
        self.inner = as_adapter(model) if model is not None else None
        self.initialized = self.inner is not None  # else HELLO carries no spec: the server's
        self.received: list | None = None  # the weights of the server's last FIT or FINISH
        self.trained: list | None = None
        self.to_caller: queue.Queue = queue.Queue()  # ("model", weights, version), "finish", "error"
        self.from_caller: queue.Queue = queue.Queue()  # (weights, num_examples, metrics, epoch)

    def initialize_like(self, description: dict) -> "Relay":
        from ..models import adapter_from_description

        self.inner = adapter_from_description(description)
        self.initialized = True
        return self

    def spec(self):
        return self.inner.spec()

    def describe(self) -> dict:
        return self.inner.describe()

    def set_weights(self, weights) -> None:
        # A copy: the arrays may be views of the connection's receive buffer.
        self.received = [np.array(w, copy=True) for w in weights]

    def get_weights(self) -> list:
        return self.trained if self.trained is not None else self.received

    def fit(self, data, target, config: dict) -> FitOutcome:
        self.to_caller.put(("model", self.received, int(config.get("round", 1)) - 1))
        item = self.from_caller.get()  # the caller's next update, or LEAVE from close()
        if item is LEAVE:
            raise NodeLeft("the node left the federation (its training ended)")
        weights, num_examples, metrics, epoch = item
        self.trained = weights
        return FitOutcome(num_examples, metrics, {}, epoch)

    def evaluate(self, data, target, config):
        raise ProtocolError("a ServerFederation node holds no evaluation data (and said so in "
                            "HELLO)")


def _relay_client_class():
    """FL_Client, learning where the server's run keeps this node's TensorBoard curves. (Made on
    first use: importing pyfed.serverless loads no network layer.)"""
    from ..client.fl_client import FL_Client

    class RelayClient(FL_Client):
        run_name: str | None = None
        run_dir: Path | None = None
        rounds: int | None = None

        def _local_logger(self, welcome):
            # The curves are the FederatedCallback's to write (with its federated metrics):
            # only where they go is kept, the server's run folder when it is on this machine.
            local = super()._local_logger(welcome)
            self.run_name, self.rounds = welcome.run_name, welcome.rounds
            self.run_dir = Path(welcome.config["run_dir"]) if local is None else local.run_dir
            if local is not None:
                local.close()
            return None

    return RelayClient


class ServerFederation:
    """``ServerFederation(server_ip, server_port, name, **options)``: this node, as a client of
    an FL_Server that runs FedAsync or FedBuff.

    ``update(weights, num_examples, metrics=None, epoch=None) -> (weights, metrics)`` sends
    ``weights`` as the result of the node's current job and returns the next model the server
    sends (the current global model), with ``{"version": v}``. The first use connects and waits
    for the first job; :meth:`current_weights` does only that (FederatedCallback calls it when
    training begins, so the first epoch trains the server's model, as an FL_Client's does).
    After FINISH, ``update`` returns the final model, unchanged, with ``{"finished": 1.0}``.

    Options: ``model`` (this node's model, Keras or any PyFed model: the server then checks its
    spec at the handshake, else the server's architecture is rebuilt from WELCOME), ``timeout`` (seconds each wait for the server's next model may take; default
    300), and FL_Client's own (``connect_timeout``, ``token``, ``token_file``, ``ssl_cafile``,
    ``use_ssl``, ``max_retries``, ``retry_interval``, ``wait_for_resume``, ``max_message_bytes``,
    ``logdir``, ``verbose``: 0 by default, Keras' progress bar is the node's output).
    """

    def __init__(self, server_ip: str, server_port: int, name: str, *, model: Any = None,
                 timeout: float = 300.0, verbose: Any = 0, **options):
        if not isinstance(timeout, (int, float)) or not timeout > 0 or not math.isfinite(timeout):
            raise ConfigurationError(f"timeout must be a number of seconds > 0; received "
                                     f"{timeout!r}")
        self.relay = Relay(model)
        self.client = _relay_client_class()(name, None, None, server_ip, server_port,
                                             model=self.relay, verbose=verbose, **options)
        self.name = self.client.name
        self.timeout = float(timeout)
        self.where = f"the server at {server_ip}:{server_port}"
        self.version: int | None = None  # of the model the node holds a job for
        self.weights: list | None = None
        self.finished = False
        self.final_reason: str | None = None
        self.updates = 0
        self.closed = False
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- where the FederatedCallback writes this node's curves ---------------------------------

    @property
    def run_name(self) -> str | None:
        return self.client.run_name

    @property
    def run_dir(self) -> Path | None:
        return self.client.run_dir

    # ------------------------------------------------------------------------------------------

    def current_weights(self) -> list:
        """The model the node trains next: the first use connects and waits for the first job."""
        self._hold_a_job()
        return [np.array(w, copy=True) for w in self.weights]

    def update(self, weights, num_examples: int, metrics: dict | None = None,
               epoch: int | None = None) -> tuple[list, dict]:
        self._hold_a_job()  # the first, on first use: these weights answer it
        if not self.finished:
            weights = [np.asarray(w) for w in weights]
            self._check(weights)
            if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) \
                    or num_examples < 0:
                raise ConfigurationError(f"num_examples must be an integer >= 0; received "
                                         f"{num_examples!r}")
            self.relay.from_caller.put((weights, int(num_examples), _numbers(metrics),
                                        int(epoch or 0)))
            self.updates += 1
            self.weights = None
            self._next_model()
        metrics = {"finished": 1.0} if self.finished else {"version": float(self.version)}
        return [np.array(w, copy=True) for w in self.weights], metrics

    def close(self) -> None:
        """Leave: a job the server still waits for ends with a word to it (FL_Client tells the
        server why it leaves), and the connection closes. The federation is not used again."""
        self.closed = True
        thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            return
        self.relay.from_caller.put(LEAVE)
        thread.join(timeout=10.0)

    def __enter__(self) -> "ServerFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------

    def _hold_a_job(self) -> None:
        """Connect on first use, then make sure the node holds the server's next model (or the
        final one)."""
        if self.closed:
            raise ConfigurationError(f"{self.name}: this ServerFederation is closed")
        if self._failure is not None:
            raise self._failure
        if self.finished or self.weights is not None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, daemon=True,
                                            name=f"pyfed-node-{self.name}")
            self._thread.start()
        self._next_model()

    def _serve(self) -> None:
        """The FL_Client thread: every FIT reaches the caller through the relay, then FINISH."""
        try:
            self.client.train()
        except NodeLeft:
            pass
        except BaseException as exc:  # the caller raises it at its next wait
            self.relay.to_caller.put(("error", exc))
        else:
            self.relay.to_caller.put(("finish", self.relay.received, self.client.final_reason))

    def _next_model(self) -> None:
        deadline = Deadline(self.timeout)
        try:
            event = self.relay.to_caller.get(timeout=deadline.remaining())
        except queue.Empty:
            raise NetworkError(f"{self.name}: no model from {self.where} within "
                               f"{self.timeout:g} s") from None
        if event[0] == "error":
            self._failure = event[1]
            raise event[1]
        if event[0] == "finish":
            self.finished, self.weights, self.final_reason = True, event[1], event[2]
            self._thread = None
            return
        _, self.weights, self.version = event

    def _check(self, weights: list) -> None:
        """This node's weights fit the server's model (the server would refuse another model
        update after update), and are finite (a diverged node keeps its NaNs to itself)."""
        spec = self.relay.spec()
        what = f"{self.name}: the weights passed to update()"
        if len(weights) != len(spec):
            raise ModelMismatchError(f"{what} are {len(weights)} tensors; {self.where} trains a "
                                     f"model of {len(spec)}")
        for index, (array, expected) in enumerate(zip(weights, spec)):
            label = f"{what}: tensor {index} ({expected.path or expected.name})"
            if tuple(array.shape) != tuple(expected.shape) or array.dtype.str != expected.dtype:
                raise ModelMismatchError(f"{label} is {list(array.shape)} {array.dtype.str}; "
                                         f"{self.where} trains {expected.describe()}")
            bad = first_bad_value(array, math.inf) if array.dtype.kind == "f" else None
            if bad is not None:
                raise ConfigurationError(f"{label} contains {bad}; every weight must be finite")


def _numbers(metrics: dict | None) -> dict:
    """The metrics a FIT_RESULT can carry: named finite numbers (Keras' logs may hold others)."""
    kept = {}
    for key, value in (metrics or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if isinstance(key, str) and math.isfinite(number):
            kept[key] = number
    return kept
