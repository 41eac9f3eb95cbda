"""The server's bounded pool of receive buffers: O(model x pool) memory, however many clients
send at once."""

from __future__ import annotations

import threading

import numpy as np

from ..deadline import Deadline, wait_until
from ..errors import NetworkError, ProtocolError


class NoBufferFree(NetworkError):
    """No receive buffer came free before the deadline."""


class BufferPool:
    """A bounded set of reusable receive buffers.

    The server receives each client's update into a buffer from here, folds it into the running
    aggregate, and gives the buffer back. At most ``size`` buffers ever exist, so server memory is
    O(model x size) however many clients send at once: the others wait in ``acquire`` (their bytes
    wait in the kernel's socket buffers, which is TCP's own back-pressure). ``max_nbytes`` (the
    model's frame) caps every buffer: a bigger request is refused, so no buffer ever grows to
    what a peer declared.
    """

    def __init__(self, size: int = 2, max_nbytes: int | None = None):
        if size < 1:
            raise ValueError(f"buffer pool size must be at least 1; received {size}")
        self.size = size
        self.max_nbytes = max_nbytes
        self._free: list[np.ndarray] = []
        self._created = 0
        self._in_use = 0
        self.peak_in_use = 0
        self.largest = 0  # bytes of the biggest buffer ever made
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, timeout: float | None = None) -> np.ndarray:
        if self.max_nbytes is not None and nbytes > self.max_nbytes:
            raise ProtocolError(f"a receive buffer of {nbytes} bytes was asked for; the largest "
                                f"message expected is {self.max_nbytes} bytes")
        lent: list[np.ndarray] = []

        def take() -> bool:  # called with the lock held
            for i, buf in enumerate(self._free):
                if buf.nbytes >= nbytes:
                    self._free.pop(i)
                    lent.append(self._lend(buf, nbytes))
                    return True
            if self._created < self.size:
                self._created += 1
                lent.append(self._lend(self._new(nbytes), nbytes))
                return True
            if self._free:  # every idle buffer is too small: replace one
                self._free.pop(0)
                lent.append(self._lend(self._new(nbytes), nbytes))
                return True
            return False

        with self._cond:  # release() notifies: the wait ends as soon as a buffer is back
            if not wait_until(take, Deadline(timeout), sleep=self._cond.wait, poll=1.0):
                raise NoBufferFree(f"no receive buffer free after {timeout:g} s")
        return lent[0]

    def _new(self, nbytes: int) -> np.ndarray:
        self.largest = max(self.largest, nbytes)
        return np.empty(nbytes, dtype=np.uint8)

    def _lend(self, buf: np.ndarray, nbytes: int) -> np.ndarray:
        self._in_use += 1
        self.peak_in_use = max(self.peak_in_use, self._in_use)
        # Hand out an exact-size view; release() finds the owner through .base.
        return buf[:nbytes]

    def release(self, view: np.ndarray) -> None:
        owner = view.base if view.base is not None else view
        with self._cond:
            self._in_use -= 1
            self._free.append(owner)
            self._cond.notify()

    @property
    def in_use(self) -> int:
        return self._in_use
