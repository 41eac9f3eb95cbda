"""FL_Experiment's fork server: ``python -m pyfed.sim.forkserver FD``, one per experiment.

Why: a Keras client spends 5-7 s of CPU importing TensorFlow before it does anything. Ten
clients started side by side on a 2-core machine queue for ~50 s of imports. This process pays
the import once, then forks one process per client on request, so every client starts warm.

What it imports before forking: modules only (``pyfed``'s client, ``keras`` or scikit-learn as
the model needs, cloudpickle). It never runs a TensorFlow op, so no TensorFlow thread pool, eager
context or CUDA context exists yet to be broken by the fork. The only threads here are
OpenBLAS's, which its fork handlers take care of. TensorFlow's device probe (which PyFed's quiet
import runs and which initializes CUDA on a GPU machine) is deferred to the forked clients
(:func:`pyfed.tf_quiet.defer_device_probe`).

Each forked client is a real, separate process with its own connection to the server, like a
spawned one: it never runs the user's script; its payload (cloudpickle, with the user's
``__main__`` functions by value) is unpickled after the fork; it reseeds numpy's global random
state (a fork would share it) and restores the default SIGINT and SIGTERM handling; it closes
this server's descriptors; and it asks the kernel to kill it if this server dies
(``PR_SET_PDEATHSIG``), so it can never outlive the experiment. It ends through the normal
interpreter exit, as ``python -m pyfed.sim.child client`` would.

This process is the clients' parent, so it alone reaps them (no PID of a client can be reused
while the experiment may still signal it): it reports every fork and every exit code to the
experiment, and signals a client only on the experiment's request and only while it has not
reaped it. SIGTERM, or the end of its control socket, ends it: it terminates its live clients,
kills those still running after a few seconds, reaps them all and exits. It ignores SIGINT: on
Ctrl-C the experiment (and the terminal, for the clients) decides.

The control socket (an AF_UNIX socketpair with the experiment, never a network socket) carries,
towards this process, JSON lines, each fork request followed by its payload bytes:
``{"sys_path": [...], "preload": [...]}``, ``{"fork": name, "size": n}``,
``{"signal": pid, "signum": n}``; back, JSON lines: ``{"event": "ready"}``,
``{"event": "forked", "name", "pid"}``, ``{"event": "exited", "pid", "code"}``.
Risks are in ``pyfed/sim/forked.py``'s docstring; ``PYFED_START_METHOD=spawn`` turns this off.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time

# After SIGTERM (or the experiment gone), how long clients get before SIGKILL, and the bound on
# reaping them after that.
TERMINATE_GRACE_SECONDS = 5.0
REAP_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


class ForkServer:
    def __init__(self, control: socket.socket):
        self.control = control
        self.buffer = bytearray()
        self.children: dict[int, str] = {}  # live (not yet reaped) pid -> client name
        self.stopping = False
        self.pid = os.getpid()
        self.wakeup_read, self.wakeup_write = os.pipe()

    def send(self, **event) -> None:
        try:
            self.control.sendall(json.dumps(event).encode() + b"\n")
        except OSError:  # the experiment is gone: the EOF ends the loop
            pass

    def prepare(self) -> None:
        """Read the first request (the parent's sys.path and the modules to preload); import."""
        while (request := self._complete_request()) is None:
            if not self._receive():
                raise SystemExit(0)  # the experiment ended before sending anything
        sys.path[:] = [entry for entry in request[0]["sys_path"] if isinstance(entry, str)]
        from .. import tf_quiet

        tf_quiet.defer_device_probe()
        for name in request[0]["preload"]:
            importlib.import_module(name)
        gc.collect()
        gc.freeze()  # the clients' collectors leave these objects (and their shared pages) alone
        for os_fd in (self.wakeup_read, self.wakeup_write):
            os.set_blocking(os_fd, False)
        signal.set_wakeup_fd(self.wakeup_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select() through the pipe
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.send(event="ready")

    def _on_sigterm(self, *_) -> None:
        self.stopping = True

    def serve(self) -> tuple[str, bytes] | None:
        """Fork clients until told to stop. Returns ``(name, payload)`` in a forked client,
        ``None`` in this server once every client is reaped."""
        while not self.stopping:
            while (request := self._complete_request()) is not None:
                header, payload = request
                if "fork" in header:
                    sys.stdout.flush()  # nothing buffered here may be written twice
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        return str(header["fork"]), payload
                    self.children[pid] = str(header["fork"])
                    self.send(event="forked", name=header["fork"], pid=pid)
                elif header.get("signal") in self.children:  # never a pid already reaped
                    _signal(header["signal"], int(header["signum"]))
            self._reap()
            # Bounded, though SIGCHLD and SIGTERM wake it at once through the wakeup pipe.
            readable = select.select([self.control, self.wakeup_read], [], [], 1.0)[0]
            if self.wakeup_read in readable:
                _drain(self.wakeup_read)
            if self.control in readable and not self._receive():
                break  # EOF: the experiment is done (or gone)
        self.stop()
        return None

    def _receive(self) -> bool:
        chunk = self.control.recv(1 << 20)
        self.buffer += chunk
        return bool(chunk)

    def _complete_request(self) -> tuple[dict, bytes] | None:
        line_end = self.buffer.find(b"\n")
        if line_end < 0:
            return None
        header = json.loads(self.buffer[:line_end])
        end = line_end + 1 + int(header.get("size", 0))
        if len(self.buffer) < end:
            return None
        payload = bytes(self.buffer[line_end + 1:end])
        del self.buffer[:end]
        return header, payload

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.pop(pid, None)
            self.send(event="exited", pid=pid, code=os.waitstatus_to_exitcode(status))

    def stop(self) -> None:
        """Terminate the live clients, kill what is left after the grace period; reap all."""
        self._reap()
        for pid in list(self.children):
            _signal(pid, signal.SIGTERM)
        for grace, signum in ((TERMINATE_GRACE_SECONDS, signal.SIGKILL), (REAP_SECONDS, None)):
            deadline = time.monotonic() + grace
            while self.children and time.monotonic() < deadline:
                time.sleep(0.05)
                self._reap()
            if signum is not None:
                for pid in list(self.children):
                    _signal(pid, signum)

    def become_client(self) -> None:
        """In a forked client: drop everything of this server's, as a fresh process would."""
        signal.set_wakeup_fd(-1)
        for signum, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
                                (signal.SIGINT, signal.default_int_handler)):
            signal.signal(signum, handler)
        self.control.close()
        os.close(self.wakeup_read)
        os.close(self.wakeup_write)
        self.children.clear()
        _die_with(self.pid)
        import numpy as np

        np.random.seed()  # from the OS's entropy, as a fresh interpreter would start
        from .. import tf_quiet

        tf_quiet.probe_devices()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # already exited, not yet reaped: nothing to do
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _die_with(server_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the fork server dies, then check it has not."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the server's SIGTERM/EOF handling remains
        return
    if os.getppid() != server_pid:  # the server died between the fork and the prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = ForkServer(socket.socket(fileno=int(argv[0])))
    server.prepare()
    forked = server.serve()
    if forked is None:
        return 0
    # A client from here on. No try/finally of the server's lies between the fork and here.
    name, payload = forked
    server.become_client()
    from . import child

    try:
        import cloudpickle

        return child.run_client(cloudpickle.loads(payload))
    except KeyboardInterrupt:  # Ctrl-C reaches every party; the experiment says what happened
        return 130


if __name__ == "__main__":
    sys.exit(main())
