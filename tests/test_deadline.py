"""pyfed.deadline: the one Deadline and the one wait helper (no sockets, no timing asserts
beyond "it did not wait forever")."""

import threading
import time

from pyfed.deadline import NEVER, Deadline, wait_until


def test_a_deadline_counts_down_and_expires():
    deadline = Deadline(60)
    assert deadline.bounded and not deadline.expired() and 0 < deadline.remaining() <= 60
    assert deadline.timeout(1.0) == 1.0 and 59 < deadline.timeout() <= 60
    assert deadline.describe().endswith("s left")
    assert Deadline(0).expired() and Deadline(0).remaining() == 0.0


def test_no_deadline_never_expires():
    for never in (NEVER, Deadline(None), Deadline.of(None)):
        assert not never.bounded and not never.expired() and never.remaining() is None
        assert never.timeout(2.5) == 2.5 and never.timeout() is None
        assert never.describe() == "no deadline"


def test_of_takes_a_deadline_a_monotonic_value_or_none():
    deadline = Deadline(5)
    assert Deadline.of(deadline) is deadline
    at = time.monotonic() + 0.5
    converted = Deadline.of(at)
    assert converted.at == at and converted.seconds == 0.5
    assert Deadline.of(time.monotonic() - 1).expired()


def test_wait_until_returns_true_when_done_and_false_at_the_deadline():
    assert wait_until(lambda: True, Deadline(0))  # done is checked before the deadline
    assert not wait_until(lambda: False, Deadline(0.05), poll=0.01)
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3, NEVER, poll=0.001)
    assert len(calls) == 3


def test_wait_until_ticks_every_interval_while_it_waits():
    ticks = []
    started = time.monotonic()
    done = wait_until(lambda: len(ticks) >= 3, Deadline(60), poll=0.01, every=0.1,
                      tick=lambda: ticks.append(time.monotonic() - started))
    assert done and len(ticks) == 3
    # Never early: the first after one interval, each next one at least an interval later.
    gaps = [ticks[0]] + [b - a for a, b in zip(ticks, ticks[1:])]
    assert all(gap >= 0.099 for gap in gaps), ticks  # (less the time it takes to note one)


def test_a_condition_wait_wakes_on_notify_instead_of_polling():
    cond = threading.Condition()
    state = {"ready": False}

    def later():
        time.sleep(0.05)
        with cond:
            state["ready"] = True
            cond.notify_all()

    threading.Thread(target=later).start()
    with cond:  # a one-minute poll: only the notify can end this wait early
        assert wait_until(lambda: state["ready"], Deadline(30), sleep=cond.wait, poll=60)
