"""The server's front door: accepting, TLS, the handshake, and the registry of clients.

As in ``socketserver``'s threading servers, every connection gets its own thread, and whatever
goes wrong with one connection (garbage, a wrong token, a timeout, a bug) is logged with its
address and ends with that socket closed in a ``finally``: it never reaches the accept loop or
a round. The TLS and PyFed handshakes run on the connection's thread under one deadline, so a
peer that sends nothing, or dribbles bytes, is gone after ``handshake_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable

from ..wire import auth, messages, protocol
from ..deadline import Deadline, wait_until
from ..errors import InvalidValue, PyFedError
from .accept_loop import AcceptLoop
from .fd_limits import default_max_connections
from .handshake import MAX_NAME_LENGTH, Refused, ServerHandshake
from .liveness import hung_up
from ..wire.layout import Layout
from ..wire.pacing import UploadPace
from ..wire.protocol import HANDSHAKE_LIMITS, Role
from ..safe_text import printable
from .session import ClientSession
from ..wire.transport import BufferPool, Channel, listen, tls_handshake

logger = logging.getLogger("pyfed")

# Re-exported: the gateway's users import these from here (the accept loop, the handshake and
# the liveness probe live in modules of their own).
__all__ = ["MAX_NAME_LENGTH", "Gateway", "Refused", "hung_up", "waiting_line"]


class Gateway(AcceptLoop, ServerHandshake):
    def __init__(self, *, host: str, port: int, welcome: Callable[[str], messages.Welcome],
                 spec, spec_hash: str, pool: BufferPool, token: bytes | None = None,
                 ssl_context: ssl.SSLContext | None = None, handshake_timeout: float = 10.0,
                 max_connections: int | None = None,
                 max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 layout: Layout | None = None, upload_pace: UploadPace | None = None):
        self.host = host
        self.port = port
        self.welcome = welcome
        self.spec = spec
        self.spec_hash = spec_hash
        self.pool = pool
        self.token = token
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        # None: as many as the open-file limit leaves room for (see pyfed.wire.limits).
        self.max_connections_derived = max_connections is None
        self.max_connections = default_max_connections() if max_connections is None else max_connections
        self.max_message_bytes = max_message_bytes
        self.layout = layout  # what a FIT_RESULT must carry, checked on its header
        self.upload_pace = upload_pace or UploadPace()
        self.sessions: dict[str, ClientSession] = {}
        self._secrets: dict[str, str] = {}  # name -> reconnect secret, while the name is live
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.finished = False
        self.connections = 0  # open connections, handshaking or welcomed
        self.refused_for_capacity = 0
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._short_of: str | None = None  # the resource accept() ran out of, while backing off
        self._short_since = 0.0
        self._short_count = 0

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> int:
        # A backlog sized for the expected crowd: a thousand clients connecting at once
        # otherwise overflow the kernel's queue and wait for SYN retries.
        self._listener = listen(self.host, self.port,
                                backlog=max(128, min(self.max_connections, socket.SOMAXCONN)))
        self.port = self._listener.getsockname()[1]
        thread = threading.Thread(target=self._accept_loop, name="pyfed-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self.port

    def stop(self) -> None:
        self._stopping.set()  # not `finished`: a stopped run may be resumed, and clients told so
        with self.lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            session.end("the server is shutting down")  # wakes a thread waiting for a job
            session.channel.close()  # unblocks a thread still waiting on this client
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        deadline = Deadline(5.0)  # one budget for all threads, not 5 s each
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=deadline.remaining())

    def close_to_new_clients(self) -> list[ClientSession]:
        """Training is over: refuse newcomers ("training has finished") and return the sessions
        still connected, which are owed a FINISH."""
        with self.lock:
            self.finished = True
            return list(self.sessions.values())

    def snapshot(self, idle_only: bool = False) -> dict[str, ClientSession]:
        with self.lock:
            return {name: session for name, session in self.sessions.items()
                    if session.idle or not idle_only}

    # -- one connection's thread (accepted by AcceptLoop) -----------------------------------

    def _serve_connection(self, sock: socket.socket, addr) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        session = None
        channel = None
        try:
            deadline = Deadline(self.handshake_timeout)
            if self.ssl_context is not None:
                sock = tls_handshake(sock, self.ssl_context, server_side=True,
                                     timeout=self.handshake_timeout)
            channel = Channel(sock, Role.SERVER, HANDSHAKE_LIMITS, peer=peer)
            session = self._handshake(channel, deadline)
            if session is not None:
                session.serve()
        except PyFedError as exc:
            who = session.name if session else peer
            logger.warning("connection %s (%s) ended: %s", who, peer, printable(exc, 1000))
            if isinstance(exc, InvalidValue) and channel is not None:  # say which value, and why
                with contextlib.suppress(PyFedError):
                    channel.send_notice(messages.Error(reason=str(exc), code="invalid_value"))
        except Exception:  # a bug must not take the server down; log it with its traceback
            logger.exception("unexpected error serving %s", peer)
        finally:
            if session is not None:
                self._drop(session)
            if channel is not None:
                channel.close()
            else:
                with contextlib.suppress(OSError):
                    sock.close()
            with self.changed:
                self.connections -= 1
                self.changed.notify_all()

    # -- the registry -----------------------------------------------------------------------

    def _register(self, session: ClientSession, presented_secret) -> str:
        """Enter ``session`` under its name and return the name's reconnect secret.

        A name belongs to one live connection. Another HELLO may take it over only if it
        presents the secret the holder was given (the same client reconnecting, e.g. over a
        half-open connection the server still believes alive) or if the holder's socket has
        closed (a dead or restarted process); anyone else is refused and told who holds it.
        A takeover keeps the secret, so a client that lost the WELCOME carrying it still has it.
        """
        name = session.name
        with self.changed:
            if self.finished:
                raise Refused("finished", "training has finished; this server accepts no more clients")
            if self._stopping.is_set():  # a client reconnecting while the server goes down
                raise Refused("server_stopped", "the server is stopping (it may be resumed)")
            holder = self.sessions.get(name)
            secret = self._secrets.get(name)
            if holder is None:
                how = None
                secret = auth.new_reconnect_secret()
            elif auth.reconnect_secret_matches(secret, presented_secret):
                how = "reconnected"
            elif hung_up(holder.channel.sock):
                how = "closed"
                secret = auth.new_reconnect_secret()  # a new process: a new identity
            else:
                raise Refused("duplicate_name",
                              f"client name {name!r} is already connected (from {holder.address}); "
                              "choose another name")
            self.sessions[name] = session
            self._secrets[name] = secret
        if holder is not None:
            if how == "reconnected":
                # The same client (it holds the secret): the new connection takes over and
                # the old one's work is dropped.
                logger.warning("%r reconnected from %s; dropping its old connection from %s",
                               name, session.address, holder.address)
            else:
                logger.warning("%r joined from %s; its old connection from %s had closed",
                               name, session.address, holder.address)
            holder.end("replaced by a new connection")
            holder.channel.close()
        return secret

    def _drop(self, session: ClientSession) -> None:
        with self.changed:
            if self.sessions.get(session.name) is session:
                del self.sessions[session.name]
                self._secrets.pop(session.name, None)
                if not self.finished and not self._stopping.is_set():
                    logger.warning("%s (%s) disconnected", session.name, session.address)
            session.end("disconnected")
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float | None, announce: Callable[[str], None],
                 interval: float | None = None) -> None:
        """Until ``count`` clients are connected (at most ``timeout`` s). Says who is there and
        how many are missing when that changes, and again every ``interval`` s meanwhile."""
        shown = [-1]  # the count last announced
        lines: list[str] = []  # said outside the lock: a status callback may ask the gateway

        def enough() -> bool:  # called with the lock held
            if len(self.sessions) >= count:
                return True
            if len(self.sessions) != shown[0]:  # say it when it changes
                say_who_is_here()
            return False

        def say_who_is_here() -> None:  # called with the lock held
            shown[0] = len(self.sessions)
            lines.append(waiting_line(sorted(self.sessions), count))

        def sleep(seconds: float) -> None:  # called with the lock held
            if not lines:
                self.changed.wait(seconds)
                return
            said, lines[:] = list(lines), []
            self.changed.release()
            try:
                for line in said:
                    announce(line)
            finally:
                self.changed.acquire()  # then look again at once: a join may have come meanwhile

        with self.changed:  # a join or a drop notifies: the wait wakes at once
            if not wait_until(enough, Deadline(timeout), sleep=sleep, poll=1.0,
                              every=interval, tick=say_who_is_here):
                raise PyFedError(
                    f"only {len(self.sessions)} of {count} clients connected within "
                    f"{timeout:g} s ({', '.join(sorted(self.sessions)) or 'none'})")


def waiting_line(connected: list[str], count: int, shown: int = 10) -> str:
    """``waiting for clients: 1/3 connected (client_1) · 2 missing``; at most ``shown`` names."""
    names = ", ".join(printable(name, 60) for name in connected[:shown])
    if len(connected) > shown:
        names += f" and {len(connected) - shown} more"
    return (f"waiting for clients: {len(connected)}/{count} connected"
            f"{f' ({names})' if names else ''} · {count - len(connected)} missing")
