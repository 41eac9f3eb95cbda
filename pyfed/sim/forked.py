"""How FL_Experiment's local backend starts its parties: forked from one warm process, or spawned.

Where the time to the first round went (digits, ``digits_model``, this 2-core machine): a Keras
party spends 5-7 s of CPU importing TensorFlow; everything else it does before round 1 (its
payload, model build and compile, connect, handshake) takes well under a second. The clients
were started side by side, but only once the server child had imported TensorFlow and was
listening, and ten imports side by side on two cores take ten times one: ~13 s until one client
was ready to train, ~50 s for ten.

So on Linux the experiment starts a fork server (:mod:`pyfed.sim.forkserver`), which imports
``pyfed``'s server and client and the model's library (Keras, scikit-learn) once, then forks the
server and, once it listens, every client. One TensorFlow import for the whole experiment: the
parties start warm and in parallel, and share the imported modules' memory pages until they
write to them.

What it risks, and what guards against it:

- A library that keeps state a fork breaks (threads, locks, CUDA). The fork server runs no
  TensorFlow op, so TensorFlow has no thread pool, eager context or CUDA context yet; PyFed's
  quiet import defers its device probe to each party for this reason. The only threads are
  OpenBLAS's, whose fork handlers make it safe (as numpy with multiprocessing's fork relies on).
  A user's own modules are imported after the fork, by unpickling, never before it.
- State a fork would share: numpy's global random state is reseeded in each party; Python's
  ``random`` reseeds itself on fork; a ``seed`` set for the experiment is applied per party,
  after the fork, exactly as in a spawned one.
- Processes: the fork server is the parties' parent and their only reaper; it reports each
  party's PID and exit code here and signals a party only while it has not reaped it (so a PID
  is never reused under a signal). Closing it terminates, kills if need be, and reaps every
  party within bounded waits; if it dies anyway, Linux kills its parties
  (``PR_SET_PDEATHSIG``). A crashed party is reported with its exit code, as before.
- One more process per experiment, holding the imported modules (~0.6 GB RSS with Keras, most
  of it shared with the parties) until the experiment ends.
- Platforms: fork is the default on Linux only (macOS's system libraries are not fork-safe;
  Python itself moved macOS to "spawn"). ``PYFED_START_METHOD=spawn`` brings back the old
  start (fresh interpreters; the clients once the server listens) anywhere, e.g. if a library
  misbehaves after fork; ``PYFED_START_METHOD=fork`` asks for the fork server.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable

import cloudpickle

from ..errors import ConfigurationError

START_METHOD_VARIABLE = "PYFED_START_METHOD"
FORK, SPAWN = "fork", "spawn"
# What every forked party needs, and what its model's kind adds (imported once, before forks).
PARTY_MODULES = ["cloudpickle", "numpy", "pyfed.client.fl_client", "pyfed.server.fl_server",
                 "pyfed.sim.child"]
MODEL_MODULES = {
    "keras": ["keras", "pyfed.models.keras_adapter", "tensorboard.compat.proto.event_pb2",
              "tensorboard.compat.proto.summary_pb2",
              "tensorboard.summary.writer.record_writer"],
    "sklearn": ["sklearn", "pyfed.models.sklearn_adapter"],
}
# How long closing waits for the fork server, beyond its own grace for the parties (5 + 5 s).
CLOSE_SECONDS = 20.0


def start_method() -> str:
    chosen = os.environ.get(START_METHOD_VARIABLE, "").strip().lower()
    can_fork = hasattr(os, "fork") and sys.platform.startswith("linux")
    if not chosen:
        return FORK if can_fork else SPAWN
    if chosen not in (FORK, SPAWN):
        raise ConfigurationError(f"{START_METHOD_VARIABLE}={chosen!r}: use 'fork' or 'spawn'")
    if chosen == FORK and not can_fork:
        raise ConfigurationError(f"{START_METHOD_VARIABLE}=fork: the fork server needs Linux; "
                                 "use 'spawn' here")
    return chosen


class PartyLauncher:
    """Starts the server and the clients by the chosen method. ``spawn_server(spec)`` and
    ``spawn_client(name, spec)`` start them the old way; ``reports(fd)`` reads the server's."""

    def __init__(self, model_kind: str | None, spawn_server: Callable, spawn_client: Callable,
                 reports: Callable):
        self._spawn_server, self._spawn_client, self._reports = spawn_server, spawn_client, reports
        self.method = start_method()
        self.forks = None
        if self.method == FORK:
            self.forks = ForkServer(PARTY_MODULES + MODEL_MODULES.get(model_kind, []))

    def start_server(self, spec: dict):
        """``(party, reports)``: the server and its JSON-line reports."""
        if self.forks is None:
            return self._spawn_server(spec)
        read_end, write_end = os.pipe()
        try:
            party = self.forks.start("server", spec, report_fd=write_end)
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        return party, self._reports(read_end)

    def start_client(self, name: str, spec: dict):
        if self.forks is None:
            return self._spawn_client(name, spec)
        return self.forks.start(name, spec)

    def close(self) -> None:
        if self.forks is not None:
            self.forks.close()


