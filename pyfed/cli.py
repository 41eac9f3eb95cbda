"""The ``pyfed`` command: ``experiment``, ``server``, ``client``, ``partition`` and ``token``.

Expected failures (a :class:`~pyfed.errors.PyFedError`, a missing data file) print one line to
stderr and exit with status 2, like argparse's own usage errors; only bugs show a traceback.
TensorFlow is imported only by the subcommands that train.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from . import __version__
from .models import defaults
from .errors import ConfigurationError, PyFedError

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
# Training defaults live in pyfed.models.defaults, shared with FL_Experiment and FL_Client; only the
# model depends on the dataset (the README's MLP for MNIST's 784 pixels).
DEFAULT_MODELS = {"digits": defaults.MODEL, "mnist": "pyfed.cli:mnist_model"}


def mnist_model():
    """The MLP of PyFed's README, for 784-pixel MNIST images."""
    import keras

    model = keras.Sequential([keras.Input((784,))])
    for units in (500, 1000, 2000, 1000, 500):
        model.add(keras.layers.Dense(units, activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    return model


# ---------------------------------------------------------------------------------------------
# Helpers shared by the subcommands
# ---------------------------------------------------------------------------------------------

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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; received {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535]; received {text}")
    return value


def keras_verbosity(text: str):
    if text == "auto":
        return text
    if text in ("0", "1", "2"):
        return int(text)
    raise argparse.ArgumentTypeError(f"must be auto, 0, 1 or 2; received {text}")


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0; received {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; received {text}")
    return value


def open_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1); received {text}")
    return value


# Which partition option belongs to which scheme; None means "not given on the command line".
_SCHEME_OPTIONS = {"alpha": ("--alpha", "dirichlet", 0.5),
                   "min_size": ("--min-size", "dirichlet", 10),
                   "shards_per_client": ("--shards-per-client", "shards", 2)}


def split_data(args, x, y, scheme: str | None, scheme_flag: str):
    """The split `experiment` and `partition` share, so the same options give the same files.

    No scheme, or iid: PyFed's equal split (``split_for_clients``), exactly as before. Otherwise
    ``pyfed.data.split``, holding out 1/(clients+1) for the server unless --server-fraction.
    """
    from .data.datasets import split, split_for_clients

    options = {}
    for dest, (flag, owner, default) in _SCHEME_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None and scheme != owner:
            # A forgotten --scheme would otherwise run a whole experiment on the wrong split.
            raise ConfigurationError(f"{flag} applies to {scheme_flag} {owner} only; received "
                                     f"{flag} {value} with {scheme_flag} {scheme or 'not given'}")
        options[dest] = default if value is None else value
    if scheme in (None, "iid"):
        return split_for_clients(x, y, args.clients, seed=args.seed,
                                 server_fraction=args.server_fraction)
    fraction = args.server_fraction if args.server_fraction is not None else 1 / (args.clients + 1)
    return split(x, y, args.clients, scheme, server_fraction=fraction, seed=args.seed, **options)


def print_split(clients_target, server_target) -> None:
    from .data.datasets import summary

    rows = {f"client_{i}": t for i, t in enumerate(clients_target, start=1)}
    print(summary({**rows, "server": server_target}, print_it=False), flush=True)


def training_line(args) -> str:
    """What a client trains with, as every path prints it."""
    return (f"{args.epochs} epochs, batch size {args.batch_size}, {args.optimizer} lr "
            f"{args.lr:g}")


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    if not any(getattr(h, "_pyfed_cli", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        handler._pyfed_cli = True
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("pyfed").setLevel(level)


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------

def cmd_experiment(args) -> int:
    from .data.datasets import load_dataset
    from .experiment import FL_Experiment

    model_ref = args.model or DEFAULT_MODELS[args.dataset]
    lr = args.lr
    x, y = load_dataset(args.dataset, args.mnist_path)
    clients_data, clients_target, server_data, server_target = split_data(
        args, x, y, args.partition, "--partition")
    print(f"PyFed experiment: {args.dataset}, {args.clients} clients, {args.rounds} rounds of "
          f"{training_line(args)}", flush=True)
    if args.partition is None:
        print(f"data: {len(clients_target[0])} examples per client, {len(server_target)} held "
              "out for the server's test", flush=True)
    else:
        sizes = [len(t) for t in clients_target]
        print(f"data: {args.partition} partition, {min(sizes)} to {max(sizes)} examples per "
              f"client, {len(server_target)} held out for the server's test", flush=True)
        print_split(clients_target, server_target)

    import keras

    keras.utils.set_random_seed(args.seed)
    model = build_model(model_ref)
    # The split happened here, so FL_Experiment cannot know it: say it for TensorBoard's HParams.
    split = {"dataset": args.dataset, "partition": args.partition or "iid",
             **{dest: getattr(args, dest) for dest, (_, owner, _) in _SCHEME_OPTIONS.items()
                if owner == args.partition and getattr(args, dest) is not None}}
    experiment = FL_Experiment(args.clients, clients_data, clients_target, server_data,
                               server_target, args.port, logdir=args.logdir,
                               run_name=args.run_name, launch_tensorboard=args.launch_tensorboard,
                               seed=args.seed, server_options={"hparams": split})
    started = time.monotonic()
    experiment.run(model=model, rounds=args.rounds, epochs=args.epochs,
                   batch_size=args.batch_size, lr=lr, optimizer=args.optimizer,
                   loss=args.loss, metrics=parse_metrics(args.metrics))
    results = getattr(experiment, "test_results", None) or {}
    elapsed = f"{time.monotonic() - started:.1f} s"
    if "accuracy" in results:
        print(f"final test accuracy: {results['accuracy']:.4f} ({elapsed})", flush=True)
    else:
        print(f"finished in {elapsed}", flush=True)
    return EXIT_OK  # FL_Experiment already said where the logs are


def cmd_server(args) -> int:
    if (args.test_data is None) != (args.test_target is None):
        raise ConfigurationError("--test-data and --test-target go together; pass both or neither")
    test = None
    if args.test_data is not None:  # fail on a bad path before anyone connects
        test = load_array(args.test_data, "test data"), load_array(args.test_target, "test target")
    from .components import FL_Server

    model = build_model(args.model)
    # As the Python API's test_data: the global model is tested after every round.
    server = FL_Server(model, args.clients, args.rounds, port=args.port, test_data=test,
                       loss=args.loss if test else None,
                       metrics=parse_metrics(args.metrics) if test else None,
                       multi_system=args.multi_system, host=args.host, logdir=args.logdir,
                       run_name=args.run_name, launch_tensorboard=args.launch_tensorboard,
                       wait_timeout=args.wait_timeout, round_timeout=args.round_timeout,
                       resume=args.resume, checkpoint_dir=args.checkpoint_dir,
                       token_file=args.token_file, ssl_certfile=args.ssl_certfile,
                       ssl_keyfile=args.ssl_keyfile, max_connections=args.max_connections,
                       handshake_timeout=args.handshake_timeout, round_retries=args.round_retries)
    history = server.train()  # ends by saying where the logs are
    if test is not None:  # the last round's test is the final model's: no second evaluation
        results = {name[len("test_"):]: history.last(name) for name in history.history
                   if name.startswith("test_")}
        results = {"loss": results.pop("loss", float("nan")), **results}
        print("test · " + " · ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
    return EXIT_OK


def cmd_client(args) -> int:
    data = load_array(args.data, "data")
    target = load_array(args.target, "target")
    from .components import FL_Client

    client = FL_Client(args.name, data, target, server_ip=args.server_ip, server_port=args.port,
                       connect_timeout=args.connect_timeout, verbose=args.keras_verbose,
                       logdir=args.logdir, token_file=args.token_file, ssl_cafile=args.ssl_cafile,
                       max_retries=args.max_retries, retry_interval=args.retry_interval,
                       validation_split=args.validation_split,
                       wait_for_resume=args.wait_for_resume)
    print(f"{args.name}: {len(target)} examples, {training_line(args)}; connecting to "
          f"{args.server_ip}:{args.port}", flush=True)
    client.train(args.epochs, args.batch_size, args.lr, args.loss, args.optimizer,
                 parse_metrics(args.metrics))
    print(f"{args.name}: trained {client.rounds_trained} rounds; server said "
          f"{client.final_reason or 'nothing'}", flush=True)
    return EXIT_OK


def cmd_partition(args) -> int:
    from .data.datasets import load_dataset, save_partitions

    x, y = load_dataset(args.dataset, args.mnist_path)
    parts = split_data(args, x, y, args.scheme, "--scheme")
    import numpy as np

    for path in save_partitions(args.out, *parts):
        array = np.load(path, allow_pickle=False, mmap_mode="r")
        print(f"wrote {path}  {array.dtype} {tuple(array.shape)}", flush=True)
    print(f"{args.scheme} partition of {args.dataset}, seed {args.seed}: labels per client",
          flush=True)
    print_split(parts[1], parts[3])
    return EXIT_OK


def cmd_token(args) -> int:
    from .wire.auth import new_token, write_token_file

    token = new_token()
    if args.out is None:
        print(token, flush=True)
        return EXIT_OK
    write_token_file(args.out, token)
    # The token itself stays off the screen (and out of scrollback and CI logs).
    print(f"wrote a new token to {args.out} (readable by you only); give it to the server and "
          f"every client with --token-file {args.out}", flush=True)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------

class _HelpFormatter(argparse.HelpFormatter):
    """Show every default worth showing (not None, False or suppressed), even on an option
    without help text, and 0 too (argparse's own ArgumentDefaultsHelpFormatter skips neither)."""

    @staticmethod
    def _has_default(action) -> bool:
        default = action.default
        return (bool(action.option_strings) and default is not None and default is not False
                and default is not argparse.SUPPRESS)

    def _format_action(self, action):
        if action.help is None and self._has_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" not in text and self._has_default(action):
            text = f"{text} (default: %(default)s)".lstrip()
        return text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log INFO to stderr (-vv: DEBUG); default WARNING")
    parser = argparse.ArgumentParser(
        prog="pyfed", parents=[common],
        description="Federated learning between real Python processes over TCP sockets.",
        epilog="Results: tensorboard --logdir pyfed_logs")
    parser.add_argument("--version", action="version", version=f"pyfed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, help_text, func):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        return p

    def training_options(p):
        # One set for every path (pyfed.models.defaults): client, experiment, FL_Client, FL_Experiment.
        p.add_argument("--epochs", type=positive_int, default=defaults.EPOCHS,
                       help="local epochs per round")
        p.add_argument("--batch-size", type=positive_int, default=defaults.BATCH_SIZE)
        p.add_argument("--lr", type=positive_float, default=defaults.LR, help="learning rate")
        p.add_argument("--optimizer", default=defaults.OPTIMIZER, help="a Keras optimizer name")
        p.add_argument("--loss", default=defaults.LOSS, help="a Keras loss name")
        p.add_argument("--metrics", default=",".join(defaults.METRICS),
                       help="comma-separated Keras metric names")

    p = add("experiment", "Run a whole federated experiment here: a server and N clients as "
                          "separate processes on 127.0.0.1.", cmd_experiment)
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits",
                   help="digits ships with scikit-learn; mnist needs --mnist-path or a network")
    p.add_argument("--mnist-path", help="local MNIST .npz with arrays x and y")
    p.add_argument("--clients", type=positive_int, default=defaults.CLIENTS)
    p.add_argument("--rounds", type=positive_int, default=defaults.ROUNDS)
    training_options(p)
    p.add_argument("--model", help=f"module:function returning a Keras model (default: "
                                   f"{defaults.MODEL}, or pyfed.cli:mnist_model, the README's "
                                   "MLP, for mnist)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and the model")
    p.add_argument("--port", type=port_number, default=54321)
    p.add_argument("--logdir", default="pyfed_logs", help="TensorBoard root")
    p.add_argument("--run-name", help="this run's folder under --logdir (default: a timestamp)")
    p.add_argument("--launch-tensorboard", action="store_true",
                   help="start TensorBoard in the background when training ends")
    p.add_argument("--partition", choices=PARTITION_SCHEMES, metavar="SCHEME",
                   help="split the clients' data by SCHEME: " + ", ".join(PARTITION_SCHEMES)
                        + " (default: PyFed's equal IID split)")
    partition_options(p, "--partition")

    p = add("server", "Run a federated server that waits for --clients clients.", cmd_server)
    p.add_argument("--model", default=defaults.MODEL,
                   help="module:function returning a Keras model (the built-in digits MLP)")
    p.add_argument("--clients", type=positive_int, default=defaults.CLIENTS,
                   help="clients to wait for before the first round")
    p.add_argument("--rounds", type=positive_int, default=defaults.ROUNDS)
    p.add_argument("--port", type=port_number, default=54321)
    p.add_argument("--multi-system", action="store_true",
                   help="listen on every interface, for clients on other machines")
    p.add_argument("--host", help="address to bind (default: 127.0.0.1, or all with "
                                  "--multi-system)")
    p.add_argument("--logdir", default="pyfed_logs", help="TensorBoard root")
    p.add_argument("--run-name", help="this run's folder under --logdir (default: a timestamp)")
    p.add_argument("--test-data", help=".npy features to test the global model on after every "
                                       "round")
    p.add_argument("--test-target", help=".npy labels for --test-data")
    p.add_argument("--loss", default=defaults.LOSS, help="a Keras loss name, for the test")
    p.add_argument("--metrics", default=",".join(defaults.METRICS),
                   help="comma-separated metrics, for the test")
    p.add_argument("--wait-timeout", type=float, default=None,
                   help="seconds to wait for all clients to connect (default: forever)")
    p.add_argument("--round-timeout", type=float, default=None,
                   help="seconds a client may take per round (default: no limit)")
    p.add_argument("--round-retries", type=non_negative_int, default=3,
                   help="times a round with too few usable updates is run again before the "
                        "run fails")
    p.add_argument("--launch-tensorboard", action="store_true",
                   help="start TensorBoard in the background when training ends")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint (after a crash or Ctrl-C)")
    p.add_argument("--checkpoint-dir", help="where checkpoints go (default: the run folder)")
    token_option(p)
    p.add_argument("--ssl-certfile", help="serve over TLS with this certificate (PEM)")
    p.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    p.add_argument("--max-connections", type=positive_int, default=None,
                   help="open connections at most; more are refused at once (default: what the "
                        "open-file limit leaves room for, (ulimit -n - open - 64) / 2)")
    p.add_argument("--handshake-timeout", type=positive_float, default=10.0,
                   help="seconds a new connection has to complete its handshake")

    p = add("client", "Run a federated client on local .npy data.", cmd_client)
    p.add_argument("--name", required=True, help="this client's unique name")
    p.add_argument("--data", required=True, help=".npy features")
    p.add_argument("--target", required=True, help=".npy labels")
    p.add_argument("--server-ip", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=54321, help="the server's port")
    training_options(p)
    p.add_argument("--logdir", default="pyfed_logs",
                   help="TensorBoard root on this machine (used when the server is elsewhere)")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="seconds to keep retrying until the server is up")
    p.add_argument("--keras-verbose", type=keras_verbosity, default=2,
                   help="Keras fit verbosity: auto, 0, 1 (progress bar) or 2 (a line per epoch)")
    p.add_argument("--validation-split", type=float, default=0.0,
                   help="fraction of the data held out for federated evaluation")
    p.add_argument("--max-retries", type=int, default=5,
                   help="reconnections in a row after losing the server")
    p.add_argument("--retry-interval", type=positive_float, default=1.0,
                   help="seconds before the first reconnection (doubling each try)")
    p.add_argument("--wait-for-resume", action="store_true",
                   help="when the server stops (Ctrl-C, SIGTERM), wait up to --connect-timeout "
                        "seconds for it to resume instead of exiting")
    token_option(p)
    p.add_argument("--ssl-cafile", help="connect over TLS, trusting this CA certificate (PEM)")

    p = add("partition", "Split a dataset into PyFed's per-client .npy files "
                         "(data_client_<i>.npy, target_client_<i>.npy, data_server.npy, ...).",
            cmd_partition)
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    p.add_argument("--mnist-path", help="local MNIST .npz with arrays x and y")
    p.add_argument("--clients", type=positive_int, default=defaults.CLIENTS)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheme", choices=PARTITION_SCHEMES, default="iid",
                   help="how to split: iid shuffles, then cuts equal parts; dirichlet skews each "
                        "client's labels (see --alpha); shards gives each client "
                        "--shards-per-client label-sorted shards; by_label gives each client "
                        "whole classes")
    partition_options(p, "--scheme")

    p = add("token", "Make a strong shared token for --token-file or $PYFED_TOKEN: 32 random "
                     "bytes as 43 URL-safe characters, printed (or written with --out).",
            cmd_token)
    p.add_argument("--out", metavar="FILE",
                   help="write it to this new file, readable by you only (mode 0600), "
                        "instead of printing it; an existing file is never overwritten")
    return parser


PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "by_label")  # pyfed.data.partitioners.SCHEMES


def token_option(p) -> None:
    p.add_argument("--token-file", help="file holding the federation's shared token (else "
                                        "$PYFED_TOKEN; never put the token itself on a command line)")


def partition_options(p, scheme_flag: str) -> None:
    """Options of the non-IID schemes; None when not given, so split_data can tell."""
    p.add_argument("--alpha", type=positive_float,
                   help=f"with {scheme_flag} dirichlet: the concentration; 0.1 gives each client "
                        "few classes, 100 is near IID (default: 0.5)")
    p.add_argument("--shards-per-client", type=positive_int,
                   help=f"with {scheme_flag} shards: shards per client, so at most this many "
                        "classes each (default: 2)")
    p.add_argument("--min-size", type=non_negative_int,
                   help=f"with {scheme_flag} dirichlet: redraw until every client has at least "
                        "this many examples (default: 10)")
    p.add_argument("--server-fraction", type=open_fraction,
                   help="share of the data held out as the server's test set (default: "
                        "1/(clients+1), the size PyFed's equal split gives it)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", 0))
    try:
        return args.func(args)
    except (PyFedError, FileNotFoundError) as exc:
        print(f"pyfed {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"pyfed {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
