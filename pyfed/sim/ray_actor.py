"""What runs inside one Ray actor of ``FL_Experiment(backend="ray")``: one or more clients.

Each client is a real :class:`~pyfed.client.fl_client.FL_Client` with its own TCP connection to
the server: Ray places the clients, PyFed carries their updates. With one client per actor, the
client is exactly a process client (it builds its own model from WELCOME, seeded as the local
backend seeds it). With ``clients_per_actor > 1`` the actor's virtual clients each run in a
thread of their own and take turns on the actor's one model (:class:`TakingTurns`), so a few
cores simulate hundreds of clients without a model per client.

Importing this module never imports Ray: the actor class is wrapped with ``ray.remote`` by the
driver (:mod:`pyfed.sim.ray_backend`), at run time.
"""

from __future__ import annotations

import random
import sys
import threading

import numpy as np

from ..errors import PyFedError


def seed_streams(seed: int | None, kind: str) -> None:
    """As the local backend seeds a client process (``keras.utils.set_random_seed``), without
    importing Keras for a model that is not one: for numpy models the two are the same."""
    if seed is None:
        return
    if kind == "keras":
        import keras

        keras.utils.set_random_seed(seed)
    else:
        random.seed(seed)
        np.random.seed(seed)


class SharedModel:
    """The actor's one model, built once from the server's description (or the user's
    ``client_options["model"]``), used by one virtual client at a time under ``lock``."""

    def __init__(self, kind: str, model=None):
        self.kind = kind
        self.lock = threading.Lock()
        self.adapter = None
        self.fresh_optimizer: list | None = None
        if model is not None:
            from ..models import as_adapter

            self.adapter = as_adapter(model)

    def build(self, description: dict):
        with self.lock:
            if self.adapter is None:
                from ..models import adapter_from_description

                self.adapter = adapter_from_description(description)
            elif not getattr(self.adapter, "initialized", True):
                self.adapter.initialize_like(description)
        return self.adapter

    def optimizer_variables(self) -> list:
        """The Keras optimizer's state (all but the learning rate, which every client shares),
        built now if it is not yet, so a client's first turn can start from a fresh copy."""
        optimizer = getattr(getattr(self.adapter, "model", None), "optimizer", None)
        if optimizer is None or not hasattr(optimizer, "variables"):
            return []
        if not getattr(optimizer, "built", True):
            optimizer.build(self.adapter.model.trainable_variables)
        variables = [v for v in optimizer.variables
                     if not str(getattr(v, "path", v.name)).endswith("learning_rate")]
        if self.fresh_optimizer is None:
            self.fresh_optimizer = [np.array(v.numpy()) for v in variables]
        return variables


