"""pyfed.server.collect without sockets: one round's collector fed messages directly, from
several threads where the order matters, folding into the real FedAvg.

The weights are a NumpyModel's; every aggregate is checked against the examples-weighted mean
computed here by hand."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pyfed.errors import PyFedError, RoundError, UpdateRejected
from pyfed.models import NumpyModel
from pyfed.server.collect import EvaluateCollector, FitCollector, ValueScan, validate_update
from pyfed.strategy import FedAvg
from pyfed.wire import protocol
from pyfed.wire.messages import EvaluateResult, FitResult
from pyfed.wire.spec import TensorSpec
from pyfed.wire.values import MAX_ABS_VALUE

JOIN_TIMEOUT = 15.0  # bound on every thread join and every wait in this file
MAX_EXAMPLES = 1000


def model() -> NumpyModel:
    return NumpyModel([np.zeros((3, 2), np.float32), np.zeros(2, np.float32)])


def fit_round(clients, strategy=None, server_round=1):
    """A FitCollector for ``clients`` and its strategy, begun as the server begins a round."""
    strategy = strategy or FedAvg()
    weights = model().get_weights()
    strategy.configure_fit(server_round, weights, sorted(clients))
    strategy.begin(server_round, weights)
    collector = FitCollector(server_round, set(clients), strategy, model().spec(), MAX_EXAMPLES)
    return collector, strategy


def update(value, num_examples=10, server_round=1, metrics=None) -> FitResult:
    """A FIT_RESULT whose every weight is ``value``."""
    weights = tuple(np.full(w.shape, value, w.dtype) for w in model().get_weights())
    return FitResult(round=server_round, weights=weights, num_examples=num_examples,
                     metrics=metrics or {})


def assert_aggregate(strategy, values_and_examples) -> dict:
    """The strategy's new weights are the examples-weighted mean of the values; returns its
    metrics."""
    total = sum(n for _, n in values_and_examples)
    mean = sum(v * n for v, n in values_and_examples) / total
    weights, metrics = strategy.finish()
    assert [w.shape for w in weights] == [(3, 2), (2,)]
    assert [w.dtype for w in weights] == [np.float32, np.float32]
    for w in weights:
        np.testing.assert_allclose(w, mean, rtol=1e-6)
    return metrics


def join(thread: threading.Thread) -> None:
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), f"{thread.name} did not finish in time"


class RecordingFedAvg(FedAvg):
    """The real FedAvg, noting which of its public fold methods the collector called."""

    def __init__(self, **options):
        super().__init__(**options)
        self.folds: list[tuple[str, str]] = []

    def add(self, result):
        self.folds.append(("add", result.client))
        super().add(result)

    def add_last(self, result):
        self.folds.append(("add_last", result.client))
        super().add_last(result)


# ---------------------------------------------------------------------------------------------
# Folding: the aggregate, the last answer, waiting
# ---------------------------------------------------------------------------------------------


def test_every_answer_is_folded_into_the_examples_weighted_mean():
    collector, strategy = fit_round(["a", "b", "c"])
    collector.add("a", update(1.0, 10, metrics={"loss": 1.0}))
    collector.add("b", update(3.0, 30, metrics={"loss": 2.0}))
    assert collector.pending == {"c"}
    collector.add("c", update(-2.0, 60, metrics={"loss": 0.5}))
    assert collector.pending == set() and collector.failures == {}
    assert sorted(collector.answered) == ["a", "b", "c"]
    collector.require(3)
    metrics = assert_aggregate(strategy, [(1.0, 10), (3.0, 30), (-2.0, 60)])
    assert metrics["loss"] == pytest.approx((10 * 1.0 + 30 * 2.0 + 60 * 0.5) / 100)


def test_only_the_last_expected_answer_is_folded_with_add_last():
    strategy = RecordingFedAvg()
    collector, _ = fit_round(["a", "b", "c"], strategy)
    collector.add("b", update(2.0))
    collector.fail("a", "disconnected")  # a failure makes the next answer the last one
    collector.add("c", update(4.0))
    assert strategy.folds == [("add", "b"), ("add_last", "c")]
    assert_aggregate(strategy, [(2.0, 10), (4.0, 10)])


def test_wait_returns_when_answers_from_other_threads_complete_the_round():
    clients = [f"client_{i}" for i in range(8)]
    collector, strategy = fit_round(clients)
    waiter = threading.Thread(target=collector.wait, kwargs={"timeout": JOIN_TIMEOUT},
                              name="round-waiter")
    waiter.start()
    senders = [threading.Thread(target=collector.add, args=(name, update(i + 1.0, i + 1)),
                                name=name) for i, name in enumerate(clients)]
    for sender in senders:
        sender.start()
    for thread in senders + [waiter]:
        join(thread)
    assert sorted(collector.answered) == clients and collector.failures == {}
    assert_aggregate(strategy, [(i + 1.0, i + 1) for i in range(8)])


class SignallingFedAvg(FedAvg):
    """The real FedAvg, setting ``folded`` while it folds its ``after``-th update."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after
        self.count = 0
        self.folded = threading.Event()

    def add(self, result):
        super().add(result)
        self.count += 1
        if self.count == self.after:
            self.folded.set()


