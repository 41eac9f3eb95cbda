"""pyfed.server.gateway's accept loop, in-process, over real loopback sockets: running out of a
resource (here threads, for real) is survived, logged once, and serving resumes."""

from __future__ import annotations

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
