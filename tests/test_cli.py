"""The ``pyfed`` command, run as real processes on 127.0.0.1."""

import argparse
import inspect
import re

import numpy as np
import pytest

from cliprocs import PYFED_SCRIPT, PYTHON, TF_NOISE, Processes, child_env, free_port
from pyfed import FL_Client
from pyfed.models import defaults
from pyfed.cli import build_parser, load_object, mnist_model, split_data
from pyfed.errors import ConfigurationError
from pyfed.experiment import FL_Experiment

PYFED = [PYTHON, "-m", "pyfed"]
TF_START = 60  # generous bounds: each TensorFlow process needs ~3 s to import on 2 cores


def test_partition_writes_pyfed_files_with_the_right_shapes(tmp_path):
    with Processes(tmp_path / "procs") as procs:
        # The installed console script, as a user would type it.
        procs.start("partition", [PYFED_SCRIPT, "partition", "--dataset", "digits",
                                  "--clients", "3", "--out", "parts", "--seed", "1"], cwd=tmp_path)
        assert procs.wait("partition", 60) == 0, procs.dump()
    parts = tmp_path / "parts"
    shapes = {p.name: np.load(p, allow_pickle=False).shape for p in parts.glob("*.npy")}
    assert shapes == {
        **{f"data_client_{i}.npy": (449, 64) for i in (1, 2, 3)},
        **{f"target_client_{i}.npy": (449,) for i in (1, 2, 3)},
        "data_server.npy": (450, 64), "target_server.npy": (450,)}
    labels = np.concatenate([np.load(parts / f"target_client_{i}.npy") for i in (1, 2, 3)]
                            + [np.load(parts / "target_server.npy")])
    assert sorted(np.unique(labels)) == list(range(10)) and len(labels) == 1797
    assert "wrote parts/data_client_1.npy" in procs.out("partition")


def test_server_and_three_clients_as_separate_processes(tmp_path):
    port = free_port()
    with Processes(tmp_path / "procs") as procs:
        procs.start("partition", [*PYFED, "partition", "--clients", "3", "--out", "parts"],
                    cwd=tmp_path)
        assert procs.wait("partition", 60) == 0, procs.dump()
        procs.start("server", [*PYFED, "server", "--model", "pyfed.data:digits_model",
                               "--clients", "3", "--rounds", "2", "--port", port,
                               "--wait-timeout", "90", "--logdir", "logs", "--run-name", "cli",
                               "--test-data", "parts/data_server.npy",
                               "--test-target", "parts/target_server.npy"], cwd=tmp_path)
        for i in (1, 2, 3):
            procs.start(f"client_{i}", [
                *PYFED, "client", "--name", f"client_{i}", "--data", f"parts/data_client_{i}.npy",
                "--target", f"parts/target_client_{i}.npy", "--port", port, "--epochs", "1",
                "--lr", "0.005", "--connect-timeout", "60", "--logdir", "logs"], cwd=tmp_path)
        codes = procs.wait_all(timeout=TF_START + 60)
        assert codes == {"partition": 0, "server": 0, "client_1": 0, "client_2": 0,
                         "client_3": 0}, procs.dump()
        server_out = procs.out("server")
    assert f"PyFed server listening on 127.0.0.1:{port}" in server_out
    assert re.search(r"^round 1/2 · 3 clients · fit loss", server_out, re.M), server_out
    assert re.search(r"^round 2/2 · 3 clients · fit loss", server_out, re.M), server_out
    assert re.search(r"^test · loss [\d.]+ · accuracy [\d.]+$", server_out, re.M), server_out
    assert "tensorboard --logdir logs" in server_out
    assert "client_2: trained 2 rounds; server said completed" in procs.out("client_2")
    run = tmp_path / "logs" / "cli"
    assert list((run / "server").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "clients").iterdir()) == ["client_1", "client_2", "client_3"]


