"""Client names on a live server: one process per name, reconnect secrets, dead names freed.

Issue 10 B.1 (and the trigger of A.5): a HELLO that claims a live client's name is refused at
once ("duplicate_name", naming who holds it), unless it presents the reconnect secret that
client got in its WELCOME; a name whose connection has closed is free again at once.

Real server processes on 127.0.0.1: the numpy roles (``roles.py``, ``hostile_roles.py``), the
``pyfed client`` command, raw-socket peers, and a small TCP relay that makes a connection
half-open. Every process is ended by PID and reaped by its group; every wait is bounded.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import threading
import time

import numpy as np

from cliprocs import Processes
from conftest import tagged
from hostile_roles import drain_until_closed, read_frame
from procs import ROLES, ProcessGroup
from test_hostile import finish_all, server_result, start_honest, start_server, wait_for

from pyfed import data
from pyfed.wire import protocol
from pyfed.wire.messages import Error, Hello, Welcome

LOOPBACK = "127.0.0.1"
DUPLICATE = (r"client name '{name}' is already connected \(from 127\.0\.0\.1:(\d+)\); "
             r"choose another name")


def start_softmax_server(group: ProcessGroup, tmp_path, *, clients: int, rounds: int,
                         extra=()) -> int:
    group.role("server", "softmax-server", "--port", 0, "--clients", clients, "--rounds", rounds,
               "--logdir", tmp_path / "logs", *extra)
    return int(wait_for(group, "server", r"^READY (\d+)$", 30).group(1))


def hello(port: int, name: str, secret: str | None = None, keep: bool = False):
    """HELLO as ``name`` on a new connection; returns the reply (and the socket if ``keep``)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    try:
        sock.sendall(protocol.encode_bytes(Hello(client_name=name, reconnect_secret=secret)))
        reply = read_frame(sock, time.monotonic() + 10)
    except BaseException:
        sock.close()
        raise
    if keep:
        return sock, reply
    sock.close()
    return reply


def assert_duplicate(reply, name: str, holder: socket.socket | None = None) -> None:
    assert isinstance(reply, Error), reply
    assert reply.code == "duplicate_name", reply
    match = re.fullmatch(DUPLICATE.format(name=re.escape(name)), reply.reason)
    assert match, reply.reason
    if holder is not None:  # it names the connection that holds the name
        assert int(match.group(1)) == holder.getsockname()[1], (reply.reason, holder)


# ---------------------------------------------------------------------------------------------
# The pieces: the liveness check on real sockets, and the optional wire fields
# ---------------------------------------------------------------------------------------------


def tcp_pair():
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    return server, client


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_hung_up_tells_a_closed_peer_from_a_quiet_or_talking_one():
    from pyfed.server.gateway import hung_up

    server, client = tcp_pair()
    try:
        assert not hung_up(server)  # connected and quiet
        client.sendall(b"PYFD")
        assert wait_until(lambda: server.recv(4, socket.MSG_PEEK) == b"PYFD")
        assert not hung_up(server)  # data waiting, peer alive
        assert server.recv(4) == b"PYFD"  # nothing was consumed by the check
        client.sendall(b"last words")
        client.close()  # FIN behind unread data: still dead
        assert wait_until(lambda: hung_up(server))
        assert server.recv(64) == b"last words"
    finally:
        server.close()
        client.close()
    assert hung_up(server)  # our own socket closed

    server, client = tcp_pair()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # linger 0: a reset, as from a crashed host's kernel
        assert wait_until(lambda: hung_up(server))
    finally:
        server.close()


def test_reconnect_secrets_are_optional_on_the_wire():
    import json

    # A HELLO or WELCOME without the field (an older peer's) decodes with None.
    for message in (Hello(client_name="old"), Welcome(client_id="c", rounds=1, run_name="r",
                                                      run_id="i")):
        frame = protocol.encode_bytes(message)
        prefix = protocol.parse_prefix(frame[:protocol.PREFIX_SIZE], protocol.FrameLimits())
        header = json.loads(frame[protocol.PREFIX_SIZE:protocol.PREFIX_SIZE + prefix.header_length])
        # Left out while None (an extension field), so an older peer's decoder reads it too.
        assert "reconnect_secret" not in header["fields"]
        raw = json.dumps(header).encode()
        rebuilt = protocol.PREFIX.pack(protocol.MAGIC, protocol.VERSION, message.KIND, 0,
                                       len(raw), 0) + raw
        assert protocol.decode(rebuilt) == message and message.reconnect_secret is None
    secret = Hello(client_name="c", reconnect_secret="s" * 43)
    assert protocol.decode(protocol.encode_bytes(secret)) == secret
    assert protocol.VERSION == 1


