"""The ``pyfed`` command's argument parser: one subparser per subcommand."""

from __future__ import annotations

import argparse
import copy

from .. import __version__
from ..models import defaults
from .node import add_node_command
from .arguments import (PARTITION_SCHEMES, keras_verbosity, non_negative_int,
                        partition_options, port_number, positive_float, positive_int,
                        token_option)
from .subcommands import cmd_client, cmd_experiment, cmd_partition, cmd_server, cmd_token


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

    p = add("experiment", "Run a whole federated experiment: a server and N clients as "
                          "separate processes on 127.0.0.1, or (--backend ray) as actors on a "
                          "Ray cluster.", cmd_experiment)
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
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: every client a process on this machine; ray: clients as Ray "
                        "actors on a Ray cluster (needs pip install 'pyfed[ray]')")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="with --backend ray: 'auto', or host:port of a running cluster (default: "
                        "$RAY_ADDRESS, else a local Ray started for the run)")
    p.add_argument("--clients-per-actor", type=positive_int, default=1,
                   help="with --backend ray: virtual clients per actor, taking turns on its model")
    p.add_argument("--client-cpus", type=positive_float, default=1.0,
                   help="with --backend ray: CPUs each actor reserves")
    p.add_argument("--client-gpus", type=float, default=0.0,
                   help="with --backend ray: GPUs each actor reserves")

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

    add_node_command(add, training_options)

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