def test_client_with_a_missing_data_file_exits_2_with_one_clear_line(tmp_path):
    with Processes(tmp_path / "procs") as procs:
        procs.start("client", [*PYFED, "client", "--name", "c1", "--data", "missing.npy",
                               "--target", "missing_target.npy", "--port", free_port()],
                    cwd=tmp_path)
        assert procs.wait("client", 60) == 2, procs.dump()
        stderr = procs.err("client")
    assert stderr.strip() == "pyfed client: error: data file not found: missing.npy"
    assert procs.out("client") == ""


def test_expected_errors_exit_2_without_traceback(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.zeros(1))
    cases = {
        "bad_model": ([*PYFED, "server", "--model", "no_such_module:build", "--clients", "1",
                       "--rounds", "1"], "cannot import module 'no_such_module'"),
        "model_syntax": ([*PYFED, "server", "--model", "no_colon", "--clients", "1", "--rounds",
                          "1"], "--model must look like module:function"),
        "pickle": ([*PYFED, "client", "--name", "c", "--data", "objects.npy", "--target", "y.npy"],
                   "never unpickles"),
        "mnist_file": ([*PYFED, "experiment", "--dataset", "mnist", "--mnist-path", "mnist.npz"],
                       "MNIST file mnist.npz does not exist"),
        "half_test": ([*PYFED, "server", "--model", "pyfed.data:digits_model", "--clients", "1",
                       "--rounds", "1", "--test-data", "y.npy"], "--test-data and --test-target"),
        "ray_flag_locally": ([*PYFED, "experiment", "--ray-address", "auto"],
                             "--ray-address only apply with --backend ray"),
    }
    with Processes(tmp_path / "procs") as procs:
        for name, (argv, _) in cases.items():
            procs.start(name, argv, cwd=tmp_path)
        for name, (_, message) in cases.items():
            assert procs.wait(name, 60) == 2, procs.dump()
            stderr = procs.err(name)
            assert message in stderr and "Traceback" not in stderr, stderr
            assert len(stderr.strip().splitlines()) == 1, stderr


def test_usage_errors_and_help():
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["partition", "--out", "x", "--scheme", "zipf"])
    assert exit_info.value.code == 2
    args = parser.parse_args(["-v", "experiment"])
    # lr was None ("the dataset's rate") before issue 10 B4; now PyFed's one default, 0.005.
    assert (args.dataset, args.clients, args.rounds, args.epochs, args.batch_size, args.port,
            args.logdir, args.lr) == ("digits", 3, 5, 2, 32, 54321, "pyfed_logs", 0.005)
    assert parser.parse_args(["client", "--name", "a", "--data", "x", "--target", "y",
                              "-vv"]).verbose == 2
    for command in ("experiment", "server", "client", "partition"):
        assert command in parser.format_help()


def test_load_object_imports_module_function_and_files(tmp_path):
    from pyfed.data import digits_model

    assert load_object("pyfed.data:digits_model") is digits_model
    builder = tmp_path / "my_model.py"
    builder.write_text("def build():\n    return 'built'\n")
    assert load_object(f"{builder}:build")() == "built"
    with pytest.raises(ConfigurationError, match="has no attribute 'nope'"):
        load_object("pyfed.data:nope")


def test_default_mnist_model_is_the_readme_mlp():
    model = mnist_model()
    assert model.input_shape == (None, 784)
    assert [layer.units for layer in model.layers] == [500, 1000, 2000, 1000, 500, 10]


@pytest.mark.skipif(not hasattr(FL_Experiment, "run"), reason="FL_Experiment is not implemented yet")
def test_experiment_command_runs_and_prints_test_accuracy(tmp_path):
    with Processes(tmp_path / "procs") as procs:
        procs.start("experiment", [*PYFED, "experiment", "--rounds", "2", "--clients", "2",
                                   "--epochs", "1", "--port", free_port(), "--logdir", "logs",
                                   "--run-name", "exp"], cwd=tmp_path)
        assert procs.wait("experiment", TF_START + 90) == 0, procs.dump()
        out = procs.out("experiment")
    assert re.search(r"^round 2/2 · 2 clients · fit loss", out, re.M), out
    accuracy = float(re.search(r"^final test accuracy: ([\d.]+) \([\d.]+ s\)$", out, re.M).group(1))
    assert 0.5 < accuracy <= 1.0, out
    assert "TensorBoard logs: logs/exp" in out and "tensorboard --logdir logs" in out
    assert list((tmp_path / "logs" / "exp" / "server").glob("events.out.tfevents.*"))
    from test_logs import hparams_of, plugin_data  # the split is the CLI's, so it says so

    _, hparams, _ = hparams_of(plugin_data(tmp_path / "logs" / "exp" / "server"))
    assert {"dataset": "digits", "partition": "iid", "lr": 0.005, "epochs": 1,
            "clients": 2}.items() <= hparams.items(), hparams


