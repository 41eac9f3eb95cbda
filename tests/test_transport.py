"""Tests of pyfed.wire.transport over real TCP sockets on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time

import numpy as np
import pytest

from pyfed.wire import protocol, transport
from pyfed.errors import ConnectionClosed, NetworkError, ProtocolError
from pyfed.wire.messages import Finish, Fit, FitResult, Hello, Ping, Welcome
from pyfed.wire.protocol import HANDSHAKE_LIMITS, MAGIC, PREFIX, VERSION, FrameLimits, Role, State
from pyfed.wire.transport import BufferPool, Channel
from wire_helpers import frame_nbytes

IO_TIMEOUT = 10.0      # bound on any single blocking socket operation in these tests
JOIN_TIMEOUT = 15.0    # bound on any thread join


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tcp_pair():
    """(server-side socket, client-side socket) of one real TCP connection on 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = server = None
    try:
        listener.settimeout(IO_TIMEOUT)
        client = socket.create_connection(listener.getsockname()[:2], timeout=IO_TIMEOUT)
        server, _ = listener.accept()
        server.settimeout(IO_TIMEOUT)
        yield server, client
    finally:
        for sock in (client, server, listener):
            if sock is not None:
                sock.close()


@pytest.fixture
def channels(tcp_pair):
    """(server Channel, client Channel) over ``tcp_pair``; both closed on teardown."""
    server_sock, client_sock = tcp_pair
    server = Channel(server_sock, Role.SERVER)
    client = Channel(client_sock, Role.CLIENT)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


class Worker:
    """Runs ``fn(*args)`` in a daemon thread; ``result()`` joins (bounded) and re-raises."""

    def __init__(self, fn, *args):
        self._fn, self._args = fn, args
        self._value = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            self._error = exc

    def result(self):
        self.thread.join(JOIN_TIMEOUT)
        assert not self.thread.is_alive(), "worker thread did not finish in time"
        if self._error is not None:
            raise self._error
        return self._value


@contextlib.contextmanager
def in_thread(fn, *args, close_on_error=()):
    """Start ``fn`` in a thread; always join it. On an error in the body, first close
    ``close_on_error`` (channels/sockets) so a thread blocked in I/O wakes up."""
    worker = Worker(fn, *args)
    worker.thread.start()
    ok = False
    try:
        yield worker
        ok = True
    finally:
        if not ok:
            for thing in close_on_error:
                with contextlib.suppress(OSError):
                    thing.close()
        worker.thread.join(JOIN_TIMEOUT)
        assert not worker.thread.is_alive(), "worker thread did not finish in time"


def handshake(server: Channel, client: Channel) -> None:
    """HELLO/WELCOME (small frames: fit in the socket buffers, no thread needed)."""
    client.send(Hello(client_name="c1"), timeout=IO_TIMEOUT)
    assert isinstance(server.receive(timeout=IO_TIMEOUT), Hello)
    server.send(Welcome(client_id="1", rounds=2, run_name="t", run_id="r"), timeout=IO_TIMEOUT)
    assert isinstance(client.receive(timeout=IO_TIMEOUT), Welcome)
    assert server.conversation.state is State.READY
    assert client.conversation.state is State.READY


def assert_arrays_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype.str == want.dtype.str
    assert got.shape == want.shape
    assert np.array_equal(got, want)


def fit_header(body_length: int = 0) -> bytes:
    descriptors = ([{"dtype": "|u1", "shape": [body_length], "offset": 0, "nbytes": body_length}]
                   if body_length else [])
    return json.dumps({"fields": {"round": 1}, "arrays": descriptors}).encode()


def nothing_to_read(sock: socket.socket, wait: float = 0.2) -> bool:
    readable, _, _ = select.select([sock], [], [], wait)
    return not readable


# ---------------------------------------------------------------------------------------------
# Sending and receiving
# ---------------------------------------------------------------------------------------------