def test_a_fold_racing_a_close_counts_each_client_exactly_once():
    clients = [f"c{i}" for i in range(6)]
    for attempt in range(30):
        # The close comes while the n-th update is being folded (n = 0: at once), when the
        # others wait for the collector's lock or are still being checked: who gets the lock
        # first differs from one attempt to the next.
        strategy = SignallingFedAvg(after=attempt % len(clients))
        collector, _ = fit_round(clients, strategy)
        start = threading.Barrier(len(clients) + 1, timeout=JOIN_TIMEOUT)
        outcomes: dict[str, str] = {}

        def answer(name, value):
            start.wait()
            try:
                collector.add(name, update(value, int(value)))
                outcomes[name] = "counted"
            except UpdateRejected as exc:
                outcomes[name] = str(exc)

        threads = [threading.Thread(target=answer, args=(name, i + 1.0), name=name)
                   for i, name in enumerate(clients)]
        for thread in threads:
            thread.start()
        start.wait()
        if strategy.after:
            assert strategy.folded.wait(JOIN_TIMEOUT)
        collector.close("the deadline passed")
        for thread in threads:
            join(thread)

        answered, failed = set(collector.answered), set(collector.failures)
        assert answered | failed == set(clients) and not answered & failed
        assert len(collector.answered) == len(answered)  # nobody counted twice
        assert all(outcomes[name] == "counted" for name in answered)
        for name in failed:  # refused as late, and the reason stays the close's
            assert collector.failures[name] == "the deadline passed"
            assert "arrived after round 1 closed" in outcomes[name]
        if answered:
            folded = [(float(name[1:]) + 1.0, int(name[1:]) + 1) for name in answered]
            assert_aggregate(strategy, folded)
            collector.require(1)
        else:
            with pytest.raises(RoundError, match="0 of 6 clients returned a usable update"):
                collector.require(1)


def test_close_fails_the_missing_and_refuses_later_answers():
    collector, strategy = fit_round(["a", "b", "c"])
    collector.add("a", update(5.0))
    collector.close("closed at its deadline")
    assert collector.closed and collector.pending == set()
    assert collector.failures == {"b": "closed at its deadline", "c": "closed at its deadline"}
    with pytest.raises(UpdateRejected, match="arrived after round 1 closed; not counted"):
        collector.add("b", update(100.0))
    assert collector.failures["b"] == "closed at its deadline"
    collector.require(1)
    with pytest.raises(RoundError, match=r"1 of 3 clients.*at least 2 needed \(b: closed"):
        collector.require(2)
    assert_aggregate(strategy, [(5.0, 10)])  # the late 100.0 was never folded


def test_wait_timing_out_marks_the_missing_clients_unless_told_not_to():
    collector, _ = fit_round(["a", "b"])
    collector.add("a", update(1.0))
    collector.wait(timeout=0.05, mark_missing=False)
    assert collector.pending == {"b"} and collector.failures == {}
    collector.wait(timeout=0.05)
    assert collector.pending == set()
    assert collector.failures == {"b": "no answer within 0.05 s"}


# ---------------------------------------------------------------------------------------------
# Answers that do not belong to the round
# ---------------------------------------------------------------------------------------------


