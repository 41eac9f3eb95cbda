"""The benchmark's child processes: each started as ``python -m benchmarks.child ROLE ...``
with this checkout on its PYTHONPATH, and each ended by its PID."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_pythonpath() -> str:
    # A PYTHONPATH you set comes first (e.g. a patched copy of pyfed); this checkout after it.
    return os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))


class Children:
    """The processes one phase starts; each is ended by its PID and reaped in ``close``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def spawn(self, label: str, role: str, *args: str, pipes: bool = False) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = child_pythonpath()
        stderr = open(self.workdir / f"{label}.stderr", "wb")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.child", role, *args],
                                    cwd=self.workdir,
                                    stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if pipes else stderr,
                                    stderr=stderr, env=env)
        finally:
            stderr.close()
        self.procs.append((label, proc))
        return proc

    def check_alive(self) -> None:
        for label, proc in self.procs:
            code = proc.poll()
            if code not in (None, 0):
                raise RuntimeError(f"{label} (pid {proc.pid}) exited with {code}:\n{self.tail(label)}")

    def tail(self, label: str, lines: int = 15) -> str:
        try:
            text = (self.workdir / f"{label}.stderr").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_all(self, deadline: float) -> None:
        for label, proc in self.procs:
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"{label} (pid {proc.pid}) still running at the deadline") from None
            if code != 0:
                raise RuntimeError(f"{label} (pid {proc.pid}) exited with {code}:\n{self.tail(label)}")

    def kill_all(self) -> None:
        """Used by the watchdog: SIGKILL by PID, which also unblocks our own socket calls."""
        for _, proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()

    def close(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.terminate()
        for label, proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    print(f"warning: {label} (pid {proc.pid}) survived SIGKILL", file=sys.stderr)
        for _, proc in self.procs:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


class ServerLines:
    """The ``BENCH <word> ...`` lines a server child prints on its stdout (spawned with
    ``pipes=True``), read by a thread so that waiting for one stays bounded."""

    def __init__(self, children: Children, server: subprocess.Popen, label: str = "server"):
        self.children, self.label = children, label
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(server.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for raw in stream:  # ends at EOF, when the server exits or is killed
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def expect(self, word: str, deadline: float) -> str:
        """The rest of the next ``BENCH <word>`` line; raises if the server dies or is late."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.label}: no {word!r} before the deadline")
            try:
                line = self.lines.get(timeout=min(1.0, remaining))
            except queue.Empty:
                self.children.check_alive()
                continue
            if line is None:
                self.children.check_alive()
                raise RuntimeError(f"{self.label} closed its stdout before {word!r}:\n"
                                   f"{self.children.tail('server')}")
            if line.startswith(f"BENCH {word}"):
                return line[len(f"BENCH {word}"):].strip()
