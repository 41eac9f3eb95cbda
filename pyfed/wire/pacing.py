"""How fast a body must arrive once its frame has begun, so a slow peer cannot hold a buffer.

The server receives each update into a buffer from a small pool (O(model) bytes each), so a peer
that starts an upload and then stalls, or dribbles a byte a second, must not keep one. A paced
body (``Channel.receive(pace=...)``) is received in three steps:

1. Wait, holding nothing, until its first chunk (:attr:`UploadPace.gate_bytes`, or the whole
   body when smaller) is queued in the kernel: poll() with ``SO_RCVLOWAT``, so the wait costs no
   wake-ups. A dribbler never gets past this; its bytes wait in its own socket buffer.
2. Take a buffer (the caller's ``allocate``, e.g. the pool, with the round's deadline). Time spent
   waiting for one is not counted against the peer.
3. Receive into it. A pause longer than ``stall_timeout`` loses the buffer (and the connection,
   whose stream is then mid-frame). On plain sockets the pause is bounded by the kernel
   (``SO_RCVTIMEO``), set once per body, so a chunk costs one ``recv_into`` as before.

Throughout, the frame's own time is bounded: the rest of a frame (header and body) must arrive
within ``stall_timeout + size / min_rate`` seconds of its prefix, plus any wait for a buffer.
"""

from __future__ import annotations

import array
import contextlib
import errno
import math
import select
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from ..errors import ConfigurationError, ConnectionClosed, NetworkError
from .protocol import FramePrefix

try:  # Linux and the BSDs; elsewhere the gate is skipped (a buffer is taken at once)
    import fcntl
    import termios
    _FIONREAD = termios.FIONREAD
except (ImportError, AttributeError):  # pragma: no cover - Windows
    fcntl = None
    _FIONREAD = None

# The first chunk of a body that must be queued before it gets a buffer. Below the kernel's
# initial TCP receive window (64 KiB on Linux's defaults, tcp_rmem 131072 at half overhead), so
# an honest sender gets there without our reading a byte, in a few round trips; a peer sending
# one byte a second would need 18 hours. Capped at a quarter of the socket's receive buffer on
# each use, so the kernel never has to grow the buffer (or clamp the window) to hold it.
GATE_BYTES = 64 << 10

# Defaults, also FL_Server's. 256 KiB/s (2 Mbit/s) is below common uplinks, so an honest client
# on a slow home line still gets a 21.6 MB update through (in at most 5 + 82 s); a peer must
# spend that bandwidth to keep a buffer busy. 5 s without a single byte, once a buffer is held,
# means several TCP retransmission timeouts in a row: a dead or hostile peer, not a slow one.
MIN_UPLOAD_RATE = 256 << 10
UPLOAD_STALL_TIMEOUT = 5.0

_TIMEVAL = struct.Struct("ll")
if hasattr(select, "poll"):
    _POLL_EVENTS = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)


@dataclass(frozen=True)
class UploadPace:
    min_rate: float = MIN_UPLOAD_RATE  # bytes per second, averaged over the frame
    stall_timeout: float = UPLOAD_STALL_TIMEOUT  # seconds: the grace, and the longest pause
    gate_bytes: int = GATE_BYTES

    def __post_init__(self) -> None:
        for label, value in (("min_upload_rate", self.min_rate),
                             ("upload_stall_timeout", self.stall_timeout)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ConfigurationError(f"{label} must be a positive number; received {value!r}")
        if not isinstance(self.gate_bytes, int) or self.gate_bytes < 1:
            raise ConfigurationError(f"gate_bytes must be a positive integer; received "
                                     f"{self.gate_bytes!r}")

    def allowance(self, nbytes: int) -> float:
        """Seconds the peer has for ``nbytes`` once their frame has begun."""
        return self.stall_timeout + nbytes / self.min_rate

    def describe(self) -> str:
        return (f"upload_stall_timeout={self.stall_timeout:g} s, "
                f"min_upload_rate={self.min_rate:g} bytes/s")


def queued_bytes(sock: socket.socket) -> int:
    """Bytes waiting to be read: in the kernel (FIONREAD) plus TLS's already decrypted ones."""
    pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
    if fcntl is None:
        return pending
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), _FIONREAD, count, True)
    return pending + count[0]


