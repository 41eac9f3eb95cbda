"""The ``pyfed`` command, run as real processes on 127.0.0.1."""

import re

import numpy as np
import pytest

from cliprocs import PYFED_SCRIPT, PYTHON, Processes, free_port
from pyfed.cli import build_parser, load_object, mnist_model
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
        parser.parse_args(["partition", "--out", "x", "--scheme", "dirichlet"])
    assert exit_info.value.code == 2
    args = parser.parse_args(["-v", "experiment"])
    assert (args.dataset, args.clients, args.rounds, args.epochs, args.batch_size, args.port,
            args.logdir, args.lr) == ("digits", 3, 5, 2, 32, 54321, "pyfed_logs", None)
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