def test_an_answer_for_another_round_is_refused_and_its_client_no_longer_waited_for():
    collector, strategy = fit_round(["a", "b"])
    with pytest.raises(UpdateRejected,
                       match="fit result is for round 2; the current round is 1"):
        collector.add("a", update(9.0, server_round=2))
    assert collector.pending == {"b"}
    assert collector.failures["a"] == "fit result is for round 2; the current round is 1"
    collector.add("b", update(1.0))
    collector.wait(timeout=JOIN_TIMEOUT)  # returns: nobody is outstanding
    assert_aggregate(strategy, [(1.0, 10)])


def test_an_unexpected_client_or_a_second_answer_is_refused_and_changes_nothing():
    collector, strategy = fit_round(["a", "b"])
    with pytest.raises(UpdateRejected, match="mallory was not asked for a fit result in round 1"):
        collector.add("mallory", update(1e6))
    collector.add("a", update(2.0))
    with pytest.raises(UpdateRejected, match="a was not asked"):
        collector.add("a", update(1e6))
    # An unexpected client's wrong round is refused too, without entering the failures.
    with pytest.raises(UpdateRejected, match="for round 7"):
        collector.add("mallory", update(1.0, server_round=7))
    assert collector.answered == ["a"] and collector.failures == {}
    assert collector.pending == {"b"}
    collector.add("b", update(4.0))
    assert_aggregate(strategy, [(2.0, 10), (4.0, 10)])


def test_fail_records_only_clients_still_awaited_with_an_escaped_reason():
    collector, _ = fit_round(["a", "b", "c"])
    collector.add("a", update(1.0))
    collector.fail("a", "too late to matter")       # answered already: ignored
    collector.fail("zed", "not in this round")      # never asked: ignored
    collector.fail("b", "line one\nforged: line two")
    collector.fail("b", "a second reason")           # the first one stays
    collector.fail("c", "x" * 2000)
    assert set(collector.failures) == {"b", "c"}
    assert collector.failures["b"] == "line one\\nforged: line two"
    assert collector.failures["c"].startswith("x" * 500 + "...[1500 more characters]")
    assert collector.failure_summary() == (f"b: {collector.failures['b']}; "
                                           f"c: {collector.failures['c']}")