def test_multi_array_fit_over_tcp(channels):
    server, client = channels
    handshake(server, client)
    rng = np.random.default_rng(0)
    weights = (
        rng.standard_normal(5_000_000, dtype=np.float32),          # ~20 MB
        np.arange(12, dtype="<i8").reshape(3, 4),
        np.array(3.5, dtype="<f8"),                               # 0-d
        np.zeros((0, 3), dtype="<f4"),                            # empty
        np.arange(7, dtype=">u2"),                                # big-endian
        rng.standard_normal((30, 20)).astype("<f2").T,             # non-contiguous
        np.array([True, False, True]),
    )
    fit = Fit(round=1, weights=weights, config={"epochs": 1})
    frame_size = frame_nbytes(protocol.encode(fit))
    assert frame_size > 20_000_000
    sent_before, received_before = server.bytes_sent, client.bytes_received

    with in_thread(server.send, fit, IO_TIMEOUT, close_on_error=(server, client)) as sender:
        message = client.receive(timeout=IO_TIMEOUT)
        assert sender.result() == frame_size

    assert isinstance(message, Fit)
    assert message.round == 1 and message.config == {"epochs": 1}
    assert len(message.weights) == len(weights)
    for got, want in zip(message.weights, weights):
        assert_arrays_identical(got, want)
    assert server.bytes_sent - sent_before == frame_size
    assert client.bytes_received - received_before == frame_size
    assert client.conversation.state is State.FITTING

    # ...and the 20 MB comes back the other way.
    result = FitResult(round=1, weights=message.weights, num_examples=10)
    result_size = frame_nbytes(protocol.encode(result))
    with in_thread(client.send, result, IO_TIMEOUT, close_on_error=(server, client)) as sender:
        echoed = server.receive(timeout=IO_TIMEOUT)
        assert sender.result() == result_size
    for got, want in zip(echoed.weights, weights):
        assert_arrays_identical(got, want)
    assert server.conversation.state is State.READY
    assert client.bytes_sent == server.bytes_received


def test_bytes_counters_for_every_frame(channels):
    server, client = channels
    handshake(server, client)
    assert client.bytes_sent == server.bytes_received > protocol.PREFIX_SIZE
    assert server.bytes_sent == client.bytes_received > protocol.PREFIX_SIZE
    finish = Finish(weights=(np.ones(3, dtype="<f4"),))
    size = server.send(finish, timeout=IO_TIMEOUT)
    assert size == len(protocol.encode_bytes(finish))
    assert isinstance(client.receive(timeout=IO_TIMEOUT), Finish)
    assert server.bytes_sent == client.bytes_received
    assert client.conversation.state is State.CLOSED


def test_receive_into_pooled_buffer_and_reuse(channels):
    server, client = channels
    handshake(server, client)
    pool = BufferPool(size=1)
    lent: list[np.ndarray] = []

    def allocate(nbytes):
        buf = pool.acquire(nbytes, timeout=IO_TIMEOUT)
        lent.append(buf)
        return buf

    rng = np.random.default_rng(1)
    shapes = [(1000, 250), (17,), (3, 3)]
    for round_ in (1, 2):
        weights = tuple(rng.standard_normal(s).astype("<f4") for s in shapes)
        fit = Fit(round=round_, weights=weights)
        with in_thread(server.send, fit, IO_TIMEOUT, close_on_error=(server, client)) as sender:
            message = client.receive(timeout=IO_TIMEOUT, allocate=allocate)
            sender.result()
        assert len(lent) == round_
        buffer = lent[-1]
        assert pool.in_use == 1
        for got, want in zip(message.weights, weights):
            assert_arrays_identical(got, want)
            assert np.shares_memory(got, buffer), "arrays must be views into the pooled buffer"
        pool.release(buffer)
        assert pool.in_use == 0
        client.send(FitResult(round=round_, num_examples=1), timeout=IO_TIMEOUT)
        assert isinstance(server.receive(timeout=IO_TIMEOUT), FitResult)

    first, second = lent
    assert np.shares_memory(first, second), "the pool must reuse the released buffer"
    assert first.__array_interface__["data"][0] == second.__array_interface__["data"][0]
    assert pool.peak_in_use == 1


# ---------------------------------------------------------------------------------------------
# BufferPool on its own
# ---------------------------------------------------------------------------------------------


def test_buffer_pool_blocks_a_second_acquire_until_release():
    pool = BufferPool(size=1)
    first = pool.acquire(1024, timeout=1)
    acquired = threading.Event()

    def second_acquire():
        buf = pool.acquire(1024, timeout=IO_TIMEOUT)
        acquired.set()
        return buf

    released = False
    worker = Worker(second_acquire)
    worker.thread.start()
    try:
        assert not acquired.wait(0.3), "a size-1 pool must block the second acquire"
        assert pool.in_use == 1
        pool.release(first)
        released = True
        assert acquired.wait(IO_TIMEOUT)
        second = worker.result()
        assert np.shares_memory(first, second)
        assert pool.in_use == 1 and pool.peak_in_use == 1
        pool.release(second)
        assert pool.in_use == 0
    finally:
        if not released:
            pool.release(first)  # unblock the worker so it can be joined
        worker.thread.join(JOIN_TIMEOUT)
        assert not worker.thread.is_alive()


