"""Real processes for end-to-end tests: started, logged to files, and always reaped.

Every process a test starts goes through a ProcessGroup; leaving the ``with`` block (even on a
failed assertion) terminates whatever is still running by its PID, then kills and reaps it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROLES = Path(__file__).with_name("roles.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


class ProcessGroup:
    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list, cwd=None, env=None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env or child_env())
        log.close()  # the child holds its own descriptor
        self.procs[name] = proc
        return proc

    def role(self, name: str, *args, **kwargs) -> subprocess.Popen:
        """Start ``tests/roles.py <args>`` with this interpreter."""
        return self.start(name, [sys.executable, ROLES, *args], **kwargs)

    def output(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not finish within {timeout} s; output:\n"
                                 + self.output(name)[-4000:]) from None

    def wait_all(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        return {name: self.wait(name, max(0.1, deadline - time.monotonic())) for name in self.procs}

    def dump(self) -> str:
        return "\n".join(f"--- {name} (rc={p.poll()})\n{self.output(name)[-3000:]}"
                         for name, p in self.procs.items())

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
