"""Entry points the end-to-end tests run as real processes: ``python roles.py server|client``.

The server prints one ``RESULT {json}`` line at the end; each client prints ``CLIENT {json}``.
Both include a hash of the final weights so tests can check every party holds the same model.
"""

import argparse
import hashlib
import json
import logging
import os
import sys
import time

import numpy as np

from pyfed import data
from pyfed.components import FL_Client, FL_Server


def weights_hash(weights) -> str:
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def digits_split(num_clients):
    x, y = data.load_digits()
    return data.split_for_clients(x, y, num_clients, seed=0)


def server(args) -> None:
    _, _, test_x, test_y = digits_split(args.clients)
    model = data.digits_model()
    srv = FL_Server(model, args.clients, args.rounds, port=args.port, logdir=args.logdir,
                    run_name=args.run_name, multi_system=args.multi_system)
    history = srv.train()
    results = srv.test(test_x, test_y, "sparse_categorical_crossentropy", ["accuracy"])
    print("RESULT " + json.dumps({"history": history.to_dict(), "test": results,
                                  "run_dir": str(srv.run_dir), "final_model": str(srv.final_model_path),
                                  "weights": weights_hash(model.get_weights())}), flush=True)


def epoch_recorder(path):
    """A Keras callback appending one JSON line per finished epoch to ``path``: the epoch's number
    and the names Keras logged. Its class is made here, so that importing this module needs no
    Keras, and cloudpickle (FL_Experiment) carries the class by value."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            with open(path, "a") as file:
                file.write(json.dumps({"epoch": epoch, "logs": sorted(logs or {})}) + "\n")

    return EpochRecorder()


def client(args) -> None:
    xs, ys, _, _ = digits_split(args.clients)
    i = args.index
    callbacks = [epoch_recorder(args.epoch_log)] if args.epoch_log else None
    c = FL_Client(f"client_{i}", xs[i - 1], ys[i - 1], server_ip=args.server_ip,
                  server_port=args.port, logdir=args.logdir, verbose=2,
                  connect_timeout=args.connect_timeout, fit_callbacks=callbacks)
    model = c.train(args.epochs, 32, 0.005, "sparse_categorical_crossentropy", "adam", ["accuracy"])
    print("CLIENT " + json.dumps({"name": c.name, "rounds": c.rounds_trained,
                                  "weights": weights_hash(model.get_weights())}), flush=True)


def numpy_weights(shapes):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def parse_shapes(text):
    """"3x4,4" -> [(3, 4), (4,)]"""
    return [tuple(int(d) for d in part.split("x")) for part in text.split(",")]


def numpy_server(args) -> None:
    from pyfed.models import NumpyModel

    srv = FL_Server(NumpyModel(numpy_weights(parse_shapes(args.shapes))), args.clients, args.rounds,
                    port=args.port, logdir=args.logdir, launch_tensorboard=args.launch_tensorboard,
                    tensorboard_port=args.tensorboard_port, compression=args.compression,
                    multi_system=args.multi_system)
    history = srv.train()
    print("RESULT " + json.dumps({"history": history.to_dict(), "run_dir": str(srv.run_dir),
                                  "tensorboard_pid": getattr(srv.tensorboard_process, "pid", None)}),
          flush=True)


def numpy_client(args) -> None:
    from pyfed.models import NumpyModel

    c = FL_Client(f"client_{args.index}", None, None, server_ip=args.server_ip,
                  server_port=args.port, logdir=args.logdir,
                  model=NumpyModel(numpy_weights(parse_shapes(args.shapes))),
                  connect_timeout=args.connect_timeout)
    c.train()
    print("CLIENT " + json.dumps({"name": c.name, "rounds": c.rounds_trained}), flush=True)


def make_strategy(args):
    import pyfed.strategy as strategies

    options = json.loads(args.strategy_options)
    if args.fit_config:
        config = json.loads(args.fit_config)
        options["on_fit_config_fn"] = lambda server_round: {**config, "lr": config.get("lr", 0.5)}
    return getattr(strategies, args.strategy)(**options)


def security_options(args) -> dict:
    options = {}
    if args.token:
        options["token"] = args.token
    if args.token_file:
        options["token_file"] = args.token_file
    return options


def recording_callbacks(path):
    """A user callback that appends every hook it sees to ``path`` (one JSON line each), and
    one that raises in every hook: the run must go on as if it were not there."""
    from pyfed.callbacks import ServerCallback

    class Recorder(ServerCallback):
        def _note(self, *event):
            with open(path, "a") as f:
                f.write(json.dumps(event) + "\n")

        def on_train_begin(self, server):
            self._note("on_train_begin", server.port)

        def on_round_begin(self, server, server_round, clients):
            self._note("on_round_begin", server_round, sorted(clients))

        def on_fit_result(self, server, server_round, client, num_examples, metrics):
            self._note("on_fit_result", server_round, client, num_examples, sorted(metrics))

        def on_evaluate_end(self, server, server_round, logs):
            self._note("on_evaluate_end", server_round, sorted(logs))

        def on_round_end(self, server, server_round, logs):
            self._note("on_round_end", server_round, logs["participants"],
                       server.history.rounds[-1])

        def on_train_end(self, server, history):
            self._note("on_train_end", history.rounds, server.completed)

        def on_status(self, server, line, warning=False):
            # A status callback may ask the gateway (it used to be called under its lock).
            self.connected = sorted(server.gateway.snapshot())

    class Broken(ServerCallback):
        def on_train_begin(self, server):
            raise RuntimeError("a user's callback bug")

        on_round_begin = on_fit_result = on_round_end = on_evaluate_end = on_train_end = (
            lambda self, *args: (_ for _ in ()).throw(RuntimeError("a user's callback bug")))

    return [Broken(), Recorder()]


def softmax_server(args) -> None:
    """A numpy-only server training SoftmaxRegression on digits (fast: no TensorFlow)."""
    from pyfed.models import SoftmaxRegression

    _, _, test_x, test_y = digits_split(args.clients)
    options = security_options(args)
    if args.ssl_certfile:
        options.update(ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    if args.round_retries is not None:
        options["round_retries"] = args.round_retries
    if args.callback_log:
        options["callbacks"] = recording_callbacks(args.callback_log)
    srv = FL_Server(SoftmaxRegression(64, 10), args.clients, args.rounds, port=args.port,
                    logdir=args.logdir, strategy=make_strategy(args),
                    test_data=(test_x, test_y) if args.centralized else None,
                    round_timeout=args.round_timeout, resume=args.resume,
                    checkpoint_dir=args.checkpoint_dir, run_name=args.run_name,
                    multi_system=args.multi_system, progress_interval=args.progress_interval,
                    compression=args.compression, **options)
    srv.start()
    print(f"READY {srv.port}", flush=True)
    history = srv.train()
    results = srv.test(test_x, test_y)
    print("RESULT " + json.dumps({"history": history.to_dict(), "test": results,
                                  "run_dir": str(srv.run_dir),
                                  "final_model": str(srv.final_model_path),
                                  "weights": weights_hash(srv.adapter.get_weights())}), flush=True)


class SlowSoftmax:
    """SoftmaxRegression that says when it trains and takes ``slow`` extra seconds to do it,
    so that tests can kill it, or miss a deadline, in the middle of a round."""

    def __new__(cls, slow: float, slow_rounds):
        from pyfed.models import SoftmaxRegression

        class Slow(SoftmaxRegression):
            def fit(self, data, target, config):
                server_round = int(config.get("round", 1))
                print(f"TRAINING round {server_round}", flush=True)
                if slow_rounds is None or server_round in slow_rounds:
                    time.sleep(slow)
                return super().fit(data, target, config)

        return Slow(64, 10)


def wait_for_file(path, timeout: float) -> None:
    """Until ``path`` exists (a test's go-ahead), for at most ``timeout`` seconds: a client
    that has started (imports and data loaded) joins the moment the test says so."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def softmax_client(args) -> None:
    xs, ys, _, _ = digits_split(args.clients)
    if args.wait_for_file:
        wait_for_file(args.wait_for_file, args.connect_timeout)
    i = args.index
    options = security_options(args)
    if args.ssl_cafile:
        options["ssl_cafile"] = args.ssl_cafile
    if args.use_ssl:
        options["use_ssl"] = True
    model = None
    if args.slow is not None:
        rounds = None if args.slow_rounds is None else {int(r) for r in args.slow_rounds.split(",")}
        model = SlowSoftmax(args.slow, rounds)
    c = FL_Client(args.name or f"client_{i}", xs[i - 1], ys[i - 1], server_ip=args.server_ip,
                  server_port=args.port, logdir=args.logdir, model=model,
                  connect_timeout=args.connect_timeout, validation_split=args.validation_split,
                  max_retries=args.max_retries, retry_interval=args.retry_interval, **options)
    c.train(epochs=args.epochs, batch_size=32)
    print("CLIENT " + json.dumps({"name": c.name, "rounds": c.rounds_trained,
                                  "reconnections": c.reconnections,
                                  "weights": weights_hash(c.adapter.get_weights())}), flush=True)


def sklearn_estimator(name):
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neural_network import MLPClassifier

    return {"SGDClassifier": lambda: SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0),
            "LogisticRegression": lambda: LogisticRegression(max_iter=50),
            "MLPClassifier": lambda: MLPClassifier(hidden_layer_sizes=(32,), random_state=0)}[name]()