def histogram(out: str) -> dict[str, list[int]]:
    """The label table `pyfed partition` prints: row name -> [n, count of class 0, 1, ...]."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["client", "n"])
    return {row[0]: [int(v) for v in row[1:]] for row in map(str.split, lines[start + 1:]) if row}


def test_partition_dirichlet_writes_skewed_files_and_prints_the_histogram(tmp_path):
    argv = [*PYFED, "partition", "--scheme", "dirichlet", "--alpha", "0.3", "--clients", "4",
            "--seed", "3"]
    with Processes(tmp_path / "procs") as procs:
        procs.start("dirichlet", [*argv, "--out", "parts"], cwd=tmp_path)
        procs.start("again", [*argv, "--out", "again"], cwd=tmp_path)
        procs.start("shards", [*PYFED, "partition", "--scheme", "shards", "--shards-per-client",
                               "1", "--clients", "10", "--out", "shards"], cwd=tmp_path)
        procs.start("too_many", [*PYFED, "partition", "--scheme", "by_label", "--clients", "11",
                                 "--out", "none"], cwd=tmp_path)
        procs.start("stray_alpha", [*PYFED, "partition", "--alpha", "0.3", "--out", "none"],
                    cwd=tmp_path)
        for name in ("dirichlet", "again", "shards"):
            assert procs.wait(name, 60) == 0, procs.dump()
        for name in ("too_many", "stray_alpha"):
            assert procs.wait(name, 60) == 2, procs.dump()
        out = procs.out("dirichlet")
        errors = {name: procs.err(name).strip() for name in ("too_many", "stray_alpha")}
    parts = tmp_path / "parts"
    targets = {f"client_{i}": np.load(parts / f"target_client_{i}.npy", allow_pickle=False)
               for i in (1, 2, 3, 4)}
    targets["server"] = np.load(parts / "target_server.npy", allow_pickle=False)
    for i in (1, 2, 3, 4):
        assert np.load(parts / f"data_client_{i}.npy").shape == (len(targets[f"client_{i}"]), 64)
    assert sum(map(len, targets.values())) == 1797 and len(targets["server"]) == round(1797 / 5)
    # Label skew: some client's most common class is far above IID's ~10%.
    assert max(np.bincount(t).max() / len(t) for name, t in targets.items() if name != "server") > 0.3
    # The printed histogram is the files' histogram.
    table = histogram(out)
    assert list(table) == ["client_1", "client_2", "client_3", "client_4", "server", "total"]
    for name, labels in targets.items():
        assert table[name] == [len(labels), *np.bincount(labels, minlength=10).tolist()], out
    assert table["total"][0] == 1797
    assert "wrote parts/data_client_4.npy" in out and "dirichlet partition of digits" in out
    # Same seed, same files.
    for file in parts.iterdir():
        assert np.array_equal(np.load(file), np.load(tmp_path / "again" / file.name)), file.name
    for i in range(1, 11):
        assert len(np.unique(np.load(tmp_path / "shards" / f"target_client_{i}.npy"))) == 1
    assert errors["too_many"] == ("pyfed partition: error: by_label gives each client whole "
                                  "classes, so num_clients (11) must not exceed the number of "
                                  "classes (10)")
    assert errors["stray_alpha"] == ("pyfed partition: error: --alpha applies to --scheme "
                                     "dirichlet only; received --alpha 0.3 with --scheme iid")


def test_partition_options_parse_and_reject_bad_values():
    parser = build_parser()
    args = parser.parse_args(["partition", "--out", "x"])
    assert (args.scheme, args.alpha, args.shards_per_client, args.min_size,
            args.server_fraction) == ("iid", None, None, None, None)
    args = parser.parse_args(["experiment", "--partition", "shards", "--shards-per-client", "3"])
    assert (args.partition, args.shards_per_client) == ("shards", 3)
    assert parser.parse_args(["experiment"]).partition is None
    for bad in (["--alpha", "0"], ["--alpha", "-1"], ["--shards-per-client", "0"],
                ["--min-size", "-1"], ["--server-fraction", "1"], ["--partition", "zipf"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["experiment", *bad])
        assert exit_info.value.code == 2


def test_experiment_split_is_unchanged_by_default_and_follows_partition():
    from pyfed.data import load_digits, split_for_clients

    x, y = load_digits()
    parser = build_parser()
    default = split_data(parser.parse_args(["experiment", "--clients", "3", "--seed", "2"]), x, y,
                         None, "--partition")
    legacy = split_for_clients(x, y, 3, seed=2)
    for ours, theirs in zip(default, legacy):
        if isinstance(ours, list):
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
        else:
            assert np.array_equal(ours, theirs)
    args = parser.parse_args(["experiment", "--clients", "5", "--partition", "by_label"])
    clients_x, clients_y, server_x, server_y = split_data(args, x, y, args.partition, "--partition")
    assert len(clients_x) == 5 and sum(map(len, clients_y)) + len(server_y) == 1797
    assert len(server_y) == round(1797 / 6)  # the equal split's share, by default
    class_sets = [set(t.tolist()) for t in clients_y]
    assert sum(map(len, class_sets)) == 10 and set().union(*class_sets) == set(range(10))
    args = parser.parse_args(["experiment", "--alpha", "0.1"])
    with pytest.raises(ConfigurationError, match="--alpha applies to --partition dirichlet only; "
                                                 "received --alpha 0.1 with --partition not given"):
        split_data(args, x, y, args.partition, "--partition")


# ---------------------------------------------------------------------------------------------
# Tokens: `pyfed token`, and an empty $PYFED_TOKEN (issue 10 A.10)
# ---------------------------------------------------------------------------------------------

def test_token_command_prints_a_new_strong_token_each_time(tmp_path):
    with Processes(tmp_path / "procs") as procs:
        for name in ("first", "second"):
            procs.start(name, [*PYFED, "token"], cwd=tmp_path)
        for name in ("first", "second"):
            assert procs.wait(name, 30) == 0, procs.dump()
            assert procs.err(name) == "", procs.dump()
        tokens = [procs.out(name) for name in ("first", "second")]
    for output in tokens:
        # secrets.token_urlsafe(32): 32 random bytes as 43 URL-safe base64 characters.
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}\n", output), output
    assert tokens[0] != tokens[1]


def test_token_command_writes_a_private_file_once_and_servers_accept_it(tmp_path):
    import os
    import stat

    from pyfed.wire.auth import resolve_token

    with Processes(tmp_path / "procs") as procs:
        procs.start("write", [*PYFED, "token", "--out", "fed.token"], cwd=tmp_path)
        assert procs.wait("write", 30) == 0, procs.dump()
        written = procs.out("write")
        procs.start("again", [*PYFED, "token", "--out", "fed.token"], cwd=tmp_path)
        assert procs.wait("again", 30) == 2, procs.dump()
        again = procs.err("again").strip()
    token_file = tmp_path / "fed.token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    token = token_file.read_text()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}\n", token), token
    assert token.strip() not in written and "fed.token" in written, written  # not on the screen
    assert resolve_token(token_file=token_file) == token.strip().encode()
    # An existing token file is never overwritten: the federation would lose its token.
    assert again == ("pyfed token: error: token file fed.token already exists; remove it first "
                     "or choose another --out"), again
    assert token_file.read_text() == token


NUMPY_MODEL = """
def model():
    from pyfed.models import SoftmaxRegression
    return SoftmaxRegression(64, 10)
