"""pyfed.server.gateway in-process, over real loopback sockets: its accept loop running out of a
resource (here threads, for real) is survived, logged once, and serving resumes; and its
interface to the server (snapshot, close_to_new_clients, stop, wait_for) with real client
handshakes."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

import pytest

from pyfed.wire import protocol
from pyfed.wire.messages import Hello, Welcome
from pyfed.wire.transport import BufferPool

from hostile_roles import drain_until_closed, read_frame

IO_TIMEOUT = 10.0


def assert_logged_soon(caplog, text: str, timeout: float = 5.0) -> None:
    """The accept thread logs right after it hands a connection over, so the line may come
    a moment after the client was served."""
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.02)


@pytest.fixture
def gateway():
    from pyfed.server.gateway import Gateway

    gw = Gateway(host="127.0.0.1", port=0, spec=[], spec_hash="0" * 64, pool=BufferPool(1),
                 welcome=lambda name: Welcome(client_id=name, rounds=1, run_name="r", run_id="i"),
                 handshake_timeout=IO_TIMEOUT, max_connections=50)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def test_failing_to_start_connection_threads_is_survived_and_logged_once(gateway, caplog):
    caplog.set_level(logging.WARNING, logger="pyfed")
    address = ("127.0.0.1", gateway.port)
    refused = []
    # A 16 TiB stack cannot be mapped: every new thread fails with "can't start new thread",
    # as when a process runs out of threads or memory. Only the gateway starts threads here.
    threading.stack_size(1 << 44)
    try:
        for _ in range(5):
            with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
                closed, _, _ = drain_until_closed(sock, IO_TIMEOUT)
                refused.append(closed)
    finally:
        threading.stack_size(0)
    assert refused == [True] * 5, "each connection without a thread must be closed, not left open"
    assert gateway.connections == 0  # their slots were given back

    # Threads can be made again: the next client is served as usual.
    deadline = time.monotonic() + IO_TIMEOUT
    with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(protocol.encode_bytes(Hello(client_name="after")))
        welcome = read_frame(sock, deadline)
        assert isinstance(welcome, Welcome) and welcome.client_id == "after"
    paused = [r for r in caplog.records if "accepting connections paused" in r.getMessage()]
    assert len(paused) == 1, [r.getMessage() for r in caplog.records]
    assert "can't start new thread" in paused[0].getMessage()
    assert_logged_soon(caplog, "accepting connections again")
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a known condition"


def test_running_out_of_descriptors_in_accept_is_survived_and_logged_once(gateway, caplog):
    resource = pytest.importorskip("resource")

    caplog.set_level(logging.WARNING, logger="pyfed")
    address = ("127.0.0.1", gateway.port)
    clients = [socket.socket() for _ in range(3)]  # their descriptors exist before the cap
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # Not one descriptor more for this process (a new one takes the lowest free number,
        # which must be below the limit): the gateway's accept() fails with EMFILE while the
        # kernel completes the connections in the listen backlog.
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        for sock in clients:
            sock.settimeout(IO_TIMEOUT)
            sock.connect(address)
        time.sleep(1.0)  # a few failed accepts, with backoff
        assert gateway.connections == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        deadline = time.monotonic() + IO_TIMEOUT
        for index, sock in enumerate(clients):  # the same connections are now served
            sock.sendall(protocol.encode_bytes(Hello(client_name=f"waited_{index}")))
            assert isinstance(read_frame(sock, deadline), Welcome)
    finally:
        for sock in clients:
            sock.close()
    messages = [r.getMessage() for r in caplog.records]
    paused = [m for m in messages if "accepting connections paused" in m]
    assert len(paused) == 1 and "EMFILE" in paused[0], messages
    assert_logged_soon(caplog, "accepting connections again")
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a known condition"


# ---------------------------------------------------------------------------------------------
# The gateway's own interface: snapshot, close_to_new_clients, stop, wait_for
# ---------------------------------------------------------------------------------------------


def join(gateway, name: str) -> socket.socket:
    """A real client handshake on loopback: HELLO, then WELCOME. Returns the open socket."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=IO_TIMEOUT)
    try:
        sock.sendall(protocol.encode_bytes(Hello(client_name=name)))
        welcome = read_frame(sock, time.monotonic() + IO_TIMEOUT)
        assert isinstance(welcome, Welcome) and welcome.client_id == name, welcome
    except BaseException:
        sock.close()
        raise
    return sock


def eventually(condition, what: str) -> None:
    """Poll ``condition`` for at most IO_TIMEOUT seconds."""
    deadline = time.monotonic() + IO_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


