"""Is a peer still there? Asked of a socket without reading from it."""

from __future__ import annotations

import select
import socket


_HUNG_UP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


def hung_up(sock: socket.socket) -> bool:
    """Has the peer closed or reset this connection? Asked without consuming a byte, from any
    thread (the connection's own thread may be reading it), and without blocking."""
    try:
        poller = select.poll()  # poll, not select: descriptors >= 1024 are common here
        poller.register(sock.fileno(), select.POLLIN | _HUNG_UP)
        events = poller.poll(0)
    except (OSError, ValueError):  # closed under us
        return True
    if not events:
        return False
    mask = events[0][1]
    if mask & _HUNG_UP:  # POLLRDHUP (Linux) says "the peer sent FIN" even with data queued
        return True
    if hasattr(select, "POLLRDHUP"):
        return False  # readable data, no FIN: alive
    try:  # elsewhere: a readable socket at EOF peeks 0 bytes (raw TCP, beneath any TLS layer)
        return socket.socket.recv(sock, 1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
