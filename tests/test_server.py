"""FL_Server end to end: real server and client processes over loopback sockets."""

import re

import pytest

from conftest import NUM_CLIENTS, ROUNDS, tagged
from procs import ProcessGroup, free_port

from pyfed import FL_Server
from pyfed.errors import ConfigurationError
from pyfed.models import NumpyModel


def test_digits_federation_reaches_90_percent(digits_run):
    result = digits_run["result"]
    assert result["test"]["accuracy"] >= 0.90, result["test"]
    history = result["history"]
    assert history["rounds"] == list(range(1, ROUNDS + 1))
    assert history["history"]["participants"] == [NUM_CLIENTS] * ROUNDS
    # Training improved the global model round over round.
    losses = history["history"]["fit_loss"]
    assert losses[-1] < losses[0]


def test_server_prints_one_progress_line_per_round(digits_run):
    output = digits_run["outputs"]["server"]
    pattern = re.compile(r"^round (\d+)/%d · %d clients · fit loss [\d.]+ acc [\d.]+ · [\d.]+ s · "
                         r"[\d.]+ \w?B in / [\d.]+ \w?B out$" % (ROUNDS, NUM_CLIENTS), re.M)
    assert [int(m) for m in pattern.findall(output)] == list(range(1, ROUNDS + 1)), output
    assert re.search(r"^test · loss [\d.]+ · accuracy [\d.]+$", output, re.M)


def test_bytes_in_and_out_are_counted(digits_run):
    history = digits_run["result"]["history"]["history"]
    # 64*64+64+64*10+10 float32 parameters = 19,146 bytes of weights per client and direction.
    for sent, received in zip(history["bytes_out"], history["bytes_in"]):
        assert sent >= NUM_CLIENTS * 19_146 and received >= NUM_CLIENTS * 19_146


def test_server_rejects_bad_arguments_clearly():
    model = NumpyModel([])
    with pytest.raises(ConfigurationError, match="num_clients must be a positive integer; received 0"):
        FL_Server(model, 0, 1)
    with pytest.raises(ConfigurationError, match="rounds must be a positive integer"):
        FL_Server(model, 1, -2)
    with pytest.raises(ConfigurationError, match=r"port must be in \[0, 65535\]; received 70000"):
        FL_Server(model, 1, 1, port=70000)
    with pytest.raises(ConfigurationError, match="cannot federate a builtins.str"):
        FL_Server("not a model", 1, 1)


def test_clients_started_before_the_server(tmp_path):
    """Start order does not matter: clients retry until the server is up."""
    port = free_port()
    with ProcessGroup(tmp_path / "procs") as group:
        for i in range(1, 4):
            group.role(f"client_{i}", "client", "--port", port, "--index", i, "--rounds", 2,
                       "--epochs", 1, "--logdir", tmp_path / "logs")
        # Clients are importing TensorFlow and then retrying against a closed port meanwhile.
        import time
        time.sleep(4)
        assert all(p.poll() is None for p in group.procs.values()), group.dump()
        group.role("server", "server", "--port", port, "--rounds", 2, "--logdir", tmp_path / "logs")
        codes = group.wait_all(timeout=240)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        assert result["history"]["history"]["participants"] == [3, 3]
        for i in range(1, 4):
            assert tagged(group.output(f"client_{i}"), "CLIENT")["rounds"] == 2


def test_final_keras_model_is_saved_in_the_run_folder(digits_run):
    import keras

    from roles import weights_hash

    result = digits_run["result"]
    path = result["final_model"]
    assert path.endswith("final.keras") and path.startswith(result["run_dir"])
    reloaded = keras.saving.load_model(path)
    assert weights_hash(reloaded.get_weights()) == result["weights"]


def test_upload_and_connection_limits_are_checked_and_derived():
    import numpy as np

    from pyfed.server.fd_limits import FD_HEADROOM, open_file_limit

    model = NumpyModel([np.zeros((4, 3), "<f4"), np.zeros(3, "<f4")])
    with pytest.raises(ConfigurationError, match="min_upload_rate must be a positive number; received 0"):
        FL_Server(model, 1, 1, min_upload_rate=0)
    with pytest.raises(ConfigurationError, match="upload_stall_timeout must be a positive number"):
        FL_Server(model, 1, 1, upload_stall_timeout=-1)
    with pytest.raises(ConfigurationError, match="max_connections must be a positive integer"):
        FL_Server(model, 1, 1, max_connections=0)
    server = FL_Server(model, 1, 1, compression="fp16")
    # Every receive buffer is at most the model's FIT_RESULT body (fp16: 24 + 6 bytes, aligned).
    assert server.gateway.pool.max_nbytes == 64 + 6
    limit = open_file_limit()
    if limit is not None:
        assert 1 <= server.gateway.max_connections <= (limit - FD_HEADROOM) // 2
    assert FL_Server(model, 1, 1, max_connections=7).gateway.max_connections == 7