def test_buffer_pool_acquire_timeout_raises_network_error():
    pool = BufferPool(size=1)
    held = pool.acquire(64)
    try:
        started = time.monotonic()
        with pytest.raises(NetworkError):
            pool.acquire(64, timeout=0.1)
        assert 0.05 <= time.monotonic() - started < 5
        with pytest.raises(NetworkError):
            pool.acquire(64, timeout=0)
    finally:
        pool.release(held)
    assert pool.in_use == 0


def test_buffer_pool_replaces_a_too_small_idle_buffer():
    pool = BufferPool(size=1)
    small = pool.acquire(16)
    pool.release(small)
    big = pool.acquire(1 << 16, timeout=1)
    try:
        assert big.nbytes == 1 << 16
        assert pool.peak_in_use == 1
    finally:
        pool.release(big)


def test_buffer_pool_rejects_size_zero():
    with pytest.raises(ValueError):
        BufferPool(size=0)


# ---------------------------------------------------------------------------------------------
# Failures on the wire
# ---------------------------------------------------------------------------------------------


def _fit_result_frame() -> bytes:
    return protocol.encode_bytes(FitResult(round=1, weights=(np.arange(100, dtype="<f8"),),
                                           num_examples=3))


@pytest.mark.parametrize("cut", ["nothing", "in-prefix", "in-header", "after-header", "in-body"])
def test_peer_closing_mid_frame_is_connection_closed(tcp_pair, cut):
    server_sock, client_sock = tcp_pair
    frame = _fit_result_frame()
    header_length = PREFIX.unpack(frame[:20])[4]
    position = {"nothing": 0, "in-prefix": 10, "in-header": 20 + header_length // 2,
                "after-header": 20 + header_length, "in-body": len(frame) - 100}[cut]
    with Channel(server_sock, Role.SERVER) as channel:
        # A FIT_RESULT is legal only in answer to a FIT (the prefix is checked against the
        # state table before the header is read): put the conversation there.
        channel.conversation.state = State.FITTING
        client_sock.sendall(frame[:position])
        client_sock.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionClosed):
            channel.receive(timeout=IO_TIMEOUT)


def test_peer_reset_is_a_network_error(tcp_pair):
    server_sock, client_sock = tcp_pair
    client_sock.sendall(_fit_result_frame()[:30])
    # SO_LINGER 0: close() sends RST instead of FIN.
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client_sock.close()
    with Channel(server_sock, Role.SERVER) as channel:
        channel.conversation.state = State.FITTING  # where a FIT_RESULT is legal
        with pytest.raises(NetworkError):
            channel.receive(timeout=IO_TIMEOUT)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    bytes(range(256)),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS ClientHello
], ids=["http", "bytes", "tls"])
def test_peer_sending_garbage_is_a_protocol_error(tcp_pair, garbage):
    server_sock, client_sock = tcp_pair
    with Channel(server_sock, Role.SERVER) as channel:
        client_sock.sendall(garbage)
        with pytest.raises(ProtocolError):
            channel.receive(timeout=IO_TIMEOUT)


def test_peer_sending_an_invalid_header_is_a_protocol_error(tcp_pair):
    server_sock, client_sock = tcp_pair
    header = b'{"fields":{"client_name":5},"arrays":[]}'
    with Channel(server_sock, Role.SERVER) as channel:
        client_sock.sendall(PREFIX.pack(MAGIC, VERSION, protocol.MessageKind.HELLO, 0,
                                        len(header), 0) + header)
        with pytest.raises(ProtocolError):
            channel.receive(timeout=IO_TIMEOUT)


def test_receive_timeout_is_a_network_error(tcp_pair):
    server_sock, client_sock = tcp_pair
    with Channel(server_sock, Role.SERVER) as channel:
        started = time.monotonic()
        with pytest.raises(NetworkError, match="timed out") as info:
            channel.receive(timeout=0.2)
        assert not isinstance(info.value, ConnectionClosed)
        assert 0.1 <= time.monotonic() - started < 5