def test_secrets_compare_safely():
    from pyfed.wire import auth

    secret = auth.new_reconnect_secret()
    assert len(secret) == 43 and secret != auth.new_reconnect_secret()
    assert auth.reconnect_secret_matches(secret, secret)
    for presented in (None, "", secret[:-1], secret + "x", "é" * 43, 42):
        assert not auth.reconnect_secret_matches(secret, presented), presented
    assert not auth.reconnect_secret_matches(None, None)


# ---------------------------------------------------------------------------------------------
# Raw peers: the three paths through the name check
# ---------------------------------------------------------------------------------------------


def test_a_live_name_is_refused_taken_over_only_with_its_secret_and_freed_when_closed(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        # Two clients expected and only "ghost" ever comes: the server waits, nothing trains.
        port = start_softmax_server(group, tmp_path, clients=2, rounds=1)
        first, welcome = hello(port, "ghost", keep=True)
        try:
            assert isinstance(welcome, Welcome), welcome
            secret = welcome.reconnect_secret
            assert isinstance(secret, str) and len(secret) >= 32, secret

            # Another process claims the live name, without the secret or with a wrong one.
            assert_duplicate(hello(port, "ghost"), "ghost", holder=first)
            assert_duplicate(hello(port, "ghost", secret="x" * len(secret)), "ghost", holder=first)
            assert_duplicate(hello(port, "ghost", secret=secret[:-1]), "ghost", holder=first)
            assert not drain_until_closed(first, 0.2)[0], "a refused claim cost the holder its connection"

            # The same client reconnecting with its secret takes over: the old connection goes.
            second, again = hello(port, "ghost", secret=secret, keep=True)
            try:
                assert isinstance(again, Welcome), again
                # The secret stays the name's, so a client that missed this WELCOME still has it.
                assert again.reconnect_secret == secret
                closed, _, _ = drain_until_closed(first, 10)
                assert closed, "the server kept the replaced connection open"
                assert_duplicate(hello(port, "ghost"), "ghost", holder=second)
            finally:
                second.close()
            # A closed connection frees its name at once: no duplicate, and a new identity.
            fresh = hello(port, "ghost")
            assert isinstance(fresh, Welcome), fresh
            assert fresh.reconnect_secret and fresh.reconnect_secret != secret
        finally:
            first.close()
        assert group.procs["server"].poll() is None, group.dump()
        server = group.output("server")
    assert server.count("refused 'ghost' from 127.0.0.1:") == 4, server
    assert "Traceback" not in server, server


# ---------------------------------------------------------------------------------------------
# A.5's trigger: HELLOs that take over the clients' names in the middle of a round
# ---------------------------------------------------------------------------------------------


def test_hellos_claiming_live_names_mid_round_are_refused_and_the_rounds_complete(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=3, rounds=2)
        for index in (1, 2, 3):
            start_honest(group, tmp_path, port, index, fit_delay=2.0)
        wait_for(group, "server", r"^3 clients connected", 30)
        # Round 1 has started: each honest client is inside its 2 s fit.
        replies = {name: hello(port, name, secret=secret)
                   for name, secret in (("honest_1", None), ("honest_2", "0" * 43),
                                        ("honest_3", ""))}
        for name, reply in replies.items():
            assert_duplicate(reply, name)
        finish_all(group, 90)
        history = server_result(group)["history"]
        assert history["participants"] == [3, 3], history
        assert history["clients"] == [["honest_1", "honest_2", "honest_3"]] * 2, history


# ---------------------------------------------------------------------------------------------
# Two `pyfed client` processes with one name
# ---------------------------------------------------------------------------------------------


def save_client_data(folder, clients: int) -> None:
    xs, ys, _, _ = data.split_for_clients(*data.load_digits(), clients, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (x, y) in enumerate(zip(xs, ys), start=1):
        np.save(folder / f"x{index}.npy", x)
        np.save(folder / f"y{index}.npy", y)


def cli_client(procs: Processes, label: str, name: str, index: int, port: int, cwd):
    return procs.start(label, [sys.executable, "-m", "pyfed", "client", "--name", name,
                        "--data", f"parts/x{index}.npy", "--target", f"parts/y{index}.npy",
                        "--port", port, "--epochs", 1, "--connect-timeout", 30,
                        "--logdir", "logs", "--max-retries", 2, "--retry-interval", 0.2], cwd=cwd)


def start_cli_run_server(procs: Processes, tmp_path, *, rounds: int) -> int:
    """A 2-client numpy server beside CLI clients; its port once it listens."""
    procs.start("server", [sys.executable, ROLES, "softmax-server", "--port", 0, "--clients", 2,
                           "--rounds", rounds, "--logdir", tmp_path / "logs"], cwd=tmp_path)
    return int(wait_for_file(procs, "server", procs.out, r"^READY (\d+)$", 30).group(1))


def wait_for_file(procs: Processes, name: str, read, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(pattern, read(name), re.MULTILINE)
        if match:
            return match
        if procs.procs[name].poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{name} did not print {pattern!r}\n{procs.dump()}")
        time.sleep(0.05)


def test_a_second_process_with_a_live_name_exits_2_and_the_first_trains_on(tmp_path):
    save_client_data(tmp_path / "parts", 2)
    with Processes(tmp_path / "procs") as procs:
        port = start_cli_run_server(procs, tmp_path, rounds=3)
        cli_client(procs, "first", "client_1", 1, port, tmp_path)
        wait_for_file(procs, "server", procs.err, r"client_1 joined from", 30)
        # The server waits for a second client, so the first one stays connected and idle.
        cli_client(procs, "second", "client_1", 2, port, tmp_path)
        assert procs.wait("second", 30) == 2, procs.dump()
        error_lines = procs.err("second").strip().splitlines()
        assert len(error_lines) == 1, procs.dump()
        assert re.fullmatch(r"pyfed client: error: client_1: the server at 127\.0\.0\.1:\d+ "
                            r"refused the connection: " + DUPLICATE.format(name="client_1"),
                            error_lines[0]), error_lines
        assert "retrying" not in procs.err("second") and "reconnecting" not in procs.err("second")
        # A differently named client completes the federation; the first trains to the end.
        cli_client(procs, "client_2", "client_2", 2, port, tmp_path)
        codes = {name: procs.wait(name, 60) for name in ("server", "first", "client_2")}
        assert codes == {"server": 0, "first": 0, "client_2": 0}, procs.dump()
        assert "client_1: trained 3 rounds; server said completed" in procs.out("first")
        result = tagged(procs.out("server"), "RESULT")
    assert result["history"]["history"]["participants"] == [2, 2, 2]


def test_a_killed_client_is_replaced_at_once_by_a_new_process_with_its_name(tmp_path):
    save_client_data(tmp_path / "parts", 2)
    with Processes(tmp_path / "procs") as procs:
        port = start_cli_run_server(procs, tmp_path, rounds=2)
        first = cli_client(procs, "first", "client_1", 1, port, tmp_path)
        wait_for_file(procs, "server", procs.err, r"client_1 joined from", 30)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        cli_client(procs, "again", "client_1", 1, port, tmp_path)
        cli_client(procs, "client_2", "client_2", 2, port, tmp_path)
        codes = {name: procs.wait(name, 60) for name in ("server", "again", "client_2")}
        assert codes == {"server": 0, "again": 0, "client_2": 0}, procs.dump()
        assert "duplicate" not in procs.err("again") + procs.err("server")


# ---------------------------------------------------------------------------------------------
# A real client reconnecting over a half-open connection takes over with its secret
# ---------------------------------------------------------------------------------------------


class HalfOpenRelay:
    """Relays 127.0.0.1:<port> to the server. ``cut()`` closes the client's side of every
    connection so far but keeps the server's side open: the server sees a connection that
    still looks alive (as after a NAT timeout or a pulled cable), the client sees it drop."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client_side, _ = self.listener.accept()
            except OSError:
                continue
            server_side = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
            client_side.settimeout(None)
            server_side.settimeout(None)
            self.pairs.append((client_side, server_side))
            for src, dst in ((client_side, server_side), (server_side, client_side)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        # Never closes anything: an ended pump must not pass the hang-up on to the server.
        while True:
            try:
                chunk = src.recv(1 << 16)
                if not chunk:
                    return
                dst.sendall(chunk)
            except OSError:
                return

    def cut(self) -> None:
        for client_side, _ in self.pairs:
            try:
                client_side.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.stopped.set()
        for pair in self.pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)


def test_a_client_reconnecting_over_a_half_open_connection_takes_its_name_back(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_softmax_server(group, tmp_path, clients=2, rounds=2)
        relay = HalfOpenRelay(port)
        try:
            group.role("client_1", "softmax-client", "--port", relay.port, "--index", 1,
                       "--clients", 2, "--logdir", tmp_path / "logs", "--max-retries", 3,
                       "--retry-interval", 0.2)
            wait_for(group, "server", r"client_1 joined from", 30)
            relay.cut()
            # To the server the old connection is alive; only the secret lets the client back.
            wait_for(group, "server", r"'client_1' reconnected from 127\.0\.0\.1:\d+; "
                                      r"dropping its old connection", 30)
            group.role("client_2", "softmax-client", "--port", port, "--index", 2,
                       "--clients", 2, "--logdir", tmp_path / "logs", "--max-retries", 0)
            codes = group.wait_all(timeout=60)
            assert codes == {"server": 0, "client_1": 0, "client_2": 0}, group.dump()
        finally:
            relay.close()
        client = tagged(group.output("client_1"), "CLIENT")
        server = group.output("server")
    assert client["reconnections"] == 1 and client["rounds"] == 2, client
    assert "duplicate_name" not in server and "already connected" not in server, server
    assert tagged(server, "RESULT")["history"]["history"]["participants"] == [2, 2]
