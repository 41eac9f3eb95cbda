"""Sockets: whole PyFed messages over TCP, with no copies of the arrays.

Sending hands the protocol's buffer list (header, then memoryviews of the arrays) to
``sendmsg``: the kernel gathers them, so big arrays are never concatenated. Receiving reads the
prefix and header into small buffers, checks them, and only then ``recv_into``s the body into one
buffer sized to the (already capped) length; the arrays are ``np.frombuffer`` views of it.

Socket exceptions are mapped to :mod:`pyfed.errors` here, once (as httpcore does), so the
orchestration layers only ever see ``NetworkError``/``ConnectionClosed``/``ProtocolError``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

import numpy as np

from . import protocol
from ..errors import ConnectionClosed, InvalidValue, NetworkError, ProtocolError, TLSError
from .pacing import PacedFrame, UploadPace, gate_size, receive_paced, wait_until_queued
from .protocol import Conversation, FramePrefix, FrameLimits, Message, Role

# sendmsg takes at most IOV_MAX buffers per call.
_IOV_MAX = min(getattr(os, "sysconf", lambda _: 1024)("SC_IOV_MAX") or 1024, 1024)

# allocate(nbytes) -> the body's buffer, or None: read the body and throw it away.
Allocator = Callable[[int], "np.ndarray | bytearray | memoryview | None"]
# on_body(body, array_descriptors, body_bytes_received_so_far)
BodyWatcher = Callable[[object, list, int], None]
# expect(prefix, fields, array_descriptors): raises to refuse a frame before its body is read.
Expectation = Callable[[FramePrefix, dict, list], None]

# Headers are read in steps of this size, so memory follows the bytes that really arrived, not
# the length a peer declared (up to 1 MiB per connection).
_HEADER_STEP = 64 << 10
_DRAIN_STEP = 64 << 10


def _default_allocator(nbytes: int) -> np.ndarray:
    # np.empty does not zero-fill: the kernel writes every byte via recv_into anyway.
    return np.empty(nbytes, dtype=np.uint8)


def tune_socket(sock: socket.socket) -> None:
    # Buffer sizes are left to the kernel: setting SO_SNDBUF/SO_RCVBUF turns off TCP's
    # autotuning, which sizes them to the link; fixed 4 MiB buffers made the bench's
    # 10-client round about 8% slower on loopback than autotuned ones.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Channel:
    """One framed, state-checked connection. Not thread-safe: one thread owns a channel."""

    def __init__(self, sock: socket.socket, role: Role, limits: FrameLimits = FrameLimits(),
                 peer: str | None = None):
        self.sock = sock
        self.conversation = Conversation(role)
        self.limits = limits
        self.peer = peer or _peer_name(sock)
        self.bytes_sent = 0
        self.bytes_received = 0
        self._closed = False
        self._deadline: float | None = None
        self._send_lock = threading.Lock()
        tune_socket(sock)

    # -- sending --------------------------------------------------------------------------

    def send(self, message: Message, timeout: float | None = None) -> int:
        """Send one message; returns the frame's size in bytes."""
        with self._send_lock:
            self.conversation.send(message)
            buffers = protocol.encode(message)
            with self._mapped_errors("sending " + message.KIND.name, timeout):
                sent = _send_buffers(self.sock, buffers)
            self.bytes_sent += sent
            return sent

    def send_notice(self, message: Message, timeout: float = 2.0) -> None:
        """Send a last ERROR from another thread, outside the state table (e.g. "server
        stopping" while the owning thread waits for a reply). Whole frames never interleave."""
        with self._send_lock:
            with self._mapped_errors("sending " + message.KIND.name, timeout):
                _send_buffers(self.sock, protocol.encode(message))

    # -- receiving ------------------------------------------------------------------------

    def receive(self, timeout: float | None = None,
                allocate: Allocator = _default_allocator, deadline: float | None = None,
                on_body: BodyWatcher | None = None, expect: Expectation | None = None,
                pace: UploadPace | None = None) -> Message:
        """Receive one whole message. ``allocate(nbytes)`` supplies the body buffer (a pool).

        ``timeout`` bounds each wait for bytes; ``deadline`` (a ``time.monotonic()`` value)
        bounds the whole message, so a peer that dribbles one byte at a time cannot hold the
        connection open forever.

        Nothing is allocated for a frame before it is known to be wanted: its kind is checked
        against the conversation's state on the prefix (an unasked-for message is refused
        before its header is read), then ``expect(prefix, fields, descriptors)`` may refuse it
        on its header (e.g. arrays that are not the model's). ``allocate`` may return None: the
        body is then read through a small scratch buffer and dropped, and the message comes
        back with its arrays empty (a result too late to count still ends its exchange).

        ``pace`` (see :mod:`pyfed.wire.pacing`): once the prefix has arrived, the frame must keep
        up a minimum rate, no buffer is taken until the body's first chunk is queued in the
        kernel, and a pause while holding one loses it.

        ``on_body(body, descriptors, received)`` is called after each ``recv_into`` of the
        body, with the number of body bytes received so far: a pass over the arrays (e.g.
        checking every value) can then read each piece while it is still in the CPU's cache
        (a piece is at most what the kernel's receive buffer held, a few MiB), instead of
        reading the whole body from memory again afterwards. Pieces are not capped smaller:
        capping them at 1 MiB cost more in extra ``recv_into`` calls and wake-ups than the
        warmer cache saved (the bench measured 0.5 ms more CPU per 21.6 MB update).
        """
        self._deadline = deadline
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        with self._mapped_errors("receiving a message", timeout):
            prefix_bytes = self._recv_exactly(bytearray(protocol.PREFIX_SIZE))
            prefix = protocol.parse_prefix(prefix_bytes, self.limits)
            self.conversation.check(prefix.kind)
            frame = None if pace is None else PacedFrame(self.peer, prefix, pace, deadline)
            if frame is not None:
                self._deadline = frame.until
            header = self._recv_header(prefix.header_length, frame)
            try:
                fields, descriptors = protocol.decode_header(prefix, header)
            except InvalidValue as problem:
                self._refuse(prefix, problem, frame)
                raise
            if expect is not None:
                expect(prefix, fields, descriptors)
            body = b""
            if prefix.body_length:
                body = self._receive_body(prefix, descriptors, allocate, on_body, frame)
        self.bytes_received += protocol.PREFIX_SIZE + prefix.header_length + prefix.body_length
        if body is None:
            message = protocol.decode_without_body(prefix, fields)
        else:
            message = protocol.decode_body(prefix, fields, descriptors, body)
        self.conversation.receive(message)
        return message

    def _refuse(self, prefix: FramePrefix, problem: InvalidValue,
                frame: "PacedFrame | None") -> None:
        """A well-framed message whose values are refused: if the state table allows it here,
        read its body into a small scratch buffer and drop it (nothing is allocated by its
        size), so the next frame can be read and the caller can answer with a non-fatal
        ERROR. Otherwise the conversation's ProtocolError propagates and the body is never
        read."""
        self.conversation.refuse(prefix.kind, problem)
        if prefix.body_length:
            self._drain(prefix.body_length, frame)  # paced like any body: no dribbling either
        self.bytes_received += protocol.PREFIX_SIZE + prefix.header_length + prefix.body_length

    def _recv_header(self, length: int, frame: "PacedFrame | None") -> bytearray:
        try:
            if length <= _HEADER_STEP:
                return self._recv_exactly(bytearray(length))
            header = bytearray()
            while len(header) < length:
                header += self._recv_exactly(bytearray(min(_HEADER_STEP, length - len(header))))
            return header
        except socket.timeout:
            if frame is None:
                raise
            raise frame.too_slow("header") from None

    def _receive_body(self, prefix: FramePrefix, descriptors: list, allocate: Allocator,
                      on_body: BodyWatcher | None, frame: "PacedFrame | None"):
        nbytes = prefix.body_length
        if frame is not None:
            want = gate_size(self.sock, nbytes, frame.pace)
            if not wait_until_queued(self.sock, want, frame.until):
                raise frame.too_slow(f"body's first {want} bytes")
        asked = time.monotonic()
        body = allocate(nbytes)
        if frame is not None:
            frame.until += time.monotonic() - asked  # waiting for a buffer is not the peer's time
        if body is None:
            self._drain(nbytes, frame)
            return None
        view = memoryview(body).cast("B")
        progress = None if on_body is None else functools.partial(on_body, body, descriptors)
        if frame is None:
            self._recv_exactly(view, progress)
        else:
            receive_paced(self.sock, view, progress, frame)
        return body

    def _drain(self, nbytes: int, frame: "PacedFrame | None") -> None:
        scratch = memoryview(bytearray(min(nbytes, _DRAIN_STEP)))
        left = nbytes
        while left:
            piece = scratch[:min(left, len(scratch))]
            if frame is None:
                self._recv_exactly(piece)
            else:
                receive_paced(self.sock, piece, None, frame)
            left -= len(piece)

    def _recv_exactly(self, buffer, progress=None):
        view = memoryview(buffer)
        total = len(view)
        while len(view):
            if self._deadline is not None:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                self.sock.settimeout(remaining)
            received = self.sock.recv_into(view)
            if received == 0:
                got = total - len(view)
                raise ConnectionClosed(
                    f"{self.peer} closed the connection" + (f" mid-frame ({got} of {total} bytes)"
                                                            if got else ""))
            view = view[received:]
            if progress is not None:
                progress(total - len(view))
        return buffer

    # -- lifetime -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mapped_errors(self, doing: str, timeout: float | None):
        try:
            self.sock.settimeout(timeout)  # inside: a socket closed under us is an OSError too
            yield
        except (ProtocolError, ConnectionClosed):
            raise
        except socket.timeout:
            waited = "" if timeout is None else f" after {timeout:g} s"
            raise NetworkError(f"timed out{waited} {doing} with {self.peer}") from None
        except ssl.SSLError as exc:
            raise NetworkError(f"TLS error {doing} with {self.peer}: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectionClosed(f"connection to {self.peer} failed {doing}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def has_pending_input(sock: socket.socket, if_closed: bool) -> bool:
    """Has the peer sent something (or hung up) that nobody has read yet? Never blocks.
    ``if_closed`` answers for a socket closed under us (each caller knows what that means)."""
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        # poll, not select: select cannot watch descriptors >= 1024 (a busy server has them)
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return if_closed


def _send_buffers(sock: socket.socket, buffers: list) -> int:
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    total = sum(v.nbytes for v in views)
    if isinstance(sock, ssl.SSLSocket):  # SSL sockets have no sendmsg; each sendall still avoids a join
        for view in views:
            sock.sendall(view)
        return total
    index = 0
    while index < len(views):
        sent = sock.sendmsg(views[index:index + _IOV_MAX])
        while sent:
            head = views[index]
            if sent >= head.nbytes:
                sent -= head.nbytes
                index += 1
            else:
                views[index] = head[sent:]
                sent = 0
    return total


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "peer"


# ---------------------------------------------------------------------------------------------
# Receive-buffer pool
# ---------------------------------------------------------------------------------------------


class NoBufferFree(NetworkError):
    """No receive buffer came free before the deadline."""


class BufferPool:
    """A bounded set of reusable receive buffers.

    The server receives each client's update into a buffer from here, folds it into the running
    aggregate, and gives the buffer back. At most ``size`` buffers ever exist, so server memory is
    O(model x size) however many clients send at once: the others wait in ``acquire`` (their bytes
    wait in the kernel's socket buffers, which is TCP's own back-pressure). ``max_nbytes`` (the
    model's frame) caps every buffer: a bigger request is refused, so no buffer ever grows to
    what a peer declared.
    """

    def __init__(self, size: int = 2, max_nbytes: int | None = None):
        if size < 1:
            raise ValueError(f"buffer pool size must be at least 1; received {size}")
        self.size = size
        self.max_nbytes = max_nbytes
        self._free: list[np.ndarray] = []
        self._created = 0
        self._in_use = 0
        self.peak_in_use = 0
        self.largest = 0  # bytes of the biggest buffer ever made
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, timeout: float | None = None) -> np.ndarray:
        if self.max_nbytes is not None and nbytes > self.max_nbytes:
            raise ProtocolError(f"a receive buffer of {nbytes} bytes was asked for; the largest "
                                f"message expected is {self.max_nbytes} bytes")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                for i, buf in enumerate(self._free):
                    if buf.nbytes >= nbytes:
                        self._free.pop(i)
                        return self._lend(buf, nbytes)
                if self._created < self.size:
                    self._created += 1
                    return self._lend(self._new(nbytes), nbytes)
                if self._free:  # every idle buffer is too small: replace one
                    self._free.pop(0)
                    return self._lend(self._new(nbytes), nbytes)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise NoBufferFree(f"no receive buffer free after {timeout:g} s")
                self._cond.wait(remaining)

    def _new(self, nbytes: int) -> np.ndarray:
        self.largest = max(self.largest, nbytes)
        return np.empty(nbytes, dtype=np.uint8)

    def _lend(self, buf: np.ndarray, nbytes: int) -> np.ndarray:
        self._in_use += 1
        self.peak_in_use = max(self.peak_in_use, self._in_use)
        # Hand out an exact-size view; release() finds the owner through .base.
        return buf[:nbytes]

    def release(self, view: np.ndarray) -> None:
        owner = view.base if view.base is not None else view
        with self._cond:
            self._in_use -= 1
            self._free.append(owner)
            self._cond.notify()

    @property
    def in_use(self) -> int:
        return self._in_use


