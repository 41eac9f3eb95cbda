"""One client connection on the server: its thread, its handshake, and the jobs it runs.

As in ``socketserver``'s thread-per-connection servers, everything that can go wrong with one
client is caught here, logged with the client's name and address, and ends with the socket
closed in a ``finally``; it never reaches the accept loop or the round.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from dataclasses import dataclass

from ..deadline import Deadline
from ..wire import messages
from ..errors import InvalidValue, PyFedError
from ..wire.layout import Layout, LayoutMismatch
from ..wire.messages import MessageKind
from ..wire.pacing import UploadPace
from .collect import Collector, UpdateRejected
from ..safe_text import printable
from ..wire.transport import BufferPool, Channel, NoBufferFree, has_pending_input

logger = logging.getLogger("pyfed")

# How often an idle connection's socket is checked: a client that hangs up between rounds is
# dropped within this, instead of being counted (and sampled) until a round finds it dead.
# Checks start fast after the handshake and after each job (garbage and hang-ups come then),
# and back off to IDLE_CHECK_SECONDS, so a thousand idle clients cost almost nothing.
IDLE_CHECK_SECONDS = 0.5
IDLE_CHECK_FIRST = 0.02
IDLE_READ_TIMEOUT = 5.0


@dataclass
class RequestJob:
    """Send ``request`` (FIT or EVALUATE), wait for the reply, hand it to ``collector``."""

    collector: Collector
    request: messages.Message
    # The round's deadline. A client with no answer begun by then has failed the round (the
    # session says so at that instant); a reply whose body gets no pool buffer by then cannot
    # count: it is read through a scratch buffer and refused, so a late client keeps its
    # connection and no buffer is waited for past it.
    deadline: Deadline
    # With compression: the global-model version this request carries, which the client
    # holds once it is sent (the next int8 delta is taken from it).
    model_version: int | None = None

    def __post_init__(self) -> None:
        self.deadline = Deadline.of(self.deadline)  # a time.monotonic() value or None works too


@dataclass
class FinishJob:
    weights: list
    reason: str


class ClientSession:
    """A connected, welcomed client. Its own thread owns the channel; others post jobs."""

    def __init__(self, name: str, channel: Channel, pool: BufferPool, evaluates: bool = False,
                 layout: Layout | None = None, pace: UploadPace | None = None):
        self.name = name
        self.evaluates = evaluates  # the client has held-out data for federated evaluation
        self.channel = channel
        self.pool = pool
        self.layout = layout  # the arrays a FIT_RESULT must carry (None: not checked)
        self.pace = pace  # how fast a reply must arrive once it has begun (None: no bound)
        self.jobs: queue.Queue = queue.Queue()
        self.alive = True
        self.busy = False
        self.held_version = 0  # compression: the global-model version this client holds
        self._alive_lock = threading.Lock()
        self.finished = threading.Event()

    @property
    def address(self) -> str:
        return self.channel.peer

    def post(self, job) -> None:
        """Queue a job; a job for a session that has ended fails at once (nobody would run it)."""
        with self._alive_lock:
            if self.alive:
                self.jobs.put(job)
                return
        if isinstance(job, RequestJob):
            job.collector.fail(self.name, "disconnected")

    def notify_stop(self, reason: str) -> None:
        """Out of band, from the round's thread: tell the client the server is going away."""
        with contextlib.suppress(PyFedError):
            self.channel.send_notice(messages.Error(reason=reason, code="server_stopped"))
        self.end(reason)
        self.channel.close()

    def end(self, reason: str) -> None:
        """Mark the session over, fail every job still queued (no round waits for it), and
        wake its thread if it is waiting for a job."""
        with self._alive_lock:
            self.alive = False
        self.finished.set()  # nobody waits for FINISH to reach an ended session
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, RequestJob):
                job.collector.fail(self.name, reason)
        self.jobs.put(None)

    @property
    def idle(self) -> bool:
        """Ready for a round: nothing queued or in progress (not still working on a round that
        closed at its deadline), and nothing unasked-for waiting on its socket."""
        return self.alive and not self.busy and self.jobs.empty() and not self._unsolicited()

    def _unsolicited(self) -> bool:
        """Has the client sent something, or hung up, while nobody asked it anything? (A
        socket closed under us counts: reading it ends the session.)"""
        return has_pending_input(self.channel.sock, if_closed=True)

    def _read_unsolicited(self) -> None:
        """Between jobs a client may only PING; anything else (a hang-up, an early FIT_RESULT,
        garbage) ends the session now, instead of when the next round finds it."""
        # The state table judges it on its prefix; a whole PING or ERROR is due within the
        # timeout, so an idle peer cannot dribble one forever.
        message = self.channel.receive(deadline=Deadline(IDLE_READ_TIMEOUT))
        if isinstance(message, messages.Error):
            raise PyFedError(f"{self.name} ended the session: {printable(message.reason)}")

    def serve(self) -> None:
        """Run jobs until FINISH, shutdown (``None``) or a failure (which propagates)."""
        poll = IDLE_CHECK_FIRST
        while True:
            try:
                job = self.jobs.get(timeout=poll)
            except queue.Empty:
                if self._unsolicited():
                    self._read_unsolicited()
                poll = min(poll * 2, IDLE_CHECK_SECONDS)
                continue
            poll = IDLE_CHECK_FIRST
            if job is None:
                return
            if isinstance(job, FinishJob):
                self.channel.send(messages.Finish(weights=tuple(job.weights), reason=job.reason))
                self.finished.set()
                return
            if job.collector.closed:  # its round ended while this job waited: don't train on it
                job.collector.fail(self.name, "the round closed before it could start")
                continue
            self.busy = True
            try:
                self._request(job)
            finally:
                self.busy = False
                job = None  # don't keep this round's weights alive until the next job

    def _request(self, job: RequestJob) -> None:
        collector = job.collector
        try:
            if self._unsolicited():  # e.g. a FIT_RESULT sent before any FIT: never count it
                self._read_unsolicited()
            collector.sent(self.channel.send(job.request))
            if job.model_version is not None:
                self.held_version = job.model_version
        except PyFedError as exc:
            collector.fail(self.name, f"could not send {job.request.KIND.name}: {exc}")
            raise
        leased = []
        late = []

        def allocate(nbytes):
            """A pool buffer, waited for until the round's deadline; after it, None: the
            result cannot count, so its body is read and dropped without holding one."""
            if not collector.closed and not job.deadline.expired():
                try:
                    buffer = self.pool.acquire(nbytes, timeout=job.deadline.remaining())
                except NoBufferFree:
                    pass
                else:
                    leased.append(buffer)
                    return buffer
            late.append(nbytes)
            return None

        if not self.channel.wait_for_message(job.deadline):
            # The round ends now without this client; a late answer is still read (and
            # refused) below, so the client keeps its connection for the next round.
            collector.fail(self.name, f"no answer within the round's {job.deadline.seconds:g} s "
                                      "deadline")
        before = self.channel.bytes_received
        scan = collector.value_scan()
        try:
            try:
                reply = self.channel.receive(
                    allocate=allocate, on_body=scan, pace=self.pace,
                    expect=lambda *header: self._expect(*header, collector=collector))
            except InvalidValue as exc:  # refused on its header (the body was skipped)
                self.busy = False
                collector.received(self.channel.bytes_received - before)
                collector.fail(self.name, f"update rejected: {exc}")
                self._reject(collector, exc)
                return
            finally:
                # Free for the next round before the collector hears the reply: the round
                # thread wakes on that, and must not find this client still "busy".
                self.busy = False
            collector.received(self.channel.bytes_received - before)
            if late:
                reason = f"arrived after round {collector.server_round} closed; not counted"
                collector.fail(self.name, reason)
                logger.warning("round %d: %s result from %s dropped: %s", collector.server_round,
                               collector.kind, self.name, reason)
                self.channel.send(messages.Error(reason=f"update rejected: {reason}",
                                                 code="update_rejected", fatal=False))
                return
            if isinstance(reply, messages.Error):
                reason = printable(reply.reason)
                collector.fail(self.name, f"client reported: {reason}")
                if reply.fatal:
                    raise PyFedError(f"{self.name} ended the session: {reason}")
                return
            try:
                collector.add(self.name, reply, scan)  # the state table guarantees its kind
            except UpdateRejected as exc:
                self._reject(collector, exc)
        except Exception as exc:  # a bug too: the round hears of it instead of waiting
            collector.fail(self.name, str(exc) if isinstance(exc, PyFedError)
                           else f"{type(exc).__name__}: {exc}")
            if isinstance(exc, LayoutMismatch):  # refused unread: say why, then hang up
                with contextlib.suppress(PyFedError):
                    self.channel.send(messages.Error(reason=f"update rejected: {exc}",
                                                     code="update_rejected", fatal=True))
            raise
        finally:
            for buffer in leased:  # the collector folded (or dropped) the update: reuse its buffer
                self.pool.release(buffer)

    def _reject(self, collector: Collector, problem: Exception) -> None:
        """Tell the client why its result was refused; its session goes on."""
        logger.warning("round %d: %s result from %s rejected: %s", collector.server_round,
                       collector.kind, self.name, problem)
        self.channel.send(messages.Error(reason=f"update rejected: {problem}",
                                         code="update_rejected", fatal=False))
    def _expect(self, prefix, fields, descriptors, collector=None) -> None:
        """Refuse a FIT_RESULT on its header unless its arrays are the model's, before a byte
        of its body is read or a buffer taken for it (``Channel.receive``'s ``expect``); the
        same for a reply whose arrays the collector knows (a secure round's masked vector)."""
        layouts = getattr(collector, "reply_layouts", None) or {}
        if prefix.kind in layouts:
            layouts[prefix.kind].check(prefix.kind.name, descriptors, prefix.body_length)
        elif layouts and descriptors:  # arrays, but not the ones this request asked for
            raise LayoutMismatch(f"{prefix.kind.name} is not the answer expected: "
                                 f"{' or '.join(k.name for k in layouts)}")
        elif prefix.kind is MessageKind.FIT_RESULT and self.layout is not None:
            self.layout.check("FIT_RESULT", descriptors, prefix.body_length)
