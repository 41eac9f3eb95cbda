"""One federated round on the server: who was asked, who answered, and the streaming fold.

Connection threads call :meth:`FitCollector.add` as each FIT_RESULT arrives; the update is
validated and folded into the strategy immediately (under one lock), so its receive buffer can
go back to the pool. The round's thread waits in :meth:`Collector.wait`.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from ..deadline import NEVER, Deadline, wait_until
from ..wire import messages
from ..errors import ProtocolError, RoundError, UpdateRejected  # noqa: F401  (UpdateRejected: re-exported)
from ..safe_text import printable
from ..wire.spec import TensorSpec
from ..strategy import EvaluateResult, FitResult, Strategy
from ..wire.values import MAX_ABS_VALUE, first_bad_value

logger = logging.getLogger("pyfed")


class ValueScan:
    """Checks a FIT_RESULT's float values while its body arrives (``Channel.receive``'s
    ``on_body``), each piece while it is still in cache; :func:`validate_update` then uses the
    verdict instead of reading the whole update from memory once more. Stops at the first bad
    value; arrays it did not reach are checked by validate_update as usual."""

    def __init__(self) -> None:
        self.checked = 0       # arrays before this index had every value checked
        self.bad = None        # the first bad value, in array ``checked``; None: none found
        self._position = 0     # body offset scanned up to

    def __call__(self, body, descriptors: list, received: int) -> None:
        while self.checked < len(descriptors) and self.bad is None:
            d = descriptors[self.checked]
            dtype = np.dtype(d["dtype"])
            start, end = d["offset"], d["offset"] + d["nbytes"]
            if dtype.kind == "f":
                begin = max(start, self._position)
                upto = min(end, received)
                upto = begin + max(0, upto - begin) // dtype.itemsize * dtype.itemsize  # whole values
                if upto > begin:
                    values = np.frombuffer(body, dtype=dtype,
                                           count=(upto - begin) // dtype.itemsize, offset=begin)
                    self.bad = first_bad_value(values)
                    if self.bad is not None:
                        return
                    self._position = upto
                if upto < end:
                    return  # the rest of this array has not arrived yet
            self.checked += 1


def _describe(value) -> str:
    value = float(value)
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return f"{value:g}"


def validate_update(weights: tuple, spec: list[TensorSpec], num_examples: int,
                    max_examples: int, scan: ValueScan | None = None) -> None:
    """Raise UpdateRejected naming the first problem: count, shape, dtype, a bad value, or
    num_examples. ``scan`` holds values already checked as the update arrived.

    ``max_examples`` bounds a client's declared ``num_examples``, which is its weight in the
    examples-weighted mean. The count cannot be verified, so this bounds one client's influence
    only weakly: within the cap it may still claim far more examples than it has, and a small
    weight on a huge update still moves the model a long way. The strategies'
    ``max_update_norm`` bounds the update itself (the L2 norm of its delta from the global
    model)."""
    if len(weights) != len(spec):
        raise UpdateRejected(f"update has {len(weights)} tensors; the model has {len(spec)}")
    for index, (array, expected) in enumerate(zip(weights, spec)):
        label = f"tensor {index} ({expected.path or expected.name})"
        if tuple(array.shape) != tuple(expected.shape):
            raise UpdateRejected(f"{label} has shape {list(array.shape)}; expected shape "
                                 f"{list(expected.shape)}")
        if array.dtype.str != expected.dtype:
            raise UpdateRejected(f"{label} has dtype {array.dtype.str}; expected dtype {expected.dtype}")
        if array.dtype.kind == "f" and array.size:
            if scan is not None and index < scan.checked:
                continue  # every value was checked as it arrived
            found = scan is not None and scan.bad is not None and index == scan.checked
            bad = scan.bad if found else first_bad_value(array)
            if bad is not None:
                raise UpdateRejected(f"{label} contains {_describe(bad)}; every value must be finite and "
                                     f"within +-{MAX_ABS_VALUE:g}")
    if not 0 < num_examples <= max_examples:
        raise UpdateRejected(f"num_examples must be in [1, {max_examples}]; received {num_examples}")


class Collector:
    """Who was asked, who answered, who failed; connection threads report, the round waits."""

    kind = "fit"
    # MessageKind -> wire Layout: the arrays a reply of that kind must carry, checked on its
    # header by the session (a FIT_RESULT's are the model's, checked by the session itself).
    reply_layouts: dict = {}

    def __init__(self, server_round: int, expected: set[str]):
        self.server_round = server_round
        self.expected = set(expected)
        self.answered: list[str] = []
        self.failures: dict[str, str] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = time.monotonic()
        self.deadline = NEVER  # the round's; the driver sets it (sessions share it via the job)
        self.closed = False
        # Results counted whose callbacks (on_fit_result...) still run on their connection's
        # thread: the round waits for them, so a callback never hears of a result after
        # on_round_end, and they run outside the lock, so other updates fold meanwhile.
        self._reporting = 0
        self._cond = threading.Condition()

    def sent(self, nbytes: int) -> None:
        with self._cond:
            self.bytes_out += nbytes

    def received(self, nbytes: int) -> None:
        with self._cond:
            self.bytes_in += nbytes

    def _check_expected(self, client: str, result_round: int) -> None:
        """Called with the lock held. A bad answer from a client we wait for ends its turn."""
        if self.closed and client not in self.answered:
            raise UpdateRejected(f"arrived after round {self.server_round} closed; not counted")
        if result_round != self.server_round:
            reason = (f"{self.kind} result is for round {result_round}; the current round is "
                      f"{self.server_round}")
            if client in self.pending:  # it answered, wrongly: don't wait for it any more
                self.failures[client] = reason
                self._cond.notify_all()
            raise UpdateRejected(reason)
        if client not in self.expected or client in self.answered or client in self.failures:
            raise UpdateRejected(f"{client} was not asked for a {self.kind} result in round {self.server_round}")

    def close(self, reason: str) -> None:
        """End the round now: whoever has not answered failed, and later answers are refused."""
        with self._cond:
            self.closed = True
            for client in self.pending:
                self.failures[client] = reason
            self._cond.notify_all()

    def fail(self, client: str, reason: str) -> None:
        reason = printable(reason, 500)  # it may quote the client, and it is logged
        with self._cond:
            if client in self.expected and client not in self.answered and client not in self.failures:
                self.failures[client] = reason
                self._cond.notify_all()

    @property
    def pending(self) -> set[str]:
        return self.expected - set(self.answered) - set(self.failures)

    def _outstanding(self) -> int:
        """len(pending) in O(1): answered and failures are disjoint subsets of expected."""
        return len(self.expected) - len(self.answered) - len(self.failures)

    def wait(self, timeout: float | None = None, mark_missing: bool = True) -> bool:
        """Until every client asked has answered or failed, or ``timeout`` seconds have passed
        (then, with ``mark_missing``, the missing ones count as failed). True: all answered."""
        answered = self.wait_until_answered(Deadline(timeout))
        if not answered and mark_missing:
            with self._cond:
                for client in self.pending:
                    self.failures[client] = f"no answer within {timeout:g} s"
        return answered

    def wait_until_answered(self, deadline: Deadline, every: float | None = None,
                            tick=None) -> bool:
        """Until nobody is outstanding (True) or the deadline (False); ``tick()`` every
        ``every`` s meanwhile, outside the lock (it may take it to read ``pending``)."""
        def sleep(seconds: float) -> None:
            with self._cond:
                if self._outstanding() or self._reporting:
                    self._cond.wait(seconds)

        return wait_until(lambda: not self._outstanding() and not self._reporting, deadline,
                          sleep=sleep, poll=1.0, every=every, tick=tick)

    def wait_for_reports(self) -> None:
        """Until the callbacks of every counted result have run (after a deadline closed the
        round with some still running)."""
        with self._cond:
            while self._reporting:
                self._cond.wait(1.0)

    def value_scan(self) -> ValueScan | None:
        """A scan to run on the reply's body as it arrives (see ValueScan); None: no arrays to
        check."""
        return None

    def failure_summary(self) -> str:
        return "; ".join(f"{c}: {r}" for c, r in sorted(self.failures.items())) or "none failed"


class FitCollector(Collector):
    """A fit round: each valid update is folded into the strategy as it arrives."""

    kind = "fit"

    def __init__(self, server_round: int, expected: set[str], strategy: Strategy,
                 spec: list[TensorSpec], max_examples: int, on_history=None, decode=None,
                 on_fit_result=None, base=None):
        super().__init__(server_round, expected)
        self.base = base  # the global weights the clients were sent (FitResult.base)
        self.strategy = strategy
        self.spec = spec
        self.max_examples = max_examples
        self.on_history = on_history  # callable(name, history, first_epoch), for TensorBoard
        self.decode = decode  # compressed uplink -> the model's tensors (None: sent as they are)
        self.on_fit_result = on_fit_result  # callable(name, num_examples, metrics): callbacks
        self.broken: str | None = None  # why the strategy's aggregate cannot be trusted

    def value_scan(self) -> ValueScan | None:
        """A scan to run while the result arrives, or None when the arrays on the wire are not
        the model's (a compressed update is checked once decoded)."""
        return ValueScan() if self.decode is None else None

    def add(self, client: str, result: messages.FitResult, scan: ValueScan | None = None) -> None:
        """Validate and fold one update. Raises UpdateRejected (the caller tells the client).

        Whatever goes wrong with one update stays with that update: an exception from the
        strategy's ``screen`` refuses it, and one from its fold (which may have left the
        round's accumulator half-updated) closes the round now, and :meth:`require` fails it
        with that reason: a RoundError the server handles, never an exception on its thread
        from inside a fold."""
        # Decoding, checking every value and the strategy's screen (max_update_norm's pass over
        # the update) read the whole update: done before taking the lock, so one client's check
        # overlaps another's fold.
        try:
            weights = result.weights
            if self.decode is not None:
                try:
                    weights = self.decode(weights)
                except ProtocolError as exc:
                    raise UpdateRejected(f"cannot decompress: {exc}") from None
            validate_update(weights, self.spec, result.num_examples, self.max_examples, scan)
            update = FitResult(client, tuple(weights), result.num_examples, dict(result.metrics),
                               base=self.base)
            screen = getattr(self.strategy, "screen", None)
            if screen is not None:
                update = screen(update)
            problem = None
        except UpdateRejected as exc:
            problem = exc
        except Exception as exc:  # a strategy bug: this update is refused, the round goes on
            logger.warning("round %d: checking %s's update failed: %s: %s", self.server_round,
                           client, type(exc).__name__, printable(exc))
            problem = UpdateRejected(f"the server could not check it ({type(exc).__name__})")
        with self._cond:
            self._check_expected(client, result.round)
            if problem is not None:
                self.failures[client] = f"update rejected: {problem}"
                self._cond.notify_all()
                raise problem
            try:
                self._fold(update)
            except UpdateRejected as exc:  # refused before anything was folded (the contract)
                self.failures[client] = f"update rejected: {exc}"
                self._cond.notify_all()
                raise
            except Exception as exc:
                self._fold_failed(client, exc)
                raise UpdateRejected("the server could not aggregate it "
                                     f"({type(exc).__name__}); this round is abandoned") from None
            self.answered.append(client)
            self._reporting += 1
            self._cond.notify_all()
        try:
            self._report(client, result)
        finally:
            with self._cond:
                self._reporting -= 1
                self._cond.notify_all()

    def _fold(self, update: FitResult) -> None:
        """Called with the lock held, for an expected client's checked update."""
        # The last answer expected: the strategy may finish as it folds (FedAvg's mean).
        last = self._outstanding() == 1  # _check_expected: this client is outstanding
        fold = getattr(self.strategy, "add_last", self.strategy.add) if last else self.strategy.add
        fold(update)

    def _report(self, client: str, result: messages.FitResult) -> None:
        """The callbacks for a counted result; a failing one costs a curve, never the update."""
        if self.on_fit_result is not None:
            self.on_fit_result(client, result.num_examples, dict(result.metrics))
        if self.on_history and result.history:
            try:
                self.on_history(client, result.history, result.first_epoch)
            except Exception as exc:  # e.g. too many open files: lose a curve, never the update
                logger.warning("could not write %s's TensorBoard curve: %s: %s", client,
                               type(exc).__name__, printable(exc))

    def _fold_failed(self, client: str, exc: Exception) -> None:
        """Called with the lock held: the strategy's fold raised, so its running aggregate may
        hold part of this update. Nothing more can be folded into it: the round closes now."""
        self.broken = (f"folding {client}'s update failed ({type(exc).__name__}: "
                       f"{printable(exc)}), so the round's aggregate is incomplete")
        logger.error("round %d: %s", self.server_round, self.broken)
        self.failures[client] = self.broken
        self.closed = True
        for other in self.pending:
            self.failures[other] = "the round closed early: its aggregate is incomplete"
        self._cond.notify_all()

    def require(self, min_fit_clients: int, allow_empty: bool = False) -> None:
        """``allow_empty``: a round that asked nobody passes (a strategy's empty sample)."""
        if self.broken is not None:
            raise RoundError(f"round {self.server_round} failed: {self.broken}")
        needed = min(min_fit_clients, len(self.expected)) or (0 if allow_empty else 1)
        if len(self.answered) < needed:
            raise RoundError(
                f"round {self.server_round} failed: {len(self.answered)} of {len(self.expected)} "
                f"clients returned a usable update, at least {needed} needed ({self.failure_summary()})")


class EvaluateCollector(Collector):
    """Federated evaluation: results are small, so they are simply kept."""

    kind = "evaluate"

    def __init__(self, server_round: int, expected: set[str]):
        super().__init__(server_round, expected)
        self.results: list[EvaluateResult] = []

    def add(self, client: str, result: messages.EvaluateResult, scan=None) -> None:
        with self._cond:
            self._check_expected(client, result.round)
            if not 0 <= result.num_examples or not np.isfinite(result.loss):
                self.failures[client] = "invalid evaluation result"
                self._cond.notify_all()
                raise UpdateRejected(
                    f"evaluation needs num_examples >= 0 and a finite loss; received "
                    f"{result.num_examples} and {result.loss}")
            self.results.append(EvaluateResult(client, result.num_examples, float(result.loss),
                                               dict(result.metrics)))
            self.answered.append(client)
            self._cond.notify_all()
