"""Stop signals, delivered for real to this process (pytest runs tests in the main thread)."""

import os
import signal
import time

import pytest

from pyfed.server.stopping import StopSignals, Stopped, describe


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(100):  # bounded: the handler runs at the next bytecode, within a sleep
        time.sleep(0.01)


def test_a_signal_inside_a_deferred_section_is_raised_when_the_section_ends():
    signals = StopSignals().install()
    try:
        steps = []
        with pytest.raises(Stopped) as info:
            with signals.deferred():
                _deliver(signal.SIGTERM)
                steps.append("the write went on")
        assert steps == ["the write went on"]
        assert info.value.signum == signal.SIGTERM and describe(info.value) == "SIGTERM"
    finally:
        signals.restore()


def test_a_signal_outside_is_raised_at_once_and_named():
    signals = StopSignals().install()
    try:
        with pytest.raises(Stopped) as info:
            _deliver(signal.SIGTERM)
            raise AssertionError("SIGTERM was not raised")
        assert describe(info.value) == "SIGTERM"
        _deliver(signal.SIGTERM)  # already stopping: a second signal does not cut the exit short
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_ctrl_c_is_called_ctrl_c():
    assert describe(KeyboardInterrupt()) == "Ctrl-C"
    assert describe(Stopped(signal.SIGINT)) == "Ctrl-C"


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        signals = StopSignals().install()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signals.restore()
    finally:
        signal.signal(signal.SIGINT, previous)
