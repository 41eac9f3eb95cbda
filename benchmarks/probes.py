"""What the benchmarks read from the running processes: /proc (memory, threads, listen-queue
overflows), CPU time and page faults, and wall time of wrapped calls."""

from __future__ import annotations

import resource
import time


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (bytes) and Threads of a process, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
            elif key == "Threads":
                values[key] = int(rest.split()[0])
    return values


def cpu_and_faults() -> tuple[float, int]:
    """This process's CPU seconds (user + system, all threads) and minor page faults so far."""
    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def listen_overflows() -> int | None:
    """TcpExt ListenOverflows of this network namespace: connections the kernel could not queue
    for accept() because a listen backlog was full (their handshakes are retried 1 s, 3 s, ... later)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def timed(store, fn):
    """``fn`` wrapped to pass its wall time in seconds to ``store``, even when it raises."""
    def wrapper(*a, **k):
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            store(time.perf_counter() - start)
    return wrapper
