"""The asynchronous round driver (FedAsync, FedBuff): every free client always has a job.

A *version* is one update of the global model; ``rounds`` counts versions. The driver sends
FIT with the current version to every free client. Each result is checked on its connection's
thread and folded at once (:meth:`AsyncVersions.fold`): its staleness is the current version
minus the one its client trained from, and the strategy weighs it by that. When the strategy
says a version is ready (FedAsync: every update; FedBuff: every ``buffer_size``), it is
published under the driver's lock, and the client that brought it gets a new job at once.

The driver's own thread records each version as the synchronous driver records a round:
evaluation every ``evaluate_every`` versions, then ``on_round_end`` (History, TensorBoard, the
checkpoint, the progress line). Folds wait while a version is recorded, so a checkpoint holds
exactly that version, its weights and the strategy's state: a resumed run counts no update
twice, and loses none that was folded into a checkpointed version.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import Counter

from ..deadline import Deadline
from ..errors import UpdateRejected
from ..safe_text import printable
from ..wire import compression, messages
from .collect import FitCollector
from .evaluation import evaluate_centrally
from .session import RequestJob

logger = logging.getLogger("pyfed")


@dataclasses.dataclass
class PublishedVersion:
    """A version made by a fold, waiting for the driver's thread to record it."""

    number: int
    metrics: dict
    staleness: list[int]
    clients: list[str]


class Job(FitCollector):
    """One client's asynchronous job: the version it trains from, and that version's weights
    (``base``: the arrays sent in its FIT, so keeping them costs nothing more)."""

    def __init__(self, driver: "AsyncVersions", client: str, version: int, base, **options):
        # FIT carries version + 1 ("training toward version v+1"): rounds count from 1.
        super().__init__(version + 1, {client}, driver.strategy, driver.server.spec,
                         driver.server.max_examples, base=base, **options)
        self.driver = driver
        self.client = client
        self.version = version

    def _fold(self, update) -> None:
        self.driver.fold(self, update)

    def _report(self, client, result) -> None:
        try:
            super()._report(client, result)  # on_fit_result, the client's curves
        finally:
            self.driver.reported()

    @property
    def done(self) -> bool:
        return not self.pending


