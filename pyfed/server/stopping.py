"""Stopping the server by a signal: Ctrl-C (SIGINT) and SIGTERM end training the same way,
each reported by its own name, and neither may cut a checkpoint write in half.

Python runs signal handlers in the main thread between bytecodes, so a handler that raises can
interrupt any Python code, ``np.savez`` in the middle of a checkpoint included: the temporary file
is then deleted and the previous checkpoint stays, while the round counter says one more was
saved. :meth:`StopSignals.deferred` marks such a section: a signal arriving inside it is held
and raised as soon as the section ends, so the write either completes or never starts.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Stopped(KeyboardInterrupt):
    """Training was stopped by ``signum`` (a KeyboardInterrupt, so Ctrl-C code paths apply)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def describe(stop: BaseException) -> str:
    """How a stop reads in a message: "Ctrl-C" for SIGINT, else the signal's name."""
    signum = getattr(stop, "signum", signal.SIGINT)
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopSignals:
    """Handlers for SIGTERM (and SIGINT, where Python's default Ctrl-C handler is installed)
    that raise :class:`Stopped`, except inside :meth:`deferred` sections."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._depth = 0
        self._pending: int | None = None
        self._stopping = False

    def install(self) -> "StopSignals":
        # Only the main thread may install handlers; elsewhere signals are not ours to handle.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                current = signal.getsignal(signum)
                # A SIGINT the user ignores (SIG_IGN) or handles themselves stays theirs.
                if signum == signal.SIGINT and current is not signal.default_int_handler:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self._stopping = False

    def _handle(self, signum, frame) -> None:
        if self._stopping:
            return  # already on the way out (bounded); a second signal must not cut that short
        if self._depth:
            if self._pending is None:
                self._pending = signum
            return
        self._stopping = True
        raise Stopped(signum)

    @contextlib.contextmanager
    def deferred(self):
        """A section no stop signal interrupts; one that arrived meanwhile is raised at its end
        (after the section's own exception handling, so its work is complete or undone)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                signum, self._pending = self._pending, None
                self._stopping = True
                raise Stopped(signum)