def test_byte_counters_add_up_from_many_threads():
    collector, _ = fit_round(["a"])

    def count():
        for _ in range(500):
            collector.sent(3)
            collector.received(7)

    threads = [threading.Thread(target=count, name=f"counter-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        join(thread)
    assert (collector.bytes_out, collector.bytes_in) == (4 * 500 * 3, 4 * 500 * 7)


# ---------------------------------------------------------------------------------------------
# A strategy that refuses or fails
# ---------------------------------------------------------------------------------------------


def test_an_update_the_strategy_refuses_is_not_counted_and_the_round_goes_on():
    strategy = FedAvg(max_update_norm=1.0, update_norm_action="reject")
    collector, _ = fit_round(["a", "b", "c"], strategy)
    collector.add("a", update(0.1))
    with pytest.raises(UpdateRejected, match="exceeds max_update_norm 1"):
        collector.add("b", update(50.0))
    collector.add("c", update(0.2, 30))
    assert sorted(collector.answered) == ["a", "c"]
    assert collector.failures["b"].startswith("update rejected: update norm")
    collector.require(2)
    assert_aggregate(strategy, [(0.1, 10), (0.2, 30)])


def test_a_fold_refusing_with_update_rejected_leaves_the_round_whole():
    class Refusing(RecordingFedAvg):
        def add(self, result):
            if result.client == "b":
                raise UpdateRejected("b is not welcome")
            super().add(result)

    strategy = Refusing()
    collector, _ = fit_round(["a", "b", "c"], strategy)
    collector.add("a", update(1.0))
    with pytest.raises(UpdateRejected, match="b is not welcome"):
        collector.add("b", update(7.0))
    collector.add("c", update(3.0))
    assert collector.broken is None and not collector.closed
    assert collector.failures == {"b": "update rejected: b is not welcome"}
    collector.require(2)
    assert_aggregate(strategy, [(1.0, 10), (3.0, 10)])


def test_a_screen_that_raises_refuses_that_update_only(caplog):
    class BuggyScreen(FedAvg):
        def screen(self, result):
            if result.client == "b":
                raise ZeroDivisionError("a bug in the screen")
            return super().screen(result)

    strategy = BuggyScreen()
    collector, _ = fit_round(["a", "b", "c"], strategy)
    collector.add("a", update(2.0, 20))
    with pytest.raises(UpdateRejected, match=r"could not check it \(ZeroDivisionError\)"):
        collector.add("b", update(9.0))
    collector.add("c", update(5.0, 40))
    assert sorted(collector.answered) == ["a", "c"] and collector.broken is None
    assert "checking b's update failed: ZeroDivisionError: a bug in the screen" in caplog.text
    collector.require(2)
    assert_aggregate(strategy, [(2.0, 20), (5.0, 40)])


def test_a_fold_that_raises_breaks_the_round_wakes_the_waiter_and_require_fails():
    class BuggyFold(FedAvg):
        def add(self, result):
            if result.client == "b":
                raise IndexError("a bug in the fold")
            super().add(result)

    collector, _ = fit_round(["a", "b", "c", "d"], BuggyFold())
    collector.add("a", update(1.0))
    waiter = threading.Thread(target=collector.wait, kwargs={"timeout": JOIN_TIMEOUT},
                              name="round-waiter")
    waiter.start()
    with pytest.raises(UpdateRejected, match=r"could not aggregate it \(IndexError\); this "
                                             "round is abandoned"):
        collector.add("b", update(2.0))
    join(waiter)  # woken: nobody is waited for any more
    assert collector.closed and collector.pending == set()
    assert collector.failures["c"] == collector.failures["d"] == (
        "the round closed early: its aggregate is incomplete")
    assert "folding b's update failed (IndexError: a bug in the fold)" in collector.failures["b"]
    with pytest.raises(UpdateRejected, match="arrived after round 1 closed"):
        collector.add("c", update(3.0))
    with pytest.raises(RoundError, match=r"round 1 failed: folding b's update failed") as caught:
        collector.require(1)  # one answer is enough in number, but the aggregate is broken
    assert isinstance(caught.value, PyFedError)


# ---------------------------------------------------------------------------------------------
# validate_update: what an update must be
# ---------------------------------------------------------------------------------------------


SPEC = [TensorSpec("kernel", (3, 2), "<f4", "dense/kernel"), TensorSpec("bias", (2,), "<f4"),
        TensorSpec("steps", (1,), "<i8")]


def good_weights():
    return (np.ones((3, 2), np.float32), np.ones(2, np.float32), np.array([4], np.int64))


def refusal(weights, num_examples=10, max_examples=MAX_EXAMPLES, scan=None) -> str:
    with pytest.raises(UpdateRejected) as caught:
        validate_update(weights, SPEC, num_examples, max_examples, scan)
    return str(caught.value)


@pytest.mark.parametrize("bad,shown", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "-Inf"),
                                       (2e18, "2e+18"), (-3e38, "-3e+38")])
def test_bad_values_are_refused_naming_the_tensor_and_the_value(bad, shown):
    weights = list(good_weights())
    weights[1] = np.array([0.5, bad], np.float32)
    reason = refusal(tuple(weights))
    assert reason == (f"tensor 1 (bias) contains {shown}; every value must be finite and "
                      f"within +-{MAX_ABS_VALUE:g}")
    weights = list(good_weights())
    weights[0] = np.full((3, 2), bad, np.float32)
    assert refusal(tuple(weights)).startswith(f"tensor 0 (dense/kernel) contains {shown};")


def test_values_at_the_bound_and_non_float_tensors_pass():
    weights = (np.full((3, 2), MAX_ABS_VALUE, np.float32), np.full(2, -MAX_ABS_VALUE, np.float32),
               np.array([np.iinfo(np.int64).max]))
    validate_update(weights, SPEC, 10, MAX_EXAMPLES)
    empty = [TensorSpec("empty", (0, 4), "<f4")]
    validate_update((np.zeros((0, 4), np.float32),), empty, 1, 1)


