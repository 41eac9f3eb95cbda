"""The server's front door: accepting, TLS, the handshake, and the registry of clients.

As in ``socketserver``'s threading servers, every connection gets its own thread, and whatever
goes wrong with one connection (garbage, a wrong token, a timeout, a bug) is logged with its
address and ends with that socket closed in a ``finally``: it never reaches the accept loop or
a round. The TLS and PyFed handshakes run on the connection's thread under one deadline, so a
peer that sends nothing, or dribbles bytes, is gone after ``handshake_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

from ..wire import auth, messages, protocol
from ..errors import InvalidValue, PyFedError
from .fd_limits import default_max_connections, open_file_limit
from ..wire.layout import Layout
from ..wire.pacing import UploadPace
from ..wire.protocol import HANDSHAKE_LIMITS, VERSION, FrameLimits, Role
from ..safe_text import printable
from .session import ClientSession
from ..wire.spec import first_difference, spec_from_json
from ..wire.transport import BufferPool, Channel, listen, tls_handshake

logger = logging.getLogger("pyfed")

MAX_NAME_LENGTH = 128

# accept() failures that mean "out of a resource for now" (descriptors, kernel memory): the
# pending connection stays in the backlog, so the loop backs off instead of spinning.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


class Refused(PyFedError):
    """A handshake that ends with an ERROR to the peer; ``code`` is machine-readable. (The
    server's side of the refusal; the client raises HandshakeError or a subclass.)"""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Gateway:
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
        deadline = time.monotonic() + 5.0  # one budget for all threads, not 5 s each
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

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

    # -- accepting --------------------------------------------------------------------------

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

    def _serve_connection(self, sock: socket.socket, addr) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        session = None
        channel = None
        try:
            deadline = time.monotonic() + self.handshake_timeout
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

    # -- the handshake ----------------------------------------------------------------------

    def _handshake(self, channel: Channel, deadline: float) -> ClientSession | None:
        hello = channel.receive(deadline=deadline)  # the state table allows HELLO (or ERROR)
        if not isinstance(hello, messages.Hello):
            logger.warning("%s ended the handshake before HELLO: %s", channel.peer,
                           printable(getattr(hello, "reason", hello.KIND.name)))
            return None
        name = hello.client_name
        try:
            self._check_hello(hello)
            if self.token is not None:
                self._authenticate(channel, hello, deadline)
            # Only now: an unauthenticated peer must not learn the model's shapes, nor who is
            # connected from where (the duplicate-name check below).
            self._check_model(hello)
            welcome = self.welcome(name)  # before registering: a failure here leaves no trace
            session = ClientSession(name, channel, self.pool, evaluates=hello.evaluates,
                                    layout=self.layout, pace=self.upload_pace)
            secret = self._register(session, hello.reconnect_secret)
        except Refused as refusal:
            # %r: a name comes from the network and must not be able to forge log lines
            logger.warning("refused %r from %s: %s", name[:40], channel.peer, refusal.reason)
            with contextlib.suppress(PyFedError):
                channel.send(messages.Error(reason=refusal.reason, code=refusal.code))
            return None
        try:
            channel.send(dataclasses.replace(welcome, reconnect_secret=secret))
        except BaseException:
            self._drop(session)
            raise
        channel.limits = FrameLimits(max_body_bytes=self.max_message_bytes)
        logger.info("%s joined from %s", name if name.isidentifier() else repr(name), channel.peer)
        with self.changed:
            self.changed.notify_all()
        return session

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
            elif _hung_up(holder.channel.sock):
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

    def _check_hello(self, hello: messages.Hello) -> None:
        """What may be answered before authentication: nothing about the model or the clients."""
        name = hello.client_name
        if hello.protocol_version != VERSION:
            raise Refused("version", f"protocol version {hello.protocol_version} is not "
                                     f"supported; the server speaks {VERSION}")
        if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise Refused("bad_name", f"client name must be 1-{MAX_NAME_LENGTH} printable "
                                      f"characters; received {name[:40]!r}")

    def _check_model(self, hello: messages.Hello) -> None:
        if hello.spec_hash is not None and hello.spec_hash != self.spec_hash:
            detail = ""
            if hello.spec is not None:
                try:
                    detail = "; first difference: " + printable(
                        first_difference(self.spec, spec_from_json(hello.spec)), 400)
                except (TypeError, ValueError):
                    detail = "; the client's spec could not be read"
            raise Refused("model_mismatch",
                          f"model mismatch: the client's model has spec hash "
                          f"{printable(hello.spec_hash)}, the server trains {self.spec_hash}{detail}")

    def _authenticate(self, channel: Channel, hello: messages.Hello, deadline: float) -> None:
        if not auth.valid_nonce(hello.nonce):
            logger.warning("authentication failed from %s: the client sent no token", channel.peer)
            raise Refused("authentication_failed",
                          "authentication required: this server needs a token (token=..., "
                          f"${auth.TOKEN_ENVIRONMENT_VARIABLE} or --token-file)")
        server_nonce = auth.new_nonce()
        channel.send(messages.Challenge(nonce=server_nonce,
                                        proof=auth.server_proof(self.token, hello.nonce, server_nonce)))
        answer = channel.receive(deadline=deadline)
        if not isinstance(answer, messages.Auth):  # the state table leaves only ERROR here
            logger.warning("authentication failed from %s: the client gave up (%s)",
                           channel.peer, printable(answer.reason))
            raise PyFedError(f"{channel.peer} ended the handshake: {printable(answer.reason)}")
        expected = auth.client_proof(self.token, hello.nonce, server_nonce, hello.client_name)
        if not auth.proofs_match(expected, answer.proof):
            logger.warning("authentication failed from %s", channel.peer)
            raise Refused("authentication_failed", "authentication failed: wrong token")

    # -- the registry -----------------------------------------------------------------------

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
        deadline = None if timeout is None else time.monotonic() + timeout
        last_count = -1
        next_line = 0.0
        with self.changed:
            while len(self.sessions) < count:
                now = time.monotonic()
                if len(self.sessions) != last_count or (interval is not None and now >= next_line):
                    last_count = len(self.sessions)
                    next_line = now + (interval or 0.0)
                    announce(waiting_line(sorted(self.sessions), count))
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PyFedError(
                        f"only {len(self.sessions)} of {count} clients connected within "
                        f"{timeout:g} s ({', '.join(sorted(self.sessions)) or 'none'})")
                step = 1.0 if interval is None else max(0.01, min(1.0, next_line - now))
                self.changed.wait(step if remaining is None else min(step, remaining))


def waiting_line(connected: list[str], count: int, shown: int = 10) -> str:
    """``waiting for clients: 1/3 connected (client_1) · 2 missing``; at most ``shown`` names."""
    names = ", ".join(printable(name, 60) for name in connected[:shown])
    if len(connected) > shown:
        names += f" and {len(connected) - shown} more"
    return (f"waiting for clients: {len(connected)}/{count} connected"
            f"{f' ({names})' if names else ''} · {count - len(connected)} missing")


_HUNG_UP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


def _hung_up(sock: socket.socket) -> bool:
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
