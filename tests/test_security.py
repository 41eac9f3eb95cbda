"""Intruders: shared-token authentication (mutual HMAC), TLS, and the open-LAN warning.

Real server and client processes on loopback (numpy SoftmaxRegression, so they start fast).
"""

import shutil
import subprocess

import pytest

from conftest import tagged
from procs import ProcessGroup, child_env, free_port

TOKEN = "correct horse battery staple"


def start_federation(group, tmp_path, *, server=(), clients=(("client_1", ()),), rounds=2,
                     env=None):
    port = free_port()
    group.role("server", "softmax-server", "--port", port, "--clients", len(clients),
               "--rounds", rounds, "--logdir", tmp_path / "logs", *server, env=env)
    for index, (name, extra) in enumerate(clients, start=1):
        group.role(name, "softmax-client", "--port", port, "--index", index, "--clients",
                   len(clients), "--logdir", tmp_path / "logs", "--max-retries", 0, *extra, env=env)
    return port


def test_matching_tokens_train(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        start_federation(group, tmp_path, server=("--token", TOKEN),
                         clients=[("client_1", ("--token", TOKEN)), ("client_2", ("--token", TOKEN))])
        codes = group.wait_all(timeout=90)
        assert all(code == 0 for code in codes.values()), group.dump()
        assert tagged(group.output("server"), "RESULT")["history"]["history"]["participants"] == [2, 2]


def test_wrong_or_missing_token_is_refused_and_the_server_keeps_serving(tmp_path):
    port = free_port()
    with ProcessGroup(tmp_path / "procs") as group:
        # The intruders come first, while the server waits for its one legitimate client.
        group.role("server", "softmax-server", "--port", port, "--clients", 1, "--rounds", 2,
                   "--logdir", tmp_path / "logs", "--token", TOKEN)
        group.role("wrong", "softmax-client", "--port", port, "--index", 2, "--name", "mallory",
                   "--token", "not the token at all", "--max-retries", 0)
        group.role("missing", "softmax-client", "--port", port, "--index", 3, "--name", "eve",
                   "--max-retries", 0)
        assert group.wait("wrong", timeout=60) != 0
        assert group.wait("missing", timeout=60) != 0
        wrong, missing = group.output("wrong"), group.output("missing")
        # The client learns why, as an AuthenticationError, before any weights moved.
        assert "AuthenticationError" in wrong and "failed to prove it holds the token" in wrong, wrong[-1500:]
        assert "AuthenticationError" in missing and "needs a token" in missing, missing[-1500:]
        group.role("client_1", "softmax-client", "--port", port, "--index", 1, "--clients", 1,
                   "--token", TOKEN, "--max-retries", 0)
        assert group.wait("client_1", timeout=60) == 0, group.dump()
        assert group.wait("server", timeout=60) == 0, group.dump()
        server = group.output("server")
        assert server.count("authentication failed from 127.0.0.1:") >= 2, server[-3000:]
        assert tagged(server, "RESULT")["history"]["history"]["participants"] == [1, 1]


def test_a_client_with_a_token_refuses_a_server_without_one(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        start_federation(group, tmp_path, clients=[("client_1", ("--token", TOKEN))])
        assert group.wait("client_1", timeout=60) != 0
        output = group.output("client_1")
        assert "did not authenticate itself" in output, output[-1500:]


def test_token_from_environment_and_from_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = child_env(PYFED_TOKEN=TOKEN)
    with ProcessGroup(tmp_path / "procs") as group:
        # Server reads $PYFED_TOKEN; the client reads --token-file (it also has the env, but
        # the file wins only if the env were missing, so give the client a clean env).
        port = free_port()
        group.role("server", "softmax-server", "--port", port, "--clients", 1, "--rounds", 1,
                   "--logdir", tmp_path / "logs", env=env)
        clean = child_env()
        clean.pop("PYFED_TOKEN", None)
        group.role("client_1", "softmax-client", "--port", port, "--index", 1, "--clients", 1,
                   "--token-file", token_file, "--max-retries", 0, env=clean)
        codes = group.wait_all(timeout=90)
        assert all(code == 0 for code in codes.values()), group.dump()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (scripts/setup_env.sh installs it)")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=pyfed-test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert, key


def test_a_full_run_over_tls(tmp_path, certificate):
    cert, key = certificate
    tls_server = ("--ssl-certfile", cert, "--ssl-keyfile", key)
    with ProcessGroup(tmp_path / "procs") as group:
        start_federation(group, tmp_path, server=tls_server,
                         clients=[("client_1", ("--ssl-cafile", cert)),
                                  ("client_2", ("--ssl-cafile", cert))])
        codes = group.wait_all(timeout=90)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        assert result["history"]["history"]["participants"] == [2, 2]
        assert result["test"]["accuracy"] > 0.7


def test_tls_client_without_the_ca_and_a_plain_client_are_refused(tmp_path, certificate):
    cert, key = certificate
    port = free_port()
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", "softmax-server", "--port", port, "--clients", 1, "--rounds", 2,
                   "--logdir", tmp_path / "logs", "--ssl-certfile", cert, "--ssl-keyfile", key)
        group.role("no_ca", "softmax-client", "--port", port, "--index", 2, "--name", "no_ca",
                   "--use-ssl", "--max-retries", 0)
        group.role("plain", "softmax-client", "--port", port, "--index", 3, "--name", "plain",
                   "--max-retries", 0)
        assert group.wait("no_ca", timeout=60) != 0
        assert group.wait("plain", timeout=60) != 0
        no_ca = group.output("no_ca")
        assert "TLSError" in no_ca and "certificate was not trusted" in no_ca, no_ca[-1500:]
        assert "NetworkError" in group.output("plain")
        # The server kept serving: a client that trusts its CA trains.
        group.role("client_1", "softmax-client", "--port", port, "--index", 1, "--clients", 1,
                   "--ssl-cafile", cert, "--max-retries", 0)
        assert group.wait("client_1", timeout=60) == 0, group.dump()
        assert group.wait("server", timeout=60) == 0, group.dump()


def test_multi_system_without_a_token_warns_that_anyone_can_join(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        # Binds every interface, but the only client connects over 127.0.0.1.
        start_federation(group, tmp_path, server=("--multi-system",), rounds=1)
        codes = group.wait_all(timeout=90)
        assert all(code == 0 for code in codes.values()), group.dump()
        assert "any host on the network can join" in group.output("server")


def test_model_mismatch_names_both_hashes_and_the_first_differing_tensor(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        port = free_port()
        group.role("server", "numpy-server", "--port", port, "--clients", 1, "--rounds", 1,
                   "--shapes", "3x4,4", "--logdir", tmp_path / "logs")
        group.role("wrong", "numpy-client", "--port", port, "--index", 9, "--shapes", "3x4,5",
                   "--logdir", tmp_path / "logs")
        assert group.wait("wrong", timeout=60) != 0
        output = group.output("wrong")
        assert "ModelMismatchError" in output
        assert "first difference: tensor 1: expected weight_1 [4] <f4, received weight_1 [5] <f4" in output, output[-1500:]
        hashes = [w for w in output.split() if len(w.strip(",.;")) == 64]
        assert len(hashes) >= 2  # both full spec hashes are named
