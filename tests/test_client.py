"""FL_Client: connection retries, clear refusals, and ending with the global model."""

import time

import pytest

from procs import free_port

from pyfed import FL_Client
from pyfed.errors import ConfigurationError, NetworkError


def test_every_client_ends_holding_the_global_model(digits_run):
    server_weights = digits_run["result"]["weights"]
    assert len(digits_run["clients"]) == 3
    for name, report in digits_run["clients"].items():
        assert report["rounds"] == 5, name
        assert report["weights"] == server_weights, f"{name} does not hold the final global model"


def test_clients_show_keras_progress(digits_run):
    # verbose=2 in roles.py: Keras prints one line per epoch, numbered by global epoch.
    output = digits_run["outputs"]["client_1"]
    assert "Epoch 1/2" in output and "Epoch 10/10" in output, output[-2000:]


def test_refused_connection_names_the_address():
    port = free_port()  # nothing listens here
    client = FL_Client("lonely", [[0.0]], [0], server_port=port, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(NetworkError) as info:
        client.train()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "within 1 s" in message and "refused" in message
    assert time.monotonic() - started < 10


def test_client_rejects_mismatched_data_and_target():
    with pytest.raises(ConfigurationError, match="same length; received 3 and 2"):
        FL_Client("c", [[1], [2], [3]], [0, 1])


def test_a_client_with_a_different_model_is_refused_at_the_handshake(tmp_path):
    from conftest import tagged
    from procs import ProcessGroup

    port = free_port()
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", "numpy-server", "--port", port, "--clients", 1, "--rounds", 1,
                   "--shapes", "3x4,4", "--logdir", tmp_path / "logs")
        group.role("wrong", "numpy-client", "--port", port, "--index", 9, "--shapes", "3x5,5",
                   "--logdir", tmp_path / "logs")
        assert group.wait("wrong", timeout=60) != 0
        wrong = group.output("wrong")
        assert "ModelMismatchError" in wrong and "model mismatch" in wrong, wrong[-2000:]
        assert "spec hash" in wrong
        # The server keeps serving: a matching client still trains.
        group.role("right", "numpy-client", "--port", port, "--index", 1, "--shapes", "3x4,4",
                   "--logdir", tmp_path / "logs")
        assert group.wait("right", timeout=60) == 0, group.dump()
        assert group.wait("server", timeout=60) == 0, group.dump()
        assert tagged(group.output("right"), "CLIENT")["rounds"] == 1
