"""``pyfed node``: train a Keras model on local .npy data and federate it through a shared
folder (a local path or an fsspec URL such as ``s3://bucket/prefix``), with no server."""

from __future__ import annotations

import json

from ..errors import ConfigurationError
from ..models import defaults
from . import EXIT_OK
from .arguments import positive_float, positive_int
from .inputs import build_model, load_array, parse_metrics


def add_node_command(add, training_options) -> None:
    p = add("node", "Train on local .npy data and federate through a shared folder (local or "
                    "S3), with no server.", cmd_node)
    p.add_argument("--folder", required=True,
                   help="the shared folder: a path, file://..., or s3://bucket/prefix")
    p.add_argument("--name", required=True, help="this node's unique name in the folder")
    p.add_argument("--data", required=True, help=".npy features")
    p.add_argument("--target", required=True, help=".npy labels")
    p.add_argument("--mode", choices=["async", "sync"], default="async",
                   help="async: mix the peers' latest updates now; sync: wait for --num-nodes")
    p.add_argument("--num-nodes", type=positive_int, help="nodes each epoch waits for (sync)")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds a sync epoch waits for the others before going on without them")
    p.add_argument("--staleness", choices=["polynomial", "hinge", "constant"],
                   default="polynomial", help="how async mode weighs a peer's older update")
    p.add_argument("--storage-options", default=None,
                   help='JSON for fsspec, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\' '
                        "(keep S3 credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    training_options(p)
    p.add_argument("--model", default=defaults.MODEL,
                   help=f"module:function returning a Keras model (default: {defaults.MODEL})")
    p.add_argument("--test-data", help=".npy features to test the final model on")
    p.add_argument("--test-target", help=".npy labels for --test-data")
    p.add_argument("--logdir", default="pyfed_logs", help="TensorBoard root")
    p.add_argument("--keras-verbose", type=int, choices=[0, 1, 2], default=2)


def cmd_node(args) -> int:
    if (args.test_data is None) != (args.test_target is None):
        raise ConfigurationError("--test-data and --test-target go together; pass both or neither")
    if args.mode == "sync" and args.num_nodes is None:
        raise ConfigurationError("--mode sync needs --num-nodes (how many nodes each epoch waits for)")
    try:
        storage_options = json.loads(args.storage_options) if args.storage_options else None
    except ValueError as exc:
        raise ConfigurationError(f"--storage-options must be JSON; {exc}") from None
    if storage_options is not None and not isinstance(storage_options, dict):
        raise ConfigurationError("--storage-options must be a JSON object")
    data, target = load_array(args.data, "data"), load_array(args.target, "target")
    test = None
    if args.test_data is not None:  # fail on a bad path before training
        test = load_array(args.test_data, "test data"), load_array(args.test_target, "test target")
    from ..keras import FederatedCallback
    from ..serverless import FederatedNode

    from ..models import as_adapter

    model = build_model(args.model)
    # Compiled as FL_Client compiles (optimizer by name, PyFed's learning rate).
    as_adapter(model).compile(loss=args.loss, optimizer=args.optimizer, lr=args.lr,
                              metrics=parse_metrics(args.metrics))
    with FederatedNode(args.folder, args.name, mode=args.mode, num_nodes=args.num_nodes,
                       timeout=args.timeout, storage_options=storage_options,
                       staleness=args.staleness) as node:
        print(f"{args.name}: {len(target)} examples, {args.epochs} epochs, federating through "
              f"{args.folder} ({args.mode})", flush=True)
        model.fit(data, target, epochs=args.epochs, batch_size=args.batch_size,
                  verbose=args.keras_verbose,
                  callbacks=[FederatedCallback(node, logdir=args.logdir)])
    if test is not None:
        values = model.evaluate(*test, verbose=0, return_dict=True)
        values = {"loss": values.pop("loss"), **values}  # loss first, as FL_Server.test()
        print(f"{args.name}: test · " + " · ".join(f"{k} {v:.4f}" for k, v in values.items()),
              flush=True)
    return EXIT_OK