def test_receive_timeout_mid_frame_is_a_network_error(tcp_pair):
    server_sock, client_sock = tcp_pair
    with Channel(server_sock, Role.SERVER) as channel:
        channel.conversation.state = State.FITTING  # where a FIT_RESULT is legal
        client_sock.sendall(_fit_result_frame()[:50])  # then silence
        with pytest.raises(NetworkError, match="timed out"):
            channel.receive(timeout=0.2)


class RecordingAllocator:
    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, nbytes):
        self.calls.append(nbytes)
        return np.empty(nbytes, dtype=np.uint8)


@pytest.mark.parametrize("declared", [1025, 2**40, 2**64 - 1])
def test_oversize_declared_body_is_rejected_without_allocation(tcp_pair, declared):
    server_sock, client_sock = tcp_pair
    allocate = RecordingAllocator()
    header = fit_header()
    with Channel(server_sock, Role.SERVER, limits=FrameLimits(max_body_bytes=1024)) as channel:
        client_sock.sendall(PREFIX.pack(MAGIC, VERSION, protocol.MessageKind.FIT_RESULT, 0,
                                        len(header), declared) + header)
        with pytest.raises(ProtocolError, match="limit"):
            channel.receive(timeout=IO_TIMEOUT, allocate=allocate)
    assert allocate.calls == []


def test_handshake_limits_reject_any_body_without_allocation(tcp_pair):
    server_sock, client_sock = tcp_pair
    allocate = RecordingAllocator()
    with Channel(server_sock, Role.SERVER, limits=HANDSHAKE_LIMITS) as channel:
        client_sock.sendall(protocol.encode_bytes(Hello(client_name="x"))
                            + protocol.encode_bytes(FitResult(round=1,
                                                              weights=(np.zeros(1, "|u1"),))))
        assert isinstance(channel.receive(timeout=IO_TIMEOUT, allocate=allocate), Hello)
        with pytest.raises(ProtocolError):
            channel.receive(timeout=IO_TIMEOUT, allocate=allocate)
    assert allocate.calls == []


def test_invalid_header_is_rejected_before_the_body_is_allocated(tcp_pair):
    server_sock, client_sock = tcp_pair
    allocate = RecordingAllocator()
    # Declares a 1 MB body within limits, but the descriptor says 64 bytes: caught on the header.
    header = json.dumps({"fields": {"round": 1}, "arrays": [
        {"dtype": "|u1", "shape": [64], "offset": 0, "nbytes": 64}]}).encode()
    with Channel(server_sock, Role.SERVER) as channel:
        channel.conversation.state = State.FITTING  # where a FIT_RESULT is legal
        client_sock.sendall(PREFIX.pack(MAGIC, VERSION, protocol.MessageKind.FIT_RESULT, 0,
                                        len(header), 1 << 20) + header)
        with pytest.raises(ProtocolError, match="arrays end at 64"):
            channel.receive(timeout=IO_TIMEOUT, allocate=allocate)
    assert allocate.calls == []


# ---------------------------------------------------------------------------------------------
# The state table, enforced by the channel
# ---------------------------------------------------------------------------------------------


def test_server_channel_receiving_fit_is_a_protocol_error(tcp_pair):
    server_sock, client_sock = tcp_pair
    with Channel(server_sock, Role.SERVER) as channel:
        client_sock.sendall(protocol.encode_bytes(Fit(round=1, weights=(np.ones(4, "<f4"),))))
        with pytest.raises(ProtocolError) as info:
            channel.receive(timeout=IO_TIMEOUT)
    text = str(info.value)
    assert "FIT" in text and "server" in text.lower() and "START" in text


def test_server_channel_receiving_fit_when_ready_is_a_protocol_error(channels):
    server, client = channels
    handshake(server, client)
    client.sock.sendall(protocol.encode_bytes(Fit(round=1)))
    with pytest.raises(ProtocolError, match="READY"):
        server.receive(timeout=IO_TIMEOUT)


