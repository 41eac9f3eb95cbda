"""One deadline object and one wait helper, used from the round down to a socket read.

A :class:`Deadline` is a point on the monotonic clock (or none at all). The round driver makes
one per round; the session takes it with the job and hands it to ``Channel.receive``, so the
round, the session's buffer wait and its socket read all end at the same instant. Every
"wait until this is true, or the deadline passes, saying something now and then" loop in the
package is :func:`wait_until`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable


class Deadline:
    """``Deadline(seconds)`` from now; ``Deadline(None)`` never expires."""

    __slots__ = ("at", "seconds")

    def __init__(self, seconds: float | None = None):
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    @classmethod
    def at_time(cls, monotonic: float | None) -> "Deadline":
        """The deadline at a ``time.monotonic()`` value (None: never)."""
        deadline = cls(None)
        if monotonic is not None:
            deadline.at = monotonic
            # For messages ("the round's 0.5 s deadline"): the span, to the millisecond.
            deadline.seconds = round(max(0.0, monotonic - time.monotonic()), 3)
        return deadline

    @classmethod
    def of(cls, value: "Deadline | float | None") -> "Deadline":
        """A Deadline from a Deadline, a ``time.monotonic()`` value, or None (never)."""
        return value if isinstance(value, Deadline) else cls.at_time(value)

    @property
    def bounded(self) -> bool:
        return self.at is not None

    def remaining(self) -> float | None:
        """Seconds left, never negative; None when there is no deadline."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def timeout(self, cap: float | None = None) -> float | None:
        """What to pass a blocking call: the time left, at most ``cap`` (None: unbounded)."""
        remaining = self.remaining()
        if remaining is None:
            return cap
        return remaining if cap is None else min(cap, remaining)

    def describe(self) -> str:
        """``"12 s left"`` or ``"no deadline"``, for progress lines."""
        remaining = self.remaining()
        return "no deadline" if remaining is None else f"{math.ceil(remaining)} s left"

    def __repr__(self) -> str:
        return f"Deadline({self.describe()})"


NEVER = Deadline(None)


def wait_until(done: Callable[[], bool], deadline: Deadline = NEVER, *,
               sleep: Callable[[float], Any] = time.sleep, poll: float = 0.05,
               every: float | None = None, tick: Callable[[], None] | None = None) -> bool:
    """Wait until ``done()`` is true (True) or ``deadline`` passes (False).

    ``sleep(seconds)`` waits between checks: ``time.sleep``, or a held ``Condition.wait`` /
    ``Event.wait`` so a notify wakes it at once (``poll`` then only bounds a missed wake-up).
    ``tick()`` is called every ``every`` seconds while waiting, for "still waiting for ..."
    lines; the first one comes after ``every`` seconds.
    """
    next_tick = None if every is None or tick is None else time.monotonic() + every
    while True:
        if done():
            return True
        if deadline.expired():
            return False
        step = poll
        if next_tick is not None:
            now = time.monotonic()
            if now >= next_tick:
                tick()
                next_tick = now + every
                continue  # tick may take time: look again before sleeping
            step = min(step, next_tick - now)
        sleep(deadline.timeout(step))
