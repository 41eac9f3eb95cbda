"""One client connection on the server: its thread, its handshake, and the jobs it runs.

As in ``socketserver``'s thread-per-connection servers, everything that can go wrong with one
client is caught here, logged with the client's name and address, and ends with the socket
closed in a ``finally``; it never reaches the accept loop or the round.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from . import messages
from .errors import PyFedError
from .protocol import FrameLimits
from .rounds import RoundCollector, UpdateRejected
from .transport import BufferPool, Channel

logger = logging.getLogger("pyfed")


@dataclass
class FitJob:
    collector: RoundCollector
    weights: list
    config: dict
    timeout: float | None


@dataclass
class FinishJob:
    weights: list
    reason: str


class ClientSession:
    """A connected, welcomed client. Its own thread owns the channel; others post jobs."""

    def __init__(self, name: str, channel: Channel, pool: BufferPool):
        self.name = name
        self.channel = channel
        self.pool = pool
        self.jobs: queue.Queue = queue.Queue()
        self.alive = True
        self.finished = threading.Event()

    @property
    def address(self) -> str:
        return self.channel.peer

    def post(self, job) -> None:
        self.jobs.put(job)

    def serve(self) -> None:
        """Run jobs until FINISH, shutdown (``None``) or a failure (which propagates)."""
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if isinstance(job, FinishJob):
                self.channel.send(messages.Finish(weights=tuple(job.weights), reason=job.reason))
                self.finished.set()
                return
            self._fit(job)

    def _fit(self, job: FitJob) -> None:
        collector = job.collector
        try:
            sent = self.channel.send(messages.Fit(round=collector.server_round,
                                                  weights=tuple(job.weights), config=job.config))
        except PyFedError as exc:
            collector.fail(self.name, f"could not send FIT: {exc}")
            raise
        collector.sent(sent)
        leased = []

        def allocate(nbytes):
            buffer = self.pool.acquire(nbytes)
            leased.append(buffer)
            return buffer

        before = self.channel.bytes_received
        try:
            reply = self.channel.receive(timeout=job.timeout, allocate=allocate)
            nbytes = self.channel.bytes_received - before
            if isinstance(reply, messages.FitResult):
                try:
                    collector.add(self.name, reply, nbytes)
                except UpdateRejected as exc:
                    logger.warning("round %d: update from %s rejected: %s",
                                   collector.server_round, self.name, exc)
                    self.channel.send(messages.Error(reason=f"update rejected: {exc}",
                                                     code="update_rejected", fatal=False))
            elif isinstance(reply, messages.Error):
                collector.fail(self.name, f"client reported: {reply.reason}")
                if reply.fatal:
                    raise PyFedError(f"{self.name} ended the session: {reply.reason}")
        except PyFedError as exc:
            collector.fail(self.name, str(exc))
            raise
        finally:
            for buffer in leased:
                self.pool.release(buffer)


def welcome_limits(max_message_bytes: int) -> FrameLimits:
    return FrameLimits(max_body_bytes=max_message_bytes)
