"""How FL_Experiment's local backend starts its clients: forked from one warm process, or spawned.

Where the time to the first round went (digits, ``digits_model``, a 2-core machine): a Keras
party spends 5-7 s of CPU importing TensorFlow, everything else it does before round 1 (payload,
model build and compile, connect, handshake) takes well under a second. The clients were
already started side by side, but only after the server child had imported TensorFlow and was
listening, and ten imports side by side on two cores take ten times as long: ~13.5 s to round 1
with one client, ~52 s with ten.

So on Linux the experiment starts a fork server (:mod:`pyfed.sim.forkserver`) at the same time
as the server child. It imports ``pyfed``'s client and the model's library (Keras,
scikit-learn) once, while the server imports its own, and forks each client on request once
the server listens. The clients start warm, in parallel, and share the imported modules'
memory pages until they write to them.

What it risks, and what guards against it:

- A library that keeps state a fork breaks (threads, locks, CUDA). The fork server runs no
  TensorFlow op, so TensorFlow has no thread pool, eager context or CUDA context yet; PyFed's
  quiet import defers its device probe to each client for this reason. The only threads are
  OpenBLAS's, whose fork handlers make it safe (as numpy with multiprocessing's fork relies on).
  A user's own modules are imported after the fork, by unpickling, never before it.
- State a fork would share: numpy's global random state is reseeded in each client; Python's
  ``random`` reseeds itself on fork; a ``seed`` set for the experiment is applied per client,
  after the fork, exactly as in a spawned client.
- Processes: the fork server is the clients' parent and their only reaper; it reports each
  client's PID and exit code here and signals a client only while it has not reaped it (so a PID
  is never reused under a signal). Closing it terminates, kills if need be, and reaps every
  client within bounded waits; if it dies anyway, Linux kills its clients
  (``PR_SET_PDEATHSIG``). A crashed client is reported with its exit code, as before.
- Platforms: fork is the default on Linux only (macOS's system libraries are not fork-safe;
  Python itself moved macOS to "spawn"). ``PYFED_START_METHOD=spawn`` brings back the old
  start (one fresh interpreter per client after the server listens) anywhere, e.g. if a library
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
# What every forked client needs, and what its model's kind adds (imported once, before forks).
CLIENT_MODULES = ["cloudpickle", "numpy", "pyfed.client.fl_client", "pyfed.sim.child"]
MODEL_MODULES = {
    "keras": ["keras", "pyfed.models.keras_adapter", "tensorboard.compat.proto.event_pb2",
              "tensorboard.compat.proto.summary_pb2",
              "tensorboard.summary.writer.record_writer"],
    "sklearn": ["sklearn", "pyfed.models.sklearn_adapter"],
}
# How long closing waits for the fork server, beyond its own grace for the clients (5 + 5 s).
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


class ClientLauncher:
    """Starts the clients by the chosen method. ``spawn(name, spec)`` starts one the old way."""

    def __init__(self, model_kind: str | None, spawn: Callable):
        self._spawn = spawn
        self.method = start_method()
        self.forks = None
        if self.method == FORK:
            self.forks = ForkServer(CLIENT_MODULES + MODEL_MODULES.get(model_kind, []))

    def start_client(self, name: str, spec: dict):
        if self.forks is None:
            return self._spawn(name, spec)
        return self.forks.start_client(name, spec)

    def close(self) -> None:
        if self.forks is not None:
            self.forks.close()


class ForkedParty:
    """A forked client, as the experiment sees a spawned one: name, pid, exit code, signals."""

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
            sys.stdout.flush()  # its clients write to the same terminal: keep the lines in order
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

    def start_client(self, name: str, spec: dict) -> ForkedParty:
        party = ForkedParty(f"pyfed-{name}", self)
        payload = cloudpickle.dumps(spec)
        with self.changed:
            self._asked[name] = party
        self._post({"fork": name, "size": len(payload)}, payload)
        return party

    def signal(self, party: ForkedParty, signum: int) -> None:
        """Through the fork server, which signals the pid only if it has not reaped it."""
        with self.changed:
            if party.pid is None or party.exitcode is not None:
                return
        self._post({"signal": party.pid, "signum": int(signum)})

    def close(self) -> None:
        """Stop the fork server: it terminates, kills if need be, and reaps every client, and
        reports their exit codes before it exits. Bounded; killed if it does not exit."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its clients die with it (PR_SET_PDEATHSIG)
            self.process.wait(timeout=10)
        self._outbox.put(None)
        self._reader.join(timeout=10)
        self._sender.join(timeout=10)
        self._socket.close()
        self._settle_unreported()

    def _post(self, header: dict, payload: bytes = b"") -> None:
        self._outbox.put(json.dumps(header).encode() + b"\n" + payload)

    def _send_requests(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._socket.sendall(message)
            except OSError:  # the fork server is gone; its exit tells why
                return

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
        """The fork server has ended: a client it never reported as exited died with it
        (SIGKILL), and one it never forked never started (exit code 1)."""
        with self.changed:
            for party in self._forked.values():
                if party._code is None:
                    party._code = -signal.SIGKILL
            for party in self._asked.values():
                party._code = 1
            self._asked.clear()
            self.changed.notify_all()
