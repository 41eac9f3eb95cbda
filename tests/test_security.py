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


# ---------------------------------------------------------------------------------------------
# Issue 10 A.10: nothing before authentication, weak and empty tokens
# ---------------------------------------------------------------------------------------------


def test_before_authentication_a_peer_learns_nothing_about_the_model_or_the_clients(tmp_path):
    import socket
    import time

    from hostile_roles import drain_until_closed, read_frame
    from test_hostile import wait_for

    from pyfed.wire import auth, protocol
    from pyfed.wire.messages import Auth, Challenge, Error, Hello

    wrong_spec = [["weight_0", [3, 4], "<f4", "weight_0"]]

    def ask(port, hello, answer=None):
        """The server's replies to ``hello`` (and to AUTH(answer(challenge)) if it challenges)."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(protocol.encode_bytes(hello))
            replies = [read_frame(sock, time.monotonic() + 10)]
            if isinstance(replies[0], Challenge) and answer is not None:
                sock.sendall(protocol.encode_bytes(Auth(proof=answer(replies[0]))))
                replies.append(read_frame(sock, time.monotonic() + 10))
            assert drain_until_closed(sock, 10)[0], "the server left the connection open"
        return replies

    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", "softmax-server", "--port", 0, "--clients", 2, "--rounds", 1,
                   "--logdir", tmp_path / "logs", "--token", TOKEN)
        port = int(wait_for(group, "server", r"^READY (\d+)$", 30).group(1))
        group.role("client_1", "softmax-client", "--port", port, "--index", 1, "--clients", 2,
                   "--logdir", tmp_path / "logs", "--token", TOKEN, "--max-retries", 0)
        wait_for(group, "server", r"client_1 joined from", 30)

        # A wrong model and no token: only "authentication required".
        no_token = ask(port, Hello(client_name="probe", spec_hash="0" * 64, spec=wrong_spec))
        # A wrong model and a wrong token: challenged like anyone, then "authentication failed".
        nonce = auth.new_nonce()
        wrong_token = ask(port, Hello(client_name="probe", spec_hash="0" * 64, spec=wrong_spec,
                                      nonce=nonce), answer=lambda challenge: "0" * 64)
        # A live client's name and no token: nothing about who holds it, or from where.
        live_name = ask(port, Hello(client_name="client_1", reconnect_secret="0" * 43))
        # The right token and a wrong model: now the mismatch is explained.
        nonce = auth.new_nonce()
        token = TOKEN.encode()
        authenticated = ask(port, Hello(client_name="probe", spec_hash="0" * 64, spec=wrong_spec,
                                        nonce=nonce),
                            answer=lambda c: auth.client_proof(token, nonce, c.nonce, "probe"))

        for replies in (no_token, live_name):
            assert [type(r) for r in replies] == [Error], replies
            assert replies[0].code == "authentication_failed", replies
            assert replies[0].reason.startswith("authentication required: this server needs a "
                                                "token"), replies
        assert [type(r) for r in wrong_token] == [Challenge, Error], wrong_token
        assert wrong_token[1].code == "authentication_failed"
        assert wrong_token[1].reason == "authentication failed: wrong token"
        for reply in (*no_token, wrong_token[1], *live_name):
            text = reply.reason.lower()
            assert not any(word in text for word in ("model", "spec", "hash", "weight", "shape",
                                                     "client_1", "127.0.0.1", "connected")), reply
        assert [type(r) for r in authenticated] == [Challenge, Error], authenticated
        assert authenticated[1].code == "model_mismatch", authenticated
        assert "first difference" in authenticated[1].reason

        # The server kept serving: its real client trains with a second one.
        group.role("client_2", "softmax-client", "--port", port, "--index", 2, "--clients", 2,
                   "--logdir", tmp_path / "logs", "--token", TOKEN, "--max-retries", 0)
        codes = group.wait_all(timeout=90)
        assert codes == {"server": 0, "client_1": 0, "client_2": 0}, group.dump()


WEAK_TOKEN = "ten-bytes!"  # 10 bytes: above the hard minimum of 8, below the advised 16


def test_a_weak_token_trains_but_the_server_warns_once(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        start_federation(group, tmp_path, server=("--token", WEAK_TOKEN),
                         clients=[("client_1", ("--token", WEAK_TOKEN)),
                                  ("client_2", ("--token", WEAK_TOKEN))])
        codes = group.wait_all(timeout=90)
        assert all(code == 0 for code in codes.values()), group.dump()
        server = group.output("server")
        client = group.output("client_1")
    advice = ("the token is 10 bytes long: one recorded handshake lets an attacker guess a short "
              "token offline; use at least 16 random bytes (`pyfed token` prints a strong one)")
    printed = [line for line in server.splitlines() if line == "warning: " + advice]
    logged = [line for line in server.splitlines() if " WARNING " in line and line.endswith(advice)]
    assert len(printed) == 1 and len(logged) == 1, server
    assert any(line.endswith(advice) for line in client.splitlines()), client
    assert WEAK_TOKEN not in server + client  # the warning never shows the token


def test_a_strong_token_gives_no_warning_and_an_empty_one_is_an_error(tmp_path, monkeypatch):
    from pyfed.wire import auth
    from pyfed.errors import ConfigurationError

    monkeypatch.setenv("PYFED_TOKEN", "")
    with pytest.raises(ConfigurationError, match=r"^\$PYFED_TOKEN is set but empty"):
        auth.resolve_token()
    assert auth.resolve_token(TOKEN) == TOKEN.encode()  # an explicit token wins over the env
    monkeypatch.delenv("PYFED_TOKEN")
    assert auth.resolve_token() is None
    assert auth.weak_token_warning(TOKEN.encode()) is None
    assert auth.weak_token_warning(None) is None
    assert "10 bytes" in auth.weak_token_warning(WEAK_TOKEN.encode())
    with pytest.raises(ConfigurationError, match="at least 8 bytes; received 7"):
        auth.resolve_token("7 bytes")