class ForkedParty:
    """A forked party, as the experiment sees a spawned one: name, pid, exit code, signals."""

    def __init__(self, name: str, server: "ForkServer"):
        self.name = name
        self.pid: int | None = None  # once the fork server has forked it
        self._server = server
        self._code: int | None = None

    @property
    def exitcode(self) -> int | None:
        return self._code

    def wait(self, timeout: float) -> int | None:
        with self._server.changed:
            self._server.changed.wait_for(lambda: self._code is not None, timeout)
            return self._code

    def terminate(self) -> None:
        self._server.signal(self, signal.SIGTERM)

    def kill(self) -> None:
        self._server.signal(self, signal.SIGKILL)

    def close(self) -> None:
        pass  # nothing of its own: the fork server's socket is closed with the server


class ForkServer:
    """The experiment's side of :mod:`pyfed.sim.forkserver`: one child process, its control
    socket, a thread that sends the requests (so a busy server never blocks the experiment) and
    one that reads its events."""

    def __init__(self, preload: list[str]):
        ours, theirs = socket.socketpair()
        try:
            sys.stdout.flush()  # its parties write to the same terminal: keep the lines in order
            sys.stderr.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyfed.sim.forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # only the fork server holds it now: its death shows up as EOF here
        self._socket = ours
        self.changed = threading.Condition()
        self._asked: dict[str, ForkedParty] = {}  # by name, until forked
        self._forked: dict[int, ForkedParty] = {}  # by pid
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_requests, daemon=True,
                                        name="pyfed-forkserver-requests")
        self._reader = threading.Thread(target=self._read_events, daemon=True,
                                        name="pyfed-forkserver-events")
        self._sender.start()
        self._reader.start()
        sys_path = [p for p in sys.path if isinstance(p, str)]
        self._post({"sys_path": sys_path, "preload": preload})

    def start(self, name: str, spec: dict, report_fd: int | None = None) -> ForkedParty:
        """Ask for one party. ``report_fd`` (the server's report pipe) goes with the request and
        is closed here once sent: the forked server alone holds it then, so its death is EOF."""
        party = ForkedParty(f"pyfed-{name}", self)
        payload = cloudpickle.dumps(spec)
        with self.changed:
            self._asked[name] = party
        self._post({"fork": name, "size": len(payload), "report_fd": report_fd is not None},
                   payload, report_fd)
        return party

    def signal(self, party: ForkedParty, signum: int) -> None:
        """Through the fork server, which signals the pid only if it has not reaped it."""
        with self.changed:
            if party.pid is None or party.exitcode is not None:
                return
        self._post({"signal": party.pid, "signum": int(signum)})

    def close(self) -> None:
        """Stop the fork server: it terminates, kills if need be, and reaps every party, and
        reports their exit codes before it exits. Bounded; killed if it does not exit."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its parties die with it (PR_SET_PDEATHSIG)
            self.process.wait(timeout=10)
        self._outbox.put(None)
        self._reader.join(timeout=10)
        self._sender.join(timeout=10)
        self._socket.close()
        self._settle_unreported()

    def _post(self, header: dict, payload: bytes = b"", fd: int | None = None) -> None:
        self._outbox.put((json.dumps(header).encode() + b"\n" + payload, fd))

    def _send_requests(self) -> None:
        gone = False
        while (message := self._outbox.get()) is not None:
            data, fd = message
            try:
                if not gone and fd is not None:  # the descriptor rides on the first bytes
                    sent = socket.send_fds(self._socket, [data[:1]], [fd])
                    data = data[sent:]
                if not gone:
                    self._socket.sendall(data)
            except OSError:  # the fork server is gone; its exit tells why
                gone = True
            finally:
                if fd is not None:
                    os.close(fd)

    def _read_events(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._socket.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._on_event(json.loads(line))
        self._settle_unreported()

    def _on_event(self, event: dict) -> None:
        with self.changed:
            if event.get("event") == "forked":
                party = self._asked.pop(event["name"])
                party.pid = int(event["pid"])
                self._forked[party.pid] = party
            elif event.get("event") == "exited":
                self._forked[int(event["pid"])]._code = int(event["code"])
            self.changed.notify_all()

    def _settle_unreported(self) -> None:
        """The fork server has ended: a party it never reported as exited died with it
        (SIGKILL), and one it never forked never started (exit code 1)."""
        with self.changed:
            for party in self._forked.values():
                if party._code is None:
                    party._code = -signal.SIGKILL
            for party in self._asked.values():
                party._code = 1
            self._asked.clear()
            self.changed.notify_all()