def test_wrong_count_shape_or_dtype_is_refused_with_what_was_expected():
    weights = good_weights()
    assert refusal(weights[:2]) == "update has 2 tensors; the model has 3"
    assert refusal(weights + (np.ones(1),)) == "update has 4 tensors; the model has 3"
    assert refusal((np.ones((2, 3), np.float32),) + weights[1:]) == (
        "tensor 0 (dense/kernel) has shape [2, 3]; expected shape [3, 2]")
    assert refusal(weights[:1] + (np.ones(2, np.float64),) + weights[2:]) == (
        "tensor 1 (bias) has dtype <f8; expected dtype <f4")
    assert refusal(weights[:2] + (np.array([4], ">i8"),)) == (
        "tensor 2 (steps) has dtype >i8; expected dtype <i8")


@pytest.mark.parametrize("num_examples,accepted", [(1, True), (MAX_EXAMPLES, True), (0, False),
                                                   (-5, False), (MAX_EXAMPLES + 1, False)])
def test_num_examples_must_be_between_one_and_max_examples(num_examples, accepted):
    if accepted:
        validate_update(good_weights(), SPEC, num_examples, MAX_EXAMPLES)
    else:
        assert refusal(good_weights(), num_examples) == (
            f"num_examples must be in [1, {MAX_EXAMPLES}]; received {num_examples}")


def test_the_collector_refuses_a_bad_update_and_counts_the_others():
    collector, strategy = fit_round(["a", "b", "c", "d"])
    bad = update(1.0)
    bad.weights[0][1, 1] = np.nan
    with pytest.raises(UpdateRejected, match=r"tensor 0 \(weight_0\) contains NaN"):
        collector.add("a", bad)
    with pytest.raises(UpdateRejected, match=r"tensor 1 \(weight_1\) has shape \[3\]"):
        collector.add("b", FitResult(round=1, weights=(np.ones((3, 2), np.float32),
                                                       np.ones(3, np.float32)), num_examples=1))
    with pytest.raises(UpdateRejected, match=r"num_examples must be in \[1, 1000\]; received 1001"):
        collector.add("c", update(1.0, MAX_EXAMPLES + 1))
    collector.add("d", update(6.0, 3))
    assert collector.answered == ["d"]
    assert collector.failures == {
        "a": "update rejected: tensor 0 (weight_0) contains NaN; every value must be finite "
             f"and within +-{MAX_ABS_VALUE:g}",
        "b": "update rejected: tensor 1 (weight_1) has shape [3]; expected shape [2]",
        "c": f"update rejected: num_examples must be in [1, {MAX_EXAMPLES}]; received 1001"}
    assert_aggregate(strategy, [(6.0, 3)])


# ---------------------------------------------------------------------------------------------
# ValueScan: the values checked while a FIT_RESULT's body arrives
# ---------------------------------------------------------------------------------------------


def frame_parts(weights, num_examples=10):
    """(descriptors, body, result) of a real FIT_RESULT frame carrying ``weights``."""
    buffers = protocol.encode(FitResult(round=1, weights=weights, num_examples=num_examples))
    head = bytes(buffers[0])
    prefix = protocol.parse_prefix(head[:protocol.PREFIX_SIZE], protocol.FrameLimits())
    fields, descriptors = protocol.decode_header(prefix, head[protocol.PREFIX_SIZE:])
    body = np.frombuffer(b"".join(bytes(b) for b in buffers[1:]), np.uint8)
    return descriptors, body, protocol.decode_body(prefix, fields, descriptors, body)


def scan_in_pieces(descriptors, body, piece: int, upto: int | None = None) -> ValueScan:
    """Feed the body to a ValueScan as Channel.receive does: after each piece arrives."""
    scan = ValueScan()
    end = len(body) if upto is None else upto
    for received in list(range(piece, end, piece)) + [end]:
        scan(body, descriptors, received)
    return scan


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 20])
def test_a_scan_over_a_clean_body_checks_every_array_in_any_pieces(piece):
    descriptors, body, result = frame_parts(good_weights())
    scan = scan_in_pieces(descriptors, body, piece)
    assert scan.checked == 3 and scan.bad is None
    validate_update(result.weights, SPEC, 10, MAX_EXAMPLES, scan)


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_a_scan_stops_at_the_first_bad_value_and_validate_update_reports_it(piece):
    weights = good_weights()
    weights[1][1] = np.inf
    weights[0][2, 0] = np.nan  # not reached first: bias comes later in the body
    weights[0][0, 1] = -np.inf
    descriptors, body, result = frame_parts(weights)
    scan = scan_in_pieces(descriptors, body, piece)
    assert scan.checked == 0 and np.isneginf(scan.bad)
    assert refusal(result.weights, scan=scan) == refusal(result.weights) == (
        "tensor 0 (dense/kernel) contains -Inf; every value must be finite and within "
        f"+-{MAX_ABS_VALUE:g}")


