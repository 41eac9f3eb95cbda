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
import socket
import ssl
import threading
import time
from collections.abc import Callable

import numpy as np

from . import protocol
from ..deadline import NEVER, Deadline
from ..errors import ConnectionClosed, InvalidValue, NetworkError, ProtocolError
from .buffer_pool import BufferPool, NoBufferFree
from .pacing import PacedFrame, UploadPace, gate_size, receive_paced, wait_until_queued
from .protocol import Conversation, FramePrefix, FrameLimits, Message, Role
from .sockets import (connect, has_pending_input, input_arrives, listen, local_addresses,
                      tune_socket)
from .tls import client_ssl_context, server_ssl_context, tls_handshake

# Re-exported: the transport is the one import its users need (the pool, sockets and TLS live
# in modules of their own).
__all__ = ["Allocator", "BodyWatcher", "BufferPool", "Channel", "Expectation", "NoBufferFree",
           "client_ssl_context", "connect", "has_pending_input", "listen", "local_addresses",
           "server_ssl_context", "tls_handshake", "tune_socket"]

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
        self._deadline: Deadline = NEVER
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

    def wait_for_message(self, deadline: Deadline) -> bool:
        """Block until the peer's next message begins (or it hangs up: the next ``receive``
        says so), or the deadline passes (False). A round's deadline is for the reply to
        begin: the session notices a client that missed it at that instant, and still reads
        a late reply whole, so the client keeps its connection."""
        return input_arrives(self.sock, deadline, if_closed=True)

    def receive(self, timeout: float | None = None,
                allocate: Allocator = _default_allocator, deadline: Deadline | float | None = None,
                on_body: BodyWatcher | None = None, expect: Expectation | None = None,
                pace: UploadPace | None = None) -> Message:
        """Receive one whole message. ``allocate(nbytes)`` supplies the body buffer (a pool).

        ``timeout`` bounds each wait for bytes; ``deadline`` (a :class:`~pyfed.deadline.Deadline`,
        or a ``time.monotonic()`` value) bounds the whole message, so a peer that dribbles one
        byte at a time cannot hold the connection open forever. (A round's deadline is for the
        reply to *begin*: see :meth:`wait_for_message`; a late reply is still read whole.)

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
        deadline = self._deadline = Deadline.of(deadline)
        if deadline.bounded:
            timeout = deadline.remaining()
        with self._mapped_errors("receiving a message", timeout):
            prefix_bytes = self._recv_exactly(bytearray(protocol.PREFIX_SIZE))
            prefix = protocol.parse_prefix(prefix_bytes, self.limits)
            self.conversation.check(prefix.kind)
            frame = None if pace is None else PacedFrame(self.peer, prefix, pace, deadline.at)
            if frame is not None:
                self._deadline = Deadline.at_time(frame.until)
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
            if self._deadline.bounded:
                if self._deadline.expired():
                    raise socket.timeout()
                self.sock.settimeout(self._deadline.remaining())
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