def test_illegal_send_raises_before_writing_anything(channels):
    server, client = channels
    with pytest.raises(ProtocolError, match="FIT"):
        server.send(Fit(round=1, weights=(np.ones(4, "<f4"),)), timeout=IO_TIMEOUT)
    assert server.bytes_sent == 0
    assert nothing_to_read(client.sock)
    with pytest.raises(ProtocolError, match="FIT_RESULT"):
        client.send(FitResult(round=1), timeout=IO_TIMEOUT)
    assert client.bytes_sent == 0
    assert nothing_to_read(server.sock)


# ---------------------------------------------------------------------------------------------
# Connecting and listening
# ---------------------------------------------------------------------------------------------


def test_connect_to_a_closed_port_names_the_address():
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    finally:
        probe.close()  # nothing listens on the port any more
    sock = None
    try:
        with pytest.raises(NetworkError, match=f"127\\.0\\.0\\.1:{port}"):
            sock = transport.connect("127.0.0.1", port, timeout=2)
    finally:
        if sock is not None:
            sock.close()


def test_listen_and_connect_on_loopback():
    listener = transport.listen("127.0.0.1", 0)
    client = server = None
    try:
        host, port = listener.getsockname()[:2]
        listener.settimeout(IO_TIMEOUT)
        client = transport.connect(host, port, timeout=IO_TIMEOUT)
        server, _ = listener.accept()
        with Channel(server, Role.SERVER) as s, Channel(client, Role.CLIENT) as c:
            c.send(Hello(client_name="x"), timeout=IO_TIMEOUT)
            assert s.receive(timeout=IO_TIMEOUT) == Hello(client_name="x")
            assert s.peer.startswith("127.0.0.1:")
    finally:
        for sock in (client, server, listener):
            if sock is not None:
                sock.close()