"""


def test_server_with_an_empty_pyfed_token_exits_2_with_one_line(tmp_path):
    from cliprocs import child_env

    (tmp_path / "numpy_model.py").write_text(NUMPY_MODEL)
    with Processes(tmp_path / "procs") as procs:
        procs.start("server", [*PYFED, "server", "--model", "numpy_model.py:model", "--clients",
                               "1", "--rounds", "1", "--port", free_port(), "--logdir", "logs"],
                    cwd=tmp_path, env=child_env(PYFED_TOKEN=""))
        assert procs.wait("server", 60) == 2, procs.dump()
        stderr = procs.err("server").strip()
        assert procs.out("server") == ""
    assert stderr == ("pyfed server: error: $PYFED_TOKEN is set but empty: set it to the "
                      "federation's token (`pyfed token` makes one), or unset it to run without "
                      "authentication"), stderr
    assert not (tmp_path / "logs").exists()  # refused before it started anything
def subcommands(parser) -> dict[str, argparse.ArgumentParser]:
    return next(action for action in parser._actions
                if isinstance(action, argparse._SubParsersAction)).choices


def option_help(help_text: str) -> dict[str, str]:
    """`--option` -> its help, whitespace-normalized, from a subcommand's --help text."""
    blocks: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        match = re.match(r"^  (-\w, )?(--[\w-]+)", line)
        if match:
            current = match.group(2)
            blocks[current] = line
        elif current and line.startswith("      "):
            blocks[current] += " " + line
        else:
            current = None
    return {name: " ".join(text.split()) for name, text in blocks.items()}


