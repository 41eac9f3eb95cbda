"""The subcommands: ``experiment``, ``server``, ``client``, ``partition`` and ``token``. Each
takes the parsed arguments and returns the exit status; expected failures raise (pyfed.cli's
``main`` turns them into one line)."""

from __future__ import annotations

import time

from ..errors import ConfigurationError
from ..models import defaults
from . import EXIT_OK
from .inputs import build_model, load_array, parse_metrics
from .splitting import SCHEME_OPTIONS, print_split, split_data

# Training defaults live in pyfed.models.defaults, shared with FL_Experiment and FL_Client; only the
# model depends on the dataset (the README's MLP for MNIST's 784 pixels).
DEFAULT_MODELS = {"digits": defaults.MODEL, "mnist": "pyfed.cli:mnist_model"}


def training_line(args) -> str:
    """What a client trains with, as every path prints it."""
    return (f"{args.epochs} epochs, batch size {args.batch_size}, {args.optimizer} lr "
            f"{args.lr:g}")


def cmd_experiment(args) -> int:
    from ..data.datasets import load_dataset
    from ..experiment import FL_Experiment

    backend = backend_options(args)  # before any work: a wrong flag is said at once
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
             **{dest: getattr(args, dest) for dest, (_, owner, _) in SCHEME_OPTIONS.items()
                if owner == args.partition and getattr(args, dest) is not None}}
    experiment = FL_Experiment(args.clients, clients_data, clients_target, server_data,
                               server_target, args.port, logdir=args.logdir,
                               run_name=args.run_name, launch_tensorboard=args.launch_tensorboard,
                               seed=args.seed, server_options={"hparams": split}, **backend)
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


def backend_options(args) -> dict:
    """FL_Experiment's backend arguments from ``--backend`` and the Ray options, which only
    ``--backend ray`` may use (a Ray option with the local backend is a mistake to name)."""
    if args.backend != "ray":
        given = [flag for flag, value, default in (
            ("--ray-address", args.ray_address, None), ("--clients-per-actor",
                                                        args.clients_per_actor, 1),
            ("--client-cpus", args.client_cpus, 1.0), ("--client-gpus", args.client_gpus, 0.0))
            if value != default]
        if given:
            raise ConfigurationError(f"{', '.join(given)} only apply with --backend ray")
        return {}
    return {"backend": "ray", "ray_address": args.ray_address,
            "clients_per_actor": args.clients_per_actor,
            "client_resources": {"num_cpus": args.client_cpus, "num_gpus": args.client_gpus}}


def cmd_server(args) -> int:
    if (args.test_data is None) != (args.test_target is None):
        raise ConfigurationError("--test-data and --test-target go together; pass both or neither")
    test = None
    if args.test_data is not None:  # fail on a bad path before anyone connects
        test = load_array(args.test_data, "test data"), load_array(args.test_target, "test target")
    from ..components import FL_Server

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
    from ..components import FL_Client

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
    from ..data.datasets import load_dataset, save_partitions

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
    from ..wire.auth import new_token, write_token_file

    token = new_token()
    if args.out is None:
        print(token, flush=True)
        return EXIT_OK
    write_token_file(args.out, token)
    # The token itself stays off the screen (and out of scrollback and CI logs).
    print(f"wrote a new token to {args.out} (readable by you only); give it to the server and "
          f"every client with --token-file {args.out}", flush=True)
    return EXIT_OK