def test_listen_on_a_busy_port_is_a_network_error():
    first = transport.listen("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(NetworkError, match=str(port)):
            second = transport.listen("127.0.0.1", port)
            second.close()
    finally:
        first.close()


# ---------------------------------------------------------------------------------------------
# Watching the body as it arrives (the server checks values while they are in cache)
# ---------------------------------------------------------------------------------------------

def _scan_weights(bad_at):
    rng = np.random.default_rng(5)
    weights = [rng.standard_normal(300_001).astype("<f4"), np.arange(9, dtype="<i8"),
               rng.standard_normal(5), rng.standard_normal(33).astype("<f2"),
               np.zeros(0, dtype="<f4"), rng.standard_normal((70, 3)).astype("<f4")]
    if bad_at is not None:
        index, position, value = bad_at
        weights[index].reshape(-1)[position] = value
    return weights


@pytest.mark.parametrize("bad_at", [None, (0, 123_457, np.nan), (2, 4, -np.inf),
                                    (3, 0, np.nan), (5, 209, 3e37)])
def test_value_scan_checks_the_body_piece_by_piece_as_it_arrives(channels, bad_at):
    from pyfed.server.collect import UpdateRejected, ValueScan, validate_update
    from pyfed.wire.spec import TensorSpec

    server, client = channels
    handshake(server, client)
    server.send(Fit(round=1, weights=(), config={}), timeout=IO_TIMEOUT)
    client.receive(timeout=IO_TIMEOUT)
    weights = _scan_weights(bad_at)
    frame = protocol.encode_bytes(FitResult(round=1, weights=tuple(weights), num_examples=3))
    # Uneven pieces with pauses, so the body lands in parts that split values.
    pieces, position, sizes = [], 0, [1, 3, 4093, 65_537, 7, 300_001]
    while position < len(frame):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(frame[position:position + size])
        position += size

    def dribble():
        for index, piece in enumerate(pieces):
            client.sock.sendall(piece)
            if index < 40:
                time.sleep(0.002)

    progress, scan = [], ValueScan()

    def watch(body, descriptors, received):
        progress.append(received)
        scan(body, descriptors, received)

    with in_thread(dribble, close_on_error=(server, client)) as sender:
        message = server.receive(timeout=IO_TIMEOUT, on_body=watch)
        sender.result()
    assert progress == sorted(progress) and len(progress) > 10
    assert progress[-1] == len(frame) - protocol.PREFIX_SIZE - PREFIX.unpack(frame[:20])[4]
    if bad_at is None:
        assert scan.bad is None and scan.checked == len(weights)  # every array, to the end
    else:
        index, _, value = bad_at
        assert scan.checked == index  # the arrays before it were checked whole; it stopped there
        np.testing.assert_array_equal(scan.bad, np.array(value, weights[index].dtype))
    spec = [TensorSpec(name=f"t{i}", shape=w.shape, dtype=w.dtype.str) for i, w in enumerate(weights)]

    def verdict(with_scan):
        try:
            validate_update(message.weights, spec, 3, 10, scan if with_scan else None)
        except UpdateRejected as exc:
            return str(exc)
        return None
    assert verdict(True) == verdict(False)
    assert (verdict(True) is None) == (bad_at is None)


# ---------------------------------------------------------------------------------------------
# Refused before anything is allocated: the state table on the prefix, ``expect`` on the header
# ---------------------------------------------------------------------------------------------


def test_an_unasked_for_result_is_refused_on_its_prefix_unread(channels):
    from pyfed.wire.pacing import queued_bytes

    server, client = channels
    handshake(server, client)  # READY: nobody asked for a FIT_RESULT
    frame = protocol.encode_bytes(FitResult(round=1, weights=(np.zeros(1 << 18, "<f4"),)))
    allocate = RecordingAllocator()
    before = server.bytes_received
    with in_thread(client.sock.sendall, frame, close_on_error=(server, client)):
        with pytest.raises(ProtocolError, match="FIT_RESULT from the client in state READY"):
            server.receive(timeout=IO_TIMEOUT, allocate=allocate)
        assert allocate.calls == []
        assert server.bytes_received == before and queued_bytes(server.sock) > 0  # header unread
        server.close()  # the sender, blocked on a full socket, wakes with an error
    assert server.conversation.state is State.READY


def test_expect_refuses_a_frame_on_its_header_before_any_allocation(tcp_pair):
    from pyfed.wire.layout import LayoutMismatch
    from pyfed.wire.pacing import queued_bytes

    server_sock, client_sock = tcp_pair
    frame = protocol.encode_bytes(FitResult(round=1, weights=(np.zeros(5000, "<f4"),)))
    seen, allocate = [], RecordingAllocator()

    def expect(prefix, fields, descriptors):
        seen.append((prefix.body_length, [d["shape"] for d in descriptors]))
        raise LayoutMismatch("not the model's arrays")

    with Channel(server_sock, Role.SERVER) as channel:
        channel.conversation.state = State.FITTING
        client_sock.sendall(frame)
        with pytest.raises(LayoutMismatch):
            channel.receive(timeout=IO_TIMEOUT, allocate=allocate, expect=expect)
        assert seen == [(20_000, [[5000]])] and allocate.calls == []
        assert queued_bytes(server_sock) == 20_000  # not a byte of the body was read


def test_a_body_without_a_buffer_is_drained_and_the_stream_stays_in_step(channels):
    server, client = channels
    handshake(server, client)
    server.send(Fit(round=1), timeout=IO_TIMEOUT)
    client.receive(timeout=IO_TIMEOUT)
    frame = protocol.encode_bytes(FitResult(round=1, weights=(np.ones(300_000, "<f4"),),
                                            num_examples=7))
    ping = protocol.encode_bytes(Ping())
    before = server.bytes_received
    with in_thread(client.sock.sendall, frame + ping, close_on_error=(server, client)) as sender:
        late = server.receive(timeout=IO_TIMEOUT, allocate=lambda nbytes: None)
        assert isinstance(late, FitResult) and late.weights == () and late.num_examples == 7
        assert server.conversation.state is State.READY
        assert isinstance(server.receive(timeout=IO_TIMEOUT), Ping)  # the next frame, intact
        sender.result()
    assert server.bytes_received - before == len(frame) + len(ping)


# ---------------------------------------------------------------------------------------------
# Paced bodies (pyfed.wire.pacing): a slow peer never holds a receive buffer for long
# ---------------------------------------------------------------------------------------------


def test_a_paced_large_body_arrives_whole_and_the_socket_is_restored(tcp_pair):
    from pyfed.wire.pacing import UploadPace

    server_sock, client_sock = tcp_pair
    weights = (np.random.default_rng(3).standard_normal(2_000_000).astype("<f4"),
               np.arange(10, dtype="<i8"))
    frame = protocol.encode_bytes(FitResult(round=1, weights=weights, num_examples=1))
    pace = UploadPace(min_rate=1 << 20, stall_timeout=5.0)
    with Channel(server_sock, Role.SERVER) as channel:
        channel.conversation.state = State.FITTING
        with in_thread(client_sock.sendall, frame, close_on_error=(server_sock, client_sock)):
            message = channel.receive(pace=pace)
        for got, want in zip(message.weights, weights):
            assert_arrays_identical(got, want)
        # Nothing of the pacing stays on the socket for the next, unpaced, receive.
        assert server_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)
        assert server_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1


