"""The gateway's accept loop: one thread per connection, a cap on open connections, and
running out of descriptors, memory or threads survived (backing off, logged once per episode).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time

from ..wire import messages, protocol
from .fd_limits import open_file_limit

logger = logging.getLogger("pyfed")


# accept() failures that mean "out of a resource for now" (descriptors, kernel memory): the
# pending connection stays in the backlog, so the loop backs off instead of spinning.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


class AcceptLoop:
    """The accepting half of :class:`~pyfed.server.gateway.Gateway`, which owns the state it
    uses (the listener, the lock, the connection count and cap) and serves each connection
    (``_serve_connection``)."""

    def _accept_loop(self) -> None:
        listener = self._listener
        listener.settimeout(0.5)  # so the loop notices shutdown
        backoff = _BACKOFF_FIRST
        while not self._stopping.is_set():
            try:
                sock, addr = listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                if exc.errno in _RESOURCE_ERRNOS:
                    self._short(f"{exc.strerror or exc} (errno {errno.errorcode.get(exc.errno)})")
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                else:  # e.g. ECONNABORTED: that one connection is gone, the listener is fine
                    logger.warning("accept failed: %s; continuing", exc.strerror or exc)
                    self._stopping.wait(0.01)
                continue
            with self.lock:
                full = self.connections >= self.max_connections
                if not full:
                    self.connections += 1
            if full:
                self._refuse_capacity(sock, addr)
                continue
            thread = threading.Thread(target=self._serve_connection, args=(sock, addr),
                                      name=f"pyfed-conn-{addr[0]}:{addr[1]}", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": out of threads or memory
                with self.changed:
                    self.connections -= 1
                    self.changed.notify_all()
                with contextlib.suppress(OSError):
                    sock.close()
                self._short(f"cannot start a connection thread ({exc})")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_FIRST
            self._recovered()  # a connection is being served: whatever ran out is back
            with self.lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _short(self, what: str) -> None:
        """Log running out of a resource once per episode, not once per failed accept."""
        self._short_count += 1
        if self._short_of is None:
            self._short_of = what
            self._short_since = time.monotonic()
            limit = open_file_limit()
            logger.warning("accepting connections paused: %s; %d connections open, open-file "
                           "limit %s, max_connections=%d; the server keeps running and retries "
                           "(backing off up to %g s)", what, self.connections,
                           "none" if limit is None else limit, self.max_connections, _BACKOFF_MAX)

    def _recovered(self) -> None:
        if self._short_of is not None:
            logger.warning("accepting connections again after %.1f s (%d failed attempts: %s)",
                           time.monotonic() - self._short_since, self._short_count, self._short_of)
            self._short_of = None
            self._short_count = 0

    def _refuse_capacity(self, sock: socket.socket, addr) -> None:
        self.refused_for_capacity += 1
        if self.refused_for_capacity in (1, 10, 100) or self.refused_for_capacity % 1000 == 0:
            logger.warning("refusing connection from %s:%s: %d connections open (max_connections=%d%s)"
                           " [%d refused so far]", addr[0], addr[1], self.max_connections,
                           self.max_connections, self._derivation(), self.refused_for_capacity)
        # Best effort, never blocking the accept loop: a plain (non-TLS) peer learns why.
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            if self.ssl_context is None:
                sock.send(protocol.encode_bytes(messages.Error(
                    reason=f"server full: max_connections={self.max_connections} reached",
                    code="server_full")))
        with contextlib.suppress(OSError):
            sock.close()

    def _derivation(self) -> str:
        if not self.max_connections_derived:
            return ""
        return (f", from the open-file limit {open_file_limit()}: raise it with ulimit -n or "
                "pass max_connections")