def test_help_shows_every_default(tmp_path):
    parser = build_parser()
    for name, sub in subcommands(parser).items():
        shown = option_help(sub.format_help())
        for action in sub._actions:
            default = action.default
            if (not action.option_strings or default is None or default is False
                    or default is argparse.SUPPRESS):
                continue
            option = action.option_strings[-1]
            assert f"(default: {default})" in shown[option], (name, option, shown[option])
    server = option_help(subcommands(parser)["server"].format_help())
    assert "(default: pyfed.data:digits_model)" in server["--model"]
    # And as a user sees it: the installed command's --help.
    with Processes(tmp_path / "procs") as procs:
        procs.start("help", [PYFED_SCRIPT, "client", "--help"], cwd=tmp_path)
        assert procs.wait("help", 60) == 0, procs.dump()
        client = option_help(procs.out("help"))
    assert client["--lr"] == "--lr LR learning rate (default: 0.005)"
    assert client["--epochs"].endswith("(default: 2)") and "(default: adam)" in client["--optimizer"]


TRAINING = ("epochs", "batch_size", "lr", "optimizer", "loss", "metrics")


def test_every_path_resolves_the_same_training_defaults():
    parser = build_parser()
    client = parser.parse_args(["client", "--name", "a", "--data", "x", "--target", "y"])
    experiment = parser.parse_args(["experiment"])
    expected = {"epochs": defaults.EPOCHS, "batch_size": defaults.BATCH_SIZE, "lr": defaults.LR,
                "optimizer": defaults.OPTIMIZER, "loss": defaults.LOSS,
                "metrics": ",".join(defaults.METRICS)}
    assert {k: getattr(client, k) for k in TRAINING} == expected
    assert {k: getattr(experiment, k) for k in TRAINING} == expected
    server = parser.parse_args(["server"])
    assert (server.model, server.loss, server.metrics) == (defaults.MODEL, defaults.LOSS, "accuracy")
    assert (server.clients, server.rounds) == (experiment.clients, experiment.rounds)
    # The Python API: the same numbers, and lr=None resolves to the same rate.
    run = inspect.signature(FL_Experiment.run).parameters
    train = inspect.signature(FL_Client.train).parameters
    for parameters in (run, train):
        assert (parameters["epochs"].default, parameters["batch_size"].default) == (2, 32)
    assert (run["optimizer"].default, run["loss"].default, tuple(run["metrics"].default)) == (
        "adam", defaults.LOSS, ("accuracy",))
    import keras

    for optimizer in (None, "adam", keras.optimizers.Adam):
        assert defaults.learning_rate(optimizer, None) == 0.005
    assert defaults.learning_rate(keras.optimizers.Adam(learning_rate=0.1), None) is None  # its own
    assert defaults.learning_rate("sgd", 0.3) == 0.3