def _begin_upload(sock: socket.socket, frame: bytes, body_bytes: int) -> None:
    header_length = PREFIX.unpack(frame[:protocol.PREFIX_SIZE])[4]
    sock.sendall(frame[:protocol.PREFIX_SIZE + header_length + body_bytes])


def test_a_dribbling_peer_never_gets_a_buffer(tcp_pair):
    from pyfed.wire.pacing import UploadPace

    server_sock, client_sock = tcp_pair
    frame = protocol.encode_bytes(FitResult(round=1, weights=(np.zeros(1024, "<f4"),)))
    stop = threading.Event()

    def dribble():  # 100 body bytes, then one byte every 0.1 s: bounded by count and by `stop`
        _begin_upload(client_sock, frame, 100)
        for index in range(40):
            if stop.wait(0.1):
                return
            with contextlib.suppress(OSError):
                client_sock.sendall(frame[len(frame) - 1000 + index:len(frame) - 999 + index])

    allocate = RecordingAllocator()
    with Channel(server_sock, Role.SERVER) as channel:
        channel.conversation.state = State.FITTING
        with in_thread(dribble):
            try:
                with pytest.raises(NetworkError, match="too slow"):
                    channel.receive(allocate=allocate, pace=UploadPace(min_rate=1e6,
                                                                       stall_timeout=0.5))
            finally:
                stop.set()
    assert allocate.calls == [], "a peer that never had its body's first chunk queued got a buffer"


def test_a_peer_stalling_mid_body_loses_its_buffer(tcp_pair):
    from pyfed.wire.pacing import UploadPace

    server_sock, client_sock = tcp_pair
    frame = protocol.encode_bytes(FitResult(round=1, weights=(np.zeros(1 << 18, "<f4"),)))
    allocate = RecordingAllocator()
    with Channel(server_sock, Role.SERVER) as channel:
        channel.conversation.state = State.FITTING
        # 256 KiB of the 1 MiB body, then silence (the connection stays open).
        with in_thread(_begin_upload, client_sock, frame, 1 << 18,
                       close_on_error=(server_sock, client_sock)):
            # A slow minimum rate keeps the whole-frame deadline far away: only the stall
            # timer may fire (at 1e9 B/s the two were 1 ms apart, and a busy machine let the
            # whole-frame one win).
            with pytest.raises(NetworkError, match=r"stalled: nothing for 0\.4 s after 262144"):
                channel.receive(allocate=allocate, pace=UploadPace(min_rate=1.0,
                                                                   stall_timeout=0.4))
    assert allocate.calls == [1 << 20]  # it had a buffer, and the receive gave up on it


def test_waiting_for_a_buffer_is_not_counted_against_the_peer(tcp_pair):
    from pyfed.wire.pacing import UploadPace

    server_sock, client_sock = tcp_pair
    frame = protocol.encode_bytes(FitResult(round=1, weights=(np.ones(1 << 18, "<f4"),)))

    def slow_pool(nbytes):  # every buffer busy for a while: longer than the peer's allowance
        time.sleep(1.0)
        return np.empty(nbytes, dtype=np.uint8)

    with Channel(server_sock, Role.SERVER) as channel:
        channel.conversation.state = State.FITTING
        with in_thread(client_sock.sendall, frame, close_on_error=(server_sock, client_sock)):
            message = channel.receive(allocate=slow_pool,
                                      pace=UploadPace(min_rate=1e9, stall_timeout=0.3))
    assert float(message.weights[0].sum()) == 1 << 18


# ---------------------------------------------------------------------------------------------
# BufferPool: never bigger than the largest message expected
# ---------------------------------------------------------------------------------------------


def test_buffer_pool_refuses_a_buffer_larger_than_its_maximum():
    pool = BufferPool(size=2, max_nbytes=2600)
    with pytest.raises(ProtocolError, match="2601 bytes.*2600"):
        pool.acquire(2601)
    assert pool.in_use == 0 and pool.largest == 0
    buffer = pool.acquire(2600, timeout=1)
    pool.release(buffer)
    assert pool.largest == 2600