# ---------------------------------------------------------------------------------------------
# Connecting and listening
# ---------------------------------------------------------------------------------------------


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    try:
        sock = socket.create_server((host, port), backlog=backlog, reuse_port=False)
    except OSError as exc:
        raise NetworkError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise NetworkError(f"timed out connecting to {host}:{port}") from None
    except OSError as exc:
        raise NetworkError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None


def local_addresses() -> list[str]:
    """This machine's IPv4 interface addresses, read locally (no packet is sent anywhere)."""
    addresses: list[str] = []
    try:
        import fcntl
        import struct

        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _, name in socket.if_nameindex():
                request = struct.pack("256s", name.encode()[:15])
                with contextlib.suppress(OSError):
                    reply = fcntl.ioctl(probe.fileno(), 0x8915, request)  # SIOCGIFADDR
                    addresses.append(socket.inet_ntoa(reply[20:24]))
        finally:
            probe.close()
    except (ImportError, OSError):
        with contextlib.suppress(OSError):
            addresses = socket.gethostbyname_ex(socket.gethostname())[2]
    return list(dict.fromkeys(addresses))


# ---------------------------------------------------------------------------------------------
# TLS (standard library ssl)
# ---------------------------------------------------------------------------------------------


def server_ssl_context(certfile, keyfile=None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"cannot load the TLS certificate {certfile} / key {keyfile}: {exc}") from None
    return context


def client_ssl_context(cafile=None) -> ssl.SSLContext:
    """Verifies the server's certificate against ``cafile`` (or the system's CAs) and name."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"cannot load the TLS CA file {cafile}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_handshake(sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
                  server_hostname: str | None = None, timeout: float = 10.0) -> ssl.SSLSocket:
    """Wrap and handshake within ``timeout``; runs on the connection's own thread, never the
    accept loop, so a silent peer cannot stall other connections."""
    sock.settimeout(timeout)
    try:
        wrapped = context.wrap_socket(sock, server_side=server_side,
                                      server_hostname=None if server_side else server_hostname,
                                      do_handshake_on_connect=False)
        wrapped.do_handshake()
        return wrapped
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(f"TLS: the server's certificate was not trusted "
                       f"({exc.verify_message}); pass the right ssl_cafile") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TLSError(f"TLS handshake failed: {reason}") from None
