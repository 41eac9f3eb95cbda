"""Round drivers: what the server does between "the clients are here" and the final model.

:class:`SyncRounds` runs today's synchronous rounds. Each round:

1. waits for enough idle clients and lets the strategy sample them;
2. ``on_round_begin``; sends FIT with the global model (and, with compression, the codec's
   view of it) and the round's config;
3. collects: each update is checked and folded as it arrives (:mod:`pyfed.server.collect`),
   until every sampled client answered or the round's :class:`~pyfed.deadline.Deadline`;
4. finishes the aggregate, evaluates the new model (centrally and on the clients);
5. ``on_evaluate_end`` and ``on_round_end``: History, TensorBoard, the checkpoint and the
   progress line are callbacks.

A round that ends with too few usable updates runs again with the same number and global
model, up to ``round_retries`` times. Asynchronous strategies (``strategy.asynchronous``) get
the other driver, :class:`~pyfed.server.async_engine.AsyncVersions`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time

from ..deadline import Deadline, wait_until
from ..errors import RoundError
from ..safe_text import printable
from ..wire import compression, messages
from .collect import Collector, FitCollector
from .evaluation import FederatedEvaluation, evaluate_centrally
from .secure_round import SecureRound
from .session import RequestJob

logger = logging.getLogger("pyfed")


class SyncRounds:
    """Synchronous rounds, ``server.first_round`` to ``server.rounds``."""

    def __init__(self, server) -> None:
        self.server = server
        self.evaluation = FederatedEvaluation(self)
        # (round, wire, meta): a retried round resends what it published, never republishes
        # (that would move the global model and the version the clients hold).
        self._published = None

    def run(self) -> None:
        server = self.server
        for server_round in range(server.first_round, server.rounds + 1):
            reason = getattr(server.strategy, "stop_before_round", lambda _: None)(server_round)
            if reason:  # a clean end: ending.complete sends the final model with this reason
                server.finish_reason = reason
                server.say(f"stopping before round {server_round}: {reason}")
                return
            server.stage = f"during round {server_round}"
            self.run_with_retries(server_round)

    def run_with_retries(self, server_round: int) -> None:
        """Run the round; one that fails for lack of usable updates runs again with the same
        number and global model (the strategy restarts its aggregate in ``begin``; the model
        changes only in ``finish``), up to ``round_retries`` times."""
        retries = self.server.round_retries
        for attempt in itertools.count(1):
            try:
                self.run_round(server_round)
                return
            except RoundError as exc:
                if attempt > retries:
                    raise RoundError(f"{exc}; giving up after {attempt} attempt"
                                     f"{'s' if attempt > 1 else ''} "
                                     f"(round_retries={retries})") from None
                self.server.warn(f"{exc}; running round {server_round} again with the same "
                                 f"global model (retry {attempt} of {retries})")

    # ------------------------------------------------------------------------------------------
    # One round
    # ------------------------------------------------------------------------------------------

    def run_round(self, server_round: int) -> None:
        server = self.server
        server.gateway.wait_for(server.min_clients("min_available_clients"), server.wait_timeout,
                                server.say, server.progress_interval)
        parameters, wire, meta = self._global_model(server_round)
        # Only idle clients: one still working on a round that closed at its deadline would
        # start this round late; it is sampled again as soon as it is free.
        sessions = self.idle_sessions()
        plan = self.plan(server.strategy.configure_fit(server_round, parameters, sorted(sessions)),
                         sessions)
        timeout = max((c["round_timeout"] for c in plan.values() if "round_timeout" in c),
                      default=server.round_timeout)
        server.callbacks.on_round_begin(server, server_round, plan)
        if getattr(server.strategy, "secure", False):  # SecureAggregation: only the sum
            fit = SecureRound(self, server_round, parameters, plan, sessions, timeout).run()
        else:
            fit = self._collect_fit(server_round, parameters, wire, meta, plan, sessions, timeout)
        new_parameters, fit_metrics = server.strategy.finish()
        server.adapter.set_weights(new_parameters)
        evaluated = self._evaluate(server_round, new_parameters, sessions, timeout)
        seconds = time.monotonic() - fit.started
        logs = {**{f"fit_{k}": v for k, v in fit_metrics.items()},
                **{f"{section}_{k}": v for section, values in evaluated.items()
                   for k, v in values.items()},
                "participants": len(fit.answered), "round_seconds": seconds,
                "bytes_in": fit.bytes_in + self.evaluation.bytes_in,
                "bytes_out": fit.bytes_out + self.evaluation.bytes_out,
                "clients": sorted(fit.answered),
                **getattr(server.strategy, "round_logs", dict)()}  # e.g. epsilon
        # The callbacks (the checkpoint's write) run without the previous global weights held.
        parameters = new_parameters = None  # noqa: F841
        server.callbacks.on_round_end(server, server_round, logs)

    def _collect_fit(self, server_round, parameters, wire, meta, plan, sessions, timeout):
        """FIT to the plan, each update folded as it arrives, until all answered or the
        deadline; a RoundError when too few usable updates came."""
        fit = self._send_fit(server_round, parameters, wire, meta, plan, sessions, timeout)
        self.wait_for_answers(fit, fit.deadline, "training")
        for client, reason in sorted(fit.failures.items()):
            logger.warning("round %d: %s did not contribute: %s", server_round, client, reason)
        try:
            fit.require(self.answers_needed(fit),
                        allow_empty=getattr(self.server.strategy, "allows_empty_rounds", False))
        except RoundError:
            fit.close("the round failed")  # no late answer may fold into the retry's aggregate
            raise
        return fit

    def answers_needed(self, fit: FitCollector) -> int:
        """``min_fit_clients``, or every client asked when the strategy needs them all (DP)."""
        if getattr(self.server.strategy, "requires_every_answer", False):
            return len(fit.expected)
        return self.server.min_clients("min_fit_clients")

    def _global_model(self, server_round: int):
        """The round's global weights, and with compression what goes on the wire."""
        server = self.server
        parameters = server.adapter.get_weights()
        if server.downlink is None:
            return parameters, None, None
        if self._published is None or self._published[0] != server_round:
            self._published = (server_round, *server.downlink.publish(parameters))
        _, wire, meta = self._published
        parameters = list(server.downlink.model)  # what the clients decode (error feedback)
        server.adapter.set_weights(parameters)
        return parameters, wire, meta

    def _send_fit(self, server_round, parameters, wire, meta, plan, sessions, timeout):
        server = self.server
        decode = None
        if server.downlink is not None:
            reference = parameters
            decode = functools.partial(compression.decode, server.codec, spec=server.spec,
                                       reference=reference, meta=None)
        fit = FitCollector(server_round, set(plan), server.strategy, server.spec,
                           server.max_examples, decode=decode,
                           on_history=functools.partial(server.callbacks.on_client_history,
                                                        server, server_round),
                           on_fit_result=functools.partial(server.callbacks.on_fit_result,
                                                           server, server_round))
        fit.deadline = Deadline(timeout)
        server.strategy.begin(server_round, parameters)
        weights = tuple(parameters)
        for name, config in plan.items():
            version = None
            if server.downlink is not None:
                current = compression.message_for(sessions[name].held_version, (wire, meta),
                                                  server.downlink.version, server.downlink.model)
                weights = tuple(current[0])
                config = {**config, "compression": current[1]}
                version = server.downlink.version
            sessions[name].post(RequestJob(fit, messages.Fit(round=server_round, weights=weights,
                                                             config=config), fit.deadline, version))
        return fit

    def _evaluate(self, server_round, parameters, sessions, timeout) -> dict[str, dict]:
        """``{"test": {...}, "eval": {...}}``, each present when something evaluated."""
        server = self.server
        results = {}
        test = evaluate_centrally(server, server_round, parameters)
        if test is not None:
            results["test"] = test
        federated = self.evaluation.run(server_round, parameters, sessions, timeout)
        if federated is not None:
            results["eval"] = federated
        if results:
            server.callbacks.on_evaluate_end(server, server_round, {
                f"{section}_{k}": v for section, values in results.items() for k, v in values.items()})
        return results

    # ------------------------------------------------------------------------------------------
    # Choosing clients and waiting for them
    # ------------------------------------------------------------------------------------------

    def plan(self, plan: list[tuple[str, dict]], sessions: dict) -> dict[str, dict]:
        """The strategy's choice as ``{name: config}``, without clients that are not here."""
        unknown = [name for name, _ in plan if name not in sessions]
        if unknown:
            logger.warning("strategy chose clients that are not connected: %s", unknown)
        return {name: dict(config) for name, config in plan if name in sessions}

    def idle_sessions(self) -> dict:
        """The idle clients, waiting (bounded by ``wait_timeout``, else the round's timeout)
        until there are enough, and saying every ``progress_interval`` s who is still busy."""
        server = self.server
        needed = server.min_clients("min_available_clients")
        limit = server.wait_timeout if server.wait_timeout is not None else server.round_timeout
        idle: dict = {}

        def enough() -> bool:
            idle.clear()
            idle.update(server.gateway.snapshot(idle_only=True))
            return len(idle) >= needed

        def say_who_is_busy() -> None:
            busy = sorted(set(server.gateway.snapshot()) - set(idle))
            shown = ", ".join(printable(name, 60) for name in busy[:10])
            more = f" and {len(busy) - 10} more" if len(busy) > 10 else ""
            server.say(f"waiting for clients to be free: {len(idle)} of {needed} idle"
                       f"{f' (busy: {shown}{more})' if busy else ''} · "
                       f"{needed - len(idle)} missing")

        wait_until(enough, Deadline(limit), every=server.progress_interval, tick=say_who_is_busy)
        return dict(idle)

    def wait_for_answers(self, collector: Collector, deadline: Deadline, doing: str) -> None:
        """Until every client asked answered, or the deadline (then the rest failed), saying
        every ``progress_interval`` s whom the round waits on."""
        server = self.server

        def say_who_is_missing() -> None:
            pending = sorted(collector.pending)
            server.say(f"round {collector.server_round}/{server.rounds} · {doing} · waiting "
                       f"for {', '.join(pending)} ({len(collector.answered)} of "
                       f"{len(collector.expected)} answered) · {deadline.describe()}")

        answered = collector.wait_until_answered(deadline, every=server.progress_interval,
                                                 tick=say_who_is_missing)
        if not answered or deadline.expired():  # sessions may have failed themselves at it
            collector.close(f"no answer within the round's {deadline.seconds:g} s deadline")
            collector.wait_for_reports()  # the callbacks of results counted before it