def sklearn_server(args) -> None:
    """FL_Server(curr_model=<unfitted scikit-learn estimator>): shapes come from test_data."""
    _, _, test_x, test_y = digits_split(args.clients)
    srv = FL_Server(curr_model=sklearn_estimator(args.estimator), num_clients=args.clients,
                    rounds=args.rounds, port=args.port, logdir=args.logdir,
                    test_data=(test_x, test_y))
    history = srv.train()
    results = srv.test(test_x, test_y)
    print("RESULT " + json.dumps({"history": history.to_dict(), "test": results,
                                  "weights": weights_hash(srv.adapter.get_weights())}), flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client", "numpy-server", "numpy-client",
                                         "softmax-server", "softmax-client", "sklearn-server",
                                         "sklearn-client"])
    parser.add_argument("--estimator", default="SGDClassifier")
    parser.add_argument("--shapes", default="3x4,4")
    parser.add_argument("--strategy", default="FedAvg")
    parser.add_argument("--strategy-options", default="{}", help="JSON keyword arguments")
    parser.add_argument("--fit-config", default=None, help="JSON returned by on_fit_config_fn")
    parser.add_argument("--centralized", action="store_true", help="FL_Server(test_data=...)")
    parser.add_argument("--validation-split", type=float, default=0.0)
    parser.add_argument("--round-timeout", type=float, default=None)
    parser.add_argument("--progress-interval", type=float, default=10.0)
    parser.add_argument("--round-retries", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--slow", type=float, default=None, help="extra seconds per fit")
    parser.add_argument("--slow-rounds", default=None, help="comma-separated rounds to be slow in")
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--wait-for-file", default=None, help="client: join once this exists")
    parser.add_argument("--retry-interval", type=float, default=1.0)
    parser.add_argument("--token", default=None)
    parser.add_argument("--token-file", default=None)
    parser.add_argument("--ssl-certfile", default=None)
    parser.add_argument("--ssl-keyfile", default=None)
    parser.add_argument("--ssl-cafile", default=None)
    parser.add_argument("--use-ssl", action="store_true")
    parser.add_argument("--compression", default=None)
    parser.add_argument("--callback-log", default=None, help="record the server's callbacks here")
    parser.add_argument("--launch-tensorboard", action="store_true")
    parser.add_argument("--tensorboard-port", type=int, default=6006)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--logdir", default="pyfed_logs")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--server-ip", default="127.0.0.1")
    parser.add_argument("--multi-system", action="store_true")
    parser.add_argument("--connect-timeout", type=float, default=60)
    parser.add_argument("--epoch-log", default=None, help="client: record Keras epochs here")
    args = parser.parse_args()
    roles = {"server": server, "client": client, "numpy-server": numpy_server,
             "numpy-client": numpy_client, "softmax-server": softmax_server,
             "softmax-client": softmax_client, "sklearn-server": sklearn_server,
             "sklearn-client": softmax_client}
    roles[args.role](args)


if __name__ == "__main__":
    main()