def gate_size(sock: socket.socket, body_length: int, pace: UploadPace) -> int:
    try:
        receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:
        receive_buffer = 4 * pace.gate_bytes
    return max(1, min(body_length, pace.gate_bytes, receive_buffer // 4))


def wait_until_queued(sock: socket.socket, want: int, until: float) -> bool:
    """Wait until ``want`` bytes are queued, or there is another reason to read now: the peer
    closed or reset, or the kernel cannot queue more without a read (memory pressure, a closed
    window). False if ``until`` (a ``time.monotonic()`` value) passed first."""
    if fcntl is None or not hasattr(select, "poll"):
        return True
    if sock.fileno() < 0:
        raise OSError(errno.EBADF, "the socket was closed")  # by another thread, e.g. at stop
    if queued_bytes(sock) >= want:
        return True  # the usual case for an honest sender: one ioctl, no wait
    lowat = max(1, want - (sock.pending() if isinstance(sock, ssl.SSLSocket) else 0))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        exact = True  # poll() now reports readable only at `lowat` bytes (or the reasons above)
    except (OSError, AttributeError):
        exact = False
    poller = select.poll()
    poller.register(sock.fileno(), _POLL_EVENTS)
    try:
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            events = poller.poll(math.ceil(remaining * 1000))
            if not events:
                continue
            if exact or events[0][1] & ~(select.POLLIN | select.POLLPRI):
                return True
            if queued_bytes(sock) >= want:
                return True
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))  # no SO_RCVLOWAT: don't spin
    finally:
        if exact:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """The kernel's own bound on one blocking receive (0: none), for a plain blocking socket."""
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    if seconds > 0 and whole == 0 and micro == 0:
        micro = 1  # a zero timeval would mean "wait forever"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(whole, micro))


class PacedFrame:
    """One frame's clock under an :class:`UploadPace`: the rest of the frame is due by
    ``until`` (moved on by any wait for a buffer), and the errors name the rule broken."""

    def __init__(self, peer: str, prefix: FramePrefix, pace: UploadPace,
                 deadline: float | None):
        self.peer = peer
        self.prefix = prefix
        self.pace = pace
        self.started = time.monotonic()
        self.allowed = pace.allowance(prefix.header_length + prefix.body_length)
        self.until = self.started + self.allowed
        if deadline is not None:
            self.until = min(self.until, deadline)
        self.done = 0  # body bytes received by earlier pieces (a drained body comes in several)

    def body_received(self, in_this_piece: int) -> int:
        return self.done + in_this_piece

    def too_slow(self, part: str, received: int | None = None) -> NetworkError:
        got = "" if received is None else f" ({received} of {self.prefix.body_length} body bytes)"
        return NetworkError(
            f"{self.prefix.kind.name} from {self.peer} too slow: its {part} did not "
            f"arrive within {self.allowed:.1f} s of its prefix{got}; a frame may take "
            f"upload_stall_timeout + size / min_upload_rate ({self.pace.describe()})")

    def stalled(self, received: int) -> NetworkError:
        return NetworkError(
            f"{self.prefix.kind.name} from {self.peer} stalled: nothing for "
            f"{self.pace.stall_timeout:g} s after {received} of {self.prefix.body_length} body "
            f"bytes (upload_stall_timeout={self.pace.stall_timeout:g} s)")


def receive_paced(sock: socket.socket, view: memoryview, progress, frame: PacedFrame) -> None:
    """Fill ``view`` under ``frame``'s rules. On a plain socket the kernel bounds each wait
    (SO_RCVTIMEO, set once here), so a chunk costs one ``recv_into`` and a clock read, as
    an unpaced blocking receive does; TLS sockets (no SO_RCVTIMEO under OpenSSL) use
    Python's timeout per chunk."""
    plain = not isinstance(sock, ssl.SSLSocket)
    stall = frame.pace.stall_timeout
    total = len(view)
    kernel_wait = stall
    if plain:
        sock.settimeout(None)
        set_receive_timeout(sock, stall)
    try:
        while len(view):
            remaining = frame.until - time.monotonic()
            if remaining <= 0:
                raise frame.too_slow("body", received=frame.body_received(total - len(view)))
            wait = min(stall, remaining)
            if not plain:
                sock.settimeout(wait)
            elif wait < kernel_wait:  # only near the frame's deadline
                kernel_wait = wait
                set_receive_timeout(sock, wait)
            try:
                received = sock.recv_into(view)
            except (BlockingIOError, socket.timeout):  # nothing arrived for `wait` seconds
                got = frame.body_received(total - len(view))
                if wait < stall:
                    raise frame.too_slow("body", received=got) from None
                raise frame.stalled(got) from None
            if received == 0:
                got = total - len(view)
                raise ConnectionClosed(f"{frame.peer} closed the connection mid-frame "
                                       f"({got} of {total} bytes)")
            view = view[received:]
            if progress is not None:
                progress(total - len(view))
        frame.done += total
    finally:
        if plain:
            with contextlib.suppress(OSError):
                set_receive_timeout(sock, 0)
