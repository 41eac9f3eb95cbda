"""FL_Experiment's fork server: ``python -m pyfed.sim.forkserver FD``, one per experiment.

Why: a Keras party spends 5-7 s of CPU importing TensorFlow before it does anything. A server
and ten clients started side by side on a 2-core machine queue for ~50 s of imports. This
process pays the import once, then forks the server and one process per client on request, so
every party starts warm.

What it imports before forking: modules only (``pyfed``'s server and client, ``keras`` or
scikit-learn as the model needs, cloudpickle). It never runs a TensorFlow op, so no TensorFlow
thread pool, eager context or CUDA context exists yet to be broken by the fork. The only threads
here are OpenBLAS's, which its fork handlers take care of. TensorFlow's device probe (which
PyFed's quiet import runs and which initializes CUDA on a GPU machine) is deferred to the forked
parties (:func:`pyfed.tf_quiet.defer_device_probe`).

Each forked party is a real, separate process (the clients with their own connections to the
server), like a spawned one: it never runs the user's script; its payload (cloudpickle, with
the user's ``__main__`` functions by value) is unpickled after the fork; it reseeds numpy's
global random state (a fork would share it) and restores the default SIGINT and SIGTERM
handling; it closes this process's descriptors; and it asks the kernel to kill it if this
process dies (``PR_SET_PDEATHSIG``), so it can never outlive the experiment. It ends through the
normal interpreter exit, as ``python -m pyfed.sim.child`` would. The server's report pipe comes
with its request (SCM_RIGHTS); this process closes its copy once the server is forked.

This process is the parties' parent, so it alone reaps them (no PID of a party can be reused
while the experiment may still signal it): it reports every fork and every exit code to the
experiment, and signals a party only on the experiment's request and only while it has not
reaped it. SIGTERM, or the end of its control socket, ends it: it terminates its live parties,
kills those still running after a few seconds, reaps them all and exits. It ignores SIGINT: on
Ctrl-C the experiment (and the terminal, for the parties) decides.

The control socket (an AF_UNIX socketpair with the experiment, never a network socket) carries,
towards this process, JSON lines, each fork request followed by its payload bytes:
``{"sys_path": [...], "preload": [...]}``, ``{"fork": name, "size": n, "report_fd": bool}``,
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

# After SIGTERM (or the experiment gone), how long parties get before SIGKILL, and the bound on
# reaping them after that.
TERMINATE_GRACE_SECONDS = 5.0
REAP_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


class ForkServer:
    def __init__(self, control: socket.socket):
        self.control = control
        self.buffer = bytearray()
        self.children: dict[int, str] = {}  # live (not yet reaped) pid -> party name
        self.stopping = False
        self.received_fds: list[int] = []  # passed with a request (SCM_RIGHTS), in order
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
        gc.freeze()  # the parties' collectors leave these objects (and their shared pages) alone
        for os_fd in (self.wakeup_read, self.wakeup_write):
            os.set_blocking(os_fd, False)
        signal.set_wakeup_fd(self.wakeup_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select() through the pipe
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.send(event="ready")

    def _on_sigterm(self, *_) -> None:
        self.stopping = True

    def serve(self) -> tuple[str, bytes, int | None] | None:
        """Fork parties until told to stop. Returns ``(name, payload, report_fd)`` in a forked
        party, ``None`` in this fork server once every party is reaped."""
        while not self.stopping:
            while (request := self._complete_request()) is not None:
                header, payload = request
                if "fork" in header:
                    # The server's report pipe came with its request; the server alone keeps it.
                    report_fd = self.received_fds.pop(0) if header.get("report_fd") else None
                    sys.stdout.flush()  # nothing buffered here may be written twice
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        return str(header["fork"]), payload, report_fd
                    if report_fd is not None:
                        os.close(report_fd)
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
        chunk, fds, _, _ = socket.recv_fds(self.control, 1 << 20, 4)
        self.received_fds.extend(fds)
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
        """Terminate the live parties, kill what is left after the grace period; reap all."""
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

    def become_party(self) -> None:
        """In a forked party: drop everything of the fork server's, as a fresh process would."""
        signal.set_wakeup_fd(-1)
        for signum, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
                                (signal.SIGINT, signal.default_int_handler)):
            signal.signal(signum, handler)
        self.control.close()
        for fd in (self.wakeup_read, self.wakeup_write, *self.received_fds):
            os.close(fd)
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
    # A party from here on. No try/finally of the fork server's lies between the fork and here.
    _, payload, report_fd = forked
    server.become_party()
    from . import child

    try:
        import cloudpickle

        spec = cloudpickle.loads(payload)
        if report_fd is not None:  # the experiment's server
            return child.run_server(spec, child.Reporter(report_fd))
        return child.run_client(spec)
    except KeyboardInterrupt:  # Ctrl-C reaches every party; the experiment says what happened
        return 130


if __name__ == "__main__":
    sys.exit(main())
