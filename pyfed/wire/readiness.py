"""Waiting for a peer's next message to begin, until a :class:`~pyfed.deadline.Deadline`."""

from __future__ import annotations

import select
import socket
import ssl

from ..deadline import Deadline


def input_arrives(sock: socket.socket, deadline: Deadline, if_closed: bool = True) -> bool:
    """Block until the peer has sent something (or hung up) that nobody has read, or the
    deadline passes (False). ``if_closed`` answers for a socket closed under us."""
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes waiting: poll would not see them
        # poll, not select: select cannot watch descriptors >= 1024 (a busy server has them)
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        remaining = deadline.remaining()
        return bool(poller.poll(None if remaining is None else int(remaining * 1000) + 1))
    except (OSError, ValueError):
        return if_closed