# A client through the Python API with no training arguments at all, beside a CLI client.
API_CLIENT = """
import sys
import numpy as np
from pyfed import FL_Client
x, y = np.load("parts/data_client_2.npy"), np.load("parts/target_client_2.npy")
model = FL_Client("client_2", x, y, server_port=int(sys.argv[1]), verbose=0).train()
print("API-CLIENT", type(model.optimizer).__name__, f"{float(model.optimizer.learning_rate):.6g}",
      model.loss, flush=True)
"""


def test_server_tests_every_round_and_every_path_trains_alike(tmp_path):
    from test_logs import scalars

    port = free_port()
    env = child_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # as a user runs it: PyFed keeps TensorFlow quiet (B6)
    with Processes(tmp_path / "procs") as procs:
        procs.start("partition", [*PYFED, "partition", "--clients", "2", "--out", "parts"],
                    cwd=tmp_path, env=env)
        assert procs.wait("partition", 60) == 0, procs.dump()
        # No --model, no training options anywhere: the defaults, shared.
        procs.start("server", [*PYFED, "server", "--clients", "2", "--rounds", "2", "--port", port,
                               "--wait-timeout", "90", "--logdir", "logs", "--run-name", "tested",
                               "--test-data", "parts/data_server.npy",
                               "--test-target", "parts/target_server.npy"], cwd=tmp_path, env=env)
        procs.start("client_1", [*PYFED, "client", "--name", "client_1", "--data",
                                 "parts/data_client_1.npy", "--target", "parts/target_client_1.npy",
                                 "--port", port], cwd=tmp_path, env=env)
        procs.start("client_2", [PYTHON, "-c", API_CLIENT, port], cwd=tmp_path, env=env)
        codes = procs.wait_all(timeout=TF_START + 90)
        assert set(codes.values()) == {0}, procs.dump()
        out = {name: procs.out(name) for name in procs.procs}
        err = {name: procs.err(name) for name in procs.procs}
    # The global model is tested after every round, not only at the end.
    rounds = re.findall(r"^round (\d)/2 · 2 clients · fit loss .* · test loss ([\d.]+) acc ([\d.]+) · ",
                        out["server"], re.M)
    assert [r for r, _, _ in rounds] == ["1", "2"], out["server"]
    final = re.search(r"^test · loss ([\d.]+) · accuracy ([\d.]+)$", out["server"], re.M)
    assert final and abs(float(final.group(2)) - float(rounds[-1][2])) < 1e-3, out["server"]
    server = scalars(tmp_path / "logs" / "tested" / "server")
    assert [step for step, _ in server["test/accuracy"]] == [1, 2]
    assert [step for step, _ in server["test/loss"]] == [1, 2]
    # Both clients trained 2 epochs a round (steps 0-3) with Adam at 0.005.
    assert "client_1: 599 examples, 2 epochs, batch size 32, adam lr 0.005; connecting" in out["client_1"]
    assert "API-CLIENT Adam 0.005 sparse_categorical_crossentropy" in out["client_2"], out["client_2"]
    for name in ("client_1", "client_2"):
        curves = scalars(tmp_path / "logs" / "tested" / "clients" / name)
        assert [step for step, _ in curves["epoch_loss"]] == [0, 1, 2, 3], name
    # Not one line of TensorFlow's start-up noise from any of the CLI's processes.
    raw = {name: (tmp_path / "procs" / f"{name}.err").read_text() for name in err}
    assert [line for text in raw.values() for line in text.splitlines() if TF_NOISE.search(line)] == []