def test_a_scan_of_a_body_still_arriving_leaves_the_rest_to_validate_update():
    weights = good_weights()
    weights[1][0] = np.nan
    descriptors, body, result = frame_parts(weights)
    second = descriptors[1]
    scan = scan_in_pieces(descriptors, body, 5, upto=second["offset"] + 2)  # half a float
    assert scan.checked == 1 and scan.bad is None  # the kernel was whole; the bias was not
    assert refusal(result.weights, scan=scan).startswith("tensor 1 (bias) contains NaN")


def test_the_collector_uses_the_scan_it_hands_out():
    collector, strategy = fit_round(["a", "b"])
    assert isinstance(collector.value_scan(), ValueScan)
    assert EvaluateCollector(1, {"a"}).value_scan() is None
    clean = model().get_weights()
    dirty = [np.full(w.shape, 2.0, w.dtype) for w in clean]
    dirty[1][0] = 3e18
    descriptors, body, result = frame_parts(tuple(dirty))
    scan = collector.value_scan()
    scan(body, descriptors, len(body))
    with pytest.raises(UpdateRejected, match=r"tensor 1 \(weight_1\) contains 3e\+18"):
        collector.add("a", result, scan)
    descriptors, body, result = frame_parts(tuple(np.full(w.shape, 4.0, w.dtype) for w in clean))
    scan = collector.value_scan()
    scan(body, descriptors, len(body))
    collector.add("b", result, scan)
    assert_aggregate(strategy, [(4.0, 10)])


# ---------------------------------------------------------------------------------------------
# EvaluateCollector
# ---------------------------------------------------------------------------------------------


def test_evaluation_results_are_kept_and_bad_ones_refused():
    collector = EvaluateCollector(3, {"a", "b", "c", "d"})
    collector.add("a", EvaluateResult(round=3, num_examples=20, loss=0.25,
                                      metrics={"accuracy": 0.9}))
    collector.add("b", EvaluateResult(round=3, num_examples=0, loss=1.0))  # nothing held out
    with pytest.raises(UpdateRejected, match="finite loss; received 5 and nan"):
        collector.add("c", EvaluateResult(round=3, num_examples=5, loss=float("nan")))
    with pytest.raises(UpdateRejected, match="evaluate result is for round 2"):
        collector.add("d", EvaluateResult(round=2, num_examples=5, loss=0.1))
    with pytest.raises(UpdateRejected, match="e was not asked for a evaluate result in round 3"):
        collector.add("e", EvaluateResult(round=3, num_examples=5, loss=0.1))
    assert collector.pending == set() and sorted(collector.answered) == ["a", "b"]
    assert collector.failures["c"] == "invalid evaluation result"
    assert [(r.client, r.num_examples, r.loss, r.metrics) for r in collector.results] == [
        ("a", 20, 0.25, {"accuracy": 0.9}), ("b", 0, 1.0, {})]
    loss, metrics = FedAvg().aggregate_evaluate(3, collector.results)
    assert loss == 0.25 and metrics == {"accuracy": 0.9}  # b's 0 examples do not count


def test_an_evaluation_after_close_is_refused():
    collector = EvaluateCollector(1, {"a", "b"})
    collector.add("a", EvaluateResult(round=1, num_examples=3, loss=0.5))
    collector.close("evaluation timed out")
    with pytest.raises(UpdateRejected, match="arrived after round 1 closed"):
        collector.add("b", EvaluateResult(round=1, num_examples=3, loss=0.5))
    assert [r.client for r in collector.results] == ["a"]
    assert collector.failures == {"b": "evaluation timed out"}


def test_a_round_with_no_clients_needs_one_answer():
    collector = FitCollector(1, set(), FedAvg(), model().spec(), MAX_EXAMPLES)
    collector.wait(timeout=JOIN_TIMEOUT)  # nothing to wait for
    assert collector.failure_summary() == "none failed"
    with pytest.raises(RoundError, match="0 of 0 clients returned a usable update, at least 1"):
        collector.require(2)