class AsyncVersions:
    """Versions ``server.first_round`` to ``server.rounds``, driven by arriving updates."""

    def __init__(self, server) -> None:
        self.server = server
        self.strategy = server.strategy
        self.evaluate_every = max(1, int(getattr(self.strategy, "evaluate_every", 1)))
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # a version published or recorded
        self.version = server.first_round - 1  # the current global model's version
        self.current: list = []  # its weights (what the clients decode, with compression)
        self.wire = None  # with compression: the current version's message (wire, meta)
        self.wire_version = 0  # and the downlink's number for it (what a client then holds)
        self.jobs: dict[str, Job] = {}
        self.unrecorded: PublishedVersion | None = None
        # Set when run() ends, even by a stop (Ctrl-C) or an error while a version is recorded:
        # folds waiting for that version then give up instead of waiting forever (holding
        # their job's lock, which closing the jobs needs).
        self.ended: str | None = None
        self.in_version: list[tuple[str, int]] = []  # (client, staleness) folded this version
        # Updates folded per client over the run: a resumed run goes on from its checkpoint's.
        so_far = server.history.last("client_updates")
        self.updates = Counter(so_far if isinstance(so_far, dict) else {})
        # Folded updates whose callbacks (on_fit_result) have not run yet: a version is recorded
        # only once they have, so no callback hears of an update after its version's
        # on_round_end (as the synchronous driver waits for its round's reports).
        self.reporting = 0
        self.version_started = time.monotonic()
        self.bytes_in = self.bytes_out = 0

    # ------------------------------------------------------------------------------------------
    # The driver's thread
    # ------------------------------------------------------------------------------------------

    def run(self) -> None:
        server = self.server
        self._publish(server.adapter.get_weights())
        self.strategy.begin(self.version + 1, self.current)
        next_line = time.monotonic() + server.progress_interval
        try:
            while True:
                if time.monotonic() >= next_line:
                    next_line = time.monotonic() + server.progress_interval
                    self._say_who_is_training()
                with self.lock:
                    if self.unrecorded is not None:
                        while self.reporting:  # folds wait meanwhile: these are all this version's
                            self.changed.wait(1.0)
                        self._record(self.unrecorded)
                        self.unrecorded = None
                        self.changed.notify_all()
                    if self.version >= server.rounds:
                        break
                self._dispatch()
                with self.lock:  # a fold or a finished job notifies; else look again soon
                    if self.unrecorded is None:
                        self.changed.wait(0.05)
        finally:
            reason = (f"training reached its last version ({server.rounds})"
                      if self.version >= server.rounds else
                      f"training stopped at version {self.version}")
            with self.lock:
                self.ended = reason
                self.changed.notify_all()
            for job in list(self.jobs.values()):  # late results are refused, not folded
                job.close(reason)

    def _say_who_is_training(self) -> None:
        training = sorted(self.jobs)
        shown = ", ".join(printable(name, 60) for name in training[:10])
        more = f" and {len(training) - 10} more" if len(training) > 10 else ""
        self.server.say(f"version {self.version}/{self.server.rounds} · {len(training)} "
                        f"clients training{f' ({shown}{more})' if training else ''} · "
                        f"{len(self.in_version)} updates toward version {self.version + 1}")

    def _dispatch(self) -> None:
        """A job for every idle client that has none."""
        server = self.server
        for name, job in list(self.jobs.items()):
            if job.done:
                self.bytes_in += job.bytes_in
                self.bytes_out += job.bytes_out
                del self.jobs[name]
                for client, reason in job.failures.items():  # as the sync driver says it
                    logger.warning("version %d: %s's job (from version %d) did not contribute: "
                                   "%s", self.version + 1, client, job.version, reason)
        idle = {name: session for name, session in server.gateway.snapshot(idle_only=True).items()
                if name not in self.jobs}
        if not idle:
            if not self.jobs:  # nobody connected is working: wait for enough clients
                server.gateway.wait_for(server.min_clients("min_available_clients"),
                                        server.wait_timeout, server.say, server.progress_interval)
            return
        with self.lock:
            # Read together: a fold may publish the next version as soon as the lock is free.
            version, base, wire = self.version, self.current, (self.wire, self.wire_version)
            if version >= server.rounds:
                return
            plan = self.strategy.configure_fit(version + 1, base, sorted(idle))
        for name, config in plan:
            if name in idle:
                self._post(name, idle[name], version, base, wire, config)

    def _post(self, name, session, version, base, wire, config) -> None:
        server = self.server
        decode = None
        weights = tuple(base)
        model_version = None
        if server.downlink is not None:
            decode = functools.partial(compression.decode, server.codec, spec=server.spec,
                                       reference=base, meta=None)
            message, model_version = wire  # this version's, not the downlink's latest
            # ``base`` is this version's model (a newer version may already be the downlink's).
            current = compression.message_for(session.held_version, message, model_version, base)
            weights = tuple(current[0])
            config = {**config, "compression": current[1]}
        job = Job(self, name, version, base, decode=decode,
                  on_history=functools.partial(server.callbacks.on_client_history, server,
                                               version + 1),
                  on_fit_result=functools.partial(server.callbacks.on_fit_result, server,
                                                  version + 1))
        job.deadline = Deadline(config.get("round_timeout", server.round_timeout))
        self.jobs[name] = job
        session.post(RequestJob(job, messages.Fit(round=version + 1, weights=weights,
                                                  config=config), job.deadline, model_version))

    def _record(self, published: PublishedVersion) -> None:
        """Called with the lock held: evaluate (every ``evaluate_every``), then the callbacks."""
        server = self.server
        number = published.number
        server.stage = f"at version {number}"
        server.adapter.set_weights(self.current)
        logs = {f"fit_{k}": v for k, v in published.metrics.items()}
        if number % self.evaluate_every == 0 or number == server.rounds:
            test = evaluate_centrally(server, number, self.current)
            if test is not None:
                evaluated = {f"test_{k}": v for k, v in test.items()}
                server.callbacks.on_evaluate_end(server, number, evaluated)
                logs.update(evaluated)
        now = time.monotonic()
        staleness = published.staleness
        logs.update({
            "participants": len(staleness), "round_seconds": now - self.version_started,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "clients": sorted(set(published.clients)), "staleness": list(staleness),
            "updates": [[client, s] for client, s in zip(published.clients, staleness)],
            "async_staleness_mean": sum(staleness) / len(staleness) if staleness else 0.0,
            "async_staleness_max": max(staleness, default=0),
            "async_updates_per_version": len(staleness),
            "client_updates": dict(self.updates)})
        self.version_started = now
        self.bytes_in = self.bytes_out = 0
        server.callbacks.on_round_end(server, number, logs)

    # ------------------------------------------------------------------------------------------
    # Connection threads
    # ------------------------------------------------------------------------------------------

    def fold(self, job: Job, update) -> None:
        """Fold one checked update (called by its job with the job's lock held). Raises
        UpdateRejected, before anything is folded, for an update the strategy refuses (e.g.
        staler than ``max_staleness``): its client then simply gets the current model."""
        with self.lock:
            while self.unrecorded is not None and self.ended is None:  # it is being recorded
                self.changed.wait()
            if self.ended is not None:
                raise UpdateRejected(self.ended)
            if self.version >= self.server.rounds:
                raise UpdateRejected(f"training reached its last version ({self.server.rounds})")
            staleness = self.version - job.version
            update = dataclasses.replace(update, staleness=staleness)
            try:
                self.strategy.add(update)
            except UpdateRejected:
                raise
            except Exception:
                # The strategy's buffer may hold part of this update: start the version over
                # (the updates already in it are lost, the global model is not).
                logger.exception("version %d: folding %s's update failed; the version's buffer "
                                 "is restarted", self.version + 1, job.client)
                self.in_version.clear()
                self.strategy.begin(self.version + 1, self.current)
                raise
            self.in_version.append((job.client, staleness))
            self.updates[job.client] += 1
            if self.strategy.ready():
                self._advance()
            self.reporting += 1  # its job reports it next (Job._report -> reported)

    def reported(self) -> None:
        """A folded update's callbacks have run."""
        with self.lock:
            self.reporting -= 1
            self.changed.notify_all()

    def _advance(self) -> None:
        """Called with the lock held: the strategy's new global model becomes the next version."""
        weights, metrics = self.strategy.finish()
        self._publish(weights)
        self.version += 1
        clients = [client for client, _ in self.in_version]
        self.unrecorded = PublishedVersion(self.version, dict(metrics),
                                           [s for _, s in self.in_version], clients)
        self.in_version = []
        if self.version < self.server.rounds:
            self.strategy.begin(self.version + 1, self.current)
        self.changed.notify_all()

    def _publish(self, weights) -> None:
        """The new current version: with compression, what the clients will decode."""
        downlink = self.server.downlink
        if downlink is None:
            self.current = list(weights)
            return
        self.wire = downlink.publish(weights)
        self.wire_version = downlink.version
        self.current = list(downlink.model)