class TakingTurns:
    """One virtual client's view of the actor's shared model: a ModelAdapter holding this
    client's own weights, optimizer state and random streams. ``fit`` and ``evaluate`` take the
    actor's lock, load this client's state into the shared model, run, read it back, release."""

    def __init__(self, shared: SharedModel, seed: int | None):
        self._shared = shared
        self._seed = seed
        self._weights: list[np.ndarray] | None = None
        self._optimizer_state: list | None = None
        self._random_state = None
        self.initialized = shared.adapter is not None and getattr(shared.adapter, "initialized", True)
        # FL_Client accepts Keras callbacks for Keras models only; this one is, when shared.
        self.takes_fit_callbacks = shared.kind == "keras"

    def initialize_like(self, description: dict) -> None:
        self._shared.build(description)
        self.initialized = True

    # -- what FL_Client asks of any adapter ---------------------------------------------------

    def spec(self):
        return self._shared.adapter.spec()

    def describe(self) -> dict:
        return self._shared.adapter.describe()

    def compile(self, **settings) -> None:
        with self._shared.lock:  # the same settings for all: the shared model compiles once
            if hasattr(self._shared.adapter, "compile"):
                self._shared.adapter.compile(**settings)

    def check_data(self, data, target) -> None:
        check = getattr(self._shared.adapter, "check_data", None)
        if check is not None:
            check(data, target)

    def get_weights(self) -> list[np.ndarray]:
        return self._weights if self._weights is not None else self._shared.adapter.get_weights()

    def set_weights(self, weights) -> None:
        # Copied: received arrays may be views of a receive buffer that the next message reuses.
        self._weights = [np.array(w) for w in weights]

    def fit(self, data, target, config: dict, **extra):
        with self._shared.lock:
            self._take_turn()
            try:
                return self._shared.adapter.fit(data, target, config, **extra)
            finally:
                self._end_turn()

    def evaluate(self, data, target, config: dict):
        with self._shared.lock:
            self._shared.adapter.set_weights(self.get_weights())
            return self._shared.adapter.evaluate(data, target, config)

    # -- a turn ------------------------------------------------------------------------------

    def _take_turn(self) -> None:
        shared = self._shared
        shared.adapter.set_weights(self.get_weights())
        if self._random_state is None:  # this client's first turn: its streams start here
            seed_streams(self._seed, shared.kind)
        else:
            random.setstate(self._random_state[0])
            np.random.set_state(self._random_state[1])
        variables = shared.optimizer_variables()
        state = self._optimizer_state if self._optimizer_state is not None else shared.fresh_optimizer
        for variable, value in zip(variables, state or []):
            variable.assign(value)

    def _end_turn(self) -> None:
        self._weights = [np.array(w) for w in self._shared.adapter.get_weights()]
        self._optimizer_state = [np.array(v.numpy()) for v in self._shared.optimizer_variables()]
        self._random_state = (random.getstate(), np.random.get_state())


class ClientActor:
    """A Ray actor hosting ``len(spec["clients"])`` clients; made remote by the driver."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, sys_path: list, spec_bytes: bytes, data_refs: list, port: int) -> dict:
        """Serve every round until the server says FINISH; returns ``{"errors": {name: why}}``
        for the clients that failed (a client's failure does not stop the actor's others)."""
        import ray

        # As the local backend's children do: the driver's path, so by-reference pickles (the
        # user's modules, a test's helpers) import here too.
        sys.path.extend(entry for entry in sys_path if entry not in sys.path)
        import cloudpickle

        spec = cloudpickle.loads(spec_bytes)
        data = ray.get(data_refs)  # zero-copy views of the object store's one copy
        clients = spec["clients"]
        options = dict(spec["client_options"])
        shared = None
        if len(clients) == 1:
            seed_streams(clients[0]["seed"], spec["kind"])  # before the model, as a process
        else:
            shared = SharedModel(spec["kind"], options.pop("model", None))
        errors: dict[str, str] = {}

        def serve(index: int, client: dict) -> None:
            from ..client.fl_client import FL_Client

            try:
                model = {} if shared is None else {"model": TakingTurns(shared, client["seed"])}
                x, y = data[2 * index], data[2 * index + 1]
                FL_Client(client["name"], x, y, server_ip=spec["host"], server_port=port,
                          **options, **model).train(**spec["train"])
            except PyFedError as exc:
                print(f"pyfed-{client['name']}: error: {exc}", file=sys.stderr, flush=True)
                errors[client["name"]] = str(exc)
            except Exception as exc:  # a bug: the local backend's child would exit with 1
                print(f"pyfed-{client['name']}: {type(exc).__name__}: {exc}", file=sys.stderr,
                      flush=True)
                errors[client["name"]] = f"{type(exc).__name__}: {exc}"

        if len(clients) == 1:
            serve(0, clients[0])
        else:
            threads = [threading.Thread(target=serve, args=(i, c), daemon=True,
                                        name=f"pyfed-{c['name']}") for i, c in enumerate(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:  # each ends with its client: FINISH, a failure, or a kill
                thread.join()
        return {"errors": errors}