@pytest.fixture
def clients():
    """Open client sockets, closed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda sock: stack.enter_context(sock)


def test_snapshot_lists_the_welcomed_clients_and_drops_one_that_hangs_up(gateway, clients):
    assert gateway.snapshot() == {}
    clients(join(gateway, "alice"))
    bob = join(gateway, "bob")
    sessions = gateway.snapshot()
    assert sorted(sessions) == ["alice", "bob"]
    assert all(s.name == name and s.alive for name, s in sessions.items())
    assert sorted(gateway.snapshot(idle_only=True)) == ["alice", "bob"]
    bob.close()
    eventually(lambda: sorted(gateway.snapshot()) == ["alice"], "bob dropped")
    assert not sessions["bob"].alive
    sessions.clear()  # the snapshot was a copy: the gateway's registry is unchanged
    assert sorted(gateway.snapshot()) == ["alice"]


def test_snapshot_idle_only_leaves_out_a_client_working_on_a_round(gateway, clients):
    import numpy as np

    from pyfed.server.collect import FitCollector
    from pyfed.server.session import RequestJob
    from pyfed.strategy import FedAvg
    from pyfed.wire.messages import Fit, FitResult
    from pyfed.wire.spec import spec_of_arrays

    clients(join(gateway, "idle"))
    busy = clients(join(gateway, "busy"))
    weights = [np.zeros(3, np.float32)]
    strategy = FedAvg()
    strategy.configure_fit(1, weights, ["busy"])
    strategy.begin(1, weights)
    collector = FitCollector(1, {"busy"}, strategy, spec_of_arrays(weights), 100)
    gateway.snapshot()["busy"].post(RequestJob(collector, Fit(round=1, weights=tuple(weights)),
                                               deadline=time.monotonic() + IO_TIMEOUT))
    fit = read_frame(busy, time.monotonic() + IO_TIMEOUT)
    assert isinstance(fit, Fit) and fit.round == 1
    assert sorted(gateway.snapshot()) == ["busy", "idle"]
    assert sorted(gateway.snapshot(idle_only=True)) == ["idle"]  # training: not idle
    busy.sendall(protocol.encode_bytes(FitResult(round=1, weights=(np.ones(3, np.float32),),
                                                 num_examples=4)))
    collector.wait(timeout=IO_TIMEOUT)
    assert collector.answered == ["busy"], collector.failure_summary()
    assert sorted(gateway.snapshot(idle_only=True)) == ["busy", "idle"]
    assert np.allclose(strategy.finish()[0][0], 1.0)


def test_close_to_new_clients_returns_those_owed_a_finish_and_refuses_newcomers(gateway, clients):
    from pyfed.server.session import FinishJob
    from pyfed.wire.messages import Error, Finish

    alice = clients(join(gateway, "alice"))
    owed = gateway.close_to_new_clients()
    assert [s.name for s in owed] == ["alice"]
    late = clients(socket.create_connection(("127.0.0.1", gateway.port), timeout=IO_TIMEOUT))
    late.sendall(protocol.encode_bytes(Hello(client_name="latecomer")))
    refusal = read_frame(late, time.monotonic() + IO_TIMEOUT)
    assert isinstance(refusal, Error) and refusal.code == "finished"
    assert refusal.reason == "training has finished; this server accepts no more clients"
    assert sorted(gateway.snapshot()) == ["alice"]  # the connected client is still served
    owed[0].post(FinishJob(weights=[], reason="completed"))
    finish = read_frame(alice, time.monotonic() + IO_TIMEOUT)
    assert isinstance(finish, Finish) and finish.reason == "completed"
    assert owed[0].finished.wait(IO_TIMEOUT)


def test_stop_ends_every_session_and_the_listener(gateway, clients):
    socks = [clients(join(gateway, name)) for name in ("a", "b", "c")]
    sessions = gateway.snapshot()
    gateway.stop()
    for sock in socks:
        closed, received, _ = drain_until_closed(sock, IO_TIMEOUT)
        assert closed and received == b""  # hung up, with nothing sent
    assert not any(s.alive for s in sessions.values())
    eventually(lambda: gateway.snapshot() == {}, "every session dropped")
    eventually(lambda: gateway.connections == 0, "every connection slot given back")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=IO_TIMEOUT).close()


def test_wait_for_times_out_naming_who_connected(gateway, clients):
    from pyfed.errors import PyFedError

    clients(join(gateway, "bob"))
    clients(join(gateway, "alice"))
    lines = []
    with pytest.raises(PyFedError) as caught:
        gateway.wait_for(3, timeout=0.2, announce=lines.append)
    assert str(caught.value) == "only 2 of 3 clients connected within 0.2 s (alice, bob)"
    assert lines[0] == "waiting for clients: 2/3 connected (alice, bob) · 1 missing"


def test_wait_for_returns_once_enough_clients_have_connected(gateway, clients):
    lines = []
    errors = []

    def wait():
        try:
            gateway.wait_for(2, timeout=IO_TIMEOUT, announce=lines.append)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    waiter = threading.Thread(target=wait, name="wait_for")
    waiter.start()
    try:
        eventually(lambda: lines, "the first waiting line")
        assert lines[0] == "waiting for clients: 0/2 connected · 2 missing"
        clients(join(gateway, "first"))
        clients(join(gateway, "second"))
    finally:
        waiter.join(IO_TIMEOUT + 5)
    assert not waiter.is_alive() and errors == []
    assert all(line.startswith("waiting for clients: ") for line in lines)
    assert "2/2" not in " ".join(lines)  # done: no line for the count reached
    assert sorted(gateway.snapshot()) == ["first", "second"]
