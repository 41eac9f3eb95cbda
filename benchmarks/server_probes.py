"""What the benchmark's servers observe through ``FL_Server(..., callbacks=[...])``: the end of
each round's own work and its checkpoint (:class:`TimedCheckpointer`), the server's memory after
each of its steps (:class:`PhaseTracer`), each round's time and CPU (:class:`RoundTimer`), and
the overhead section's "go"/"done" pacing (:class:`GoAndTime`).

It imports PyFed's server: the server children import it after their start-up is measured, and
a client child never does."""

from __future__ import annotations

import gc
import resource
import sys
import time

from pyfed.callbacks import Checkpointer, ServerCallback

from .probes import cpu_and_faults, proc_status, reset_peak_rss


class IdleBaseline(ServerCallback):
    """The server's idle baseline, taken in ``on_train_begin``: listening, its run folder and
    TensorBoard writers open (the built-ins' ``on_train_begin`` ran first), no client yet. It
    collects garbage, reads VmRSS, resets VmHWM there, then calls ``ready(self)``: the place to
    tell the parent to start the clients, so their start-up does not compete with the
    server's."""

    def __init__(self, ready) -> None:
        self.ready = ready
        self.status: dict = {}
        self.hwm_reset = False
        self.at = self.cpu = 0.0  # time.time() and time.process_time() then

    @property
    def rss(self) -> int:
        return self.status.get("VmRSS", 0)

    def on_train_begin(self, server) -> None:
        gc.collect()
        self.status = proc_status()
        self.hwm_reset = reset_peak_rss()
        self.at, self.cpu = time.time(), time.process_time()
        self.ready(self)


class TimedCheckpointer(Checkpointer):
    """The built-in Checkpointer, in its place (after History and TensorBoard, before the
    progress printer and the user's callbacks). ``before(round)`` runs when the round's own
    work is over, History and TensorBoard included; ``after(round, seconds)`` once the
    checkpoint is written, with the time it took."""

    def __init__(self) -> None:
        super().__init__()
        self.before: list = []
        self.after: list = []

    def on_round_end(self, server, server_round: int, logs: dict) -> None:
        for listener in self.before:
            listener(server_round)
        start = time.perf_counter()
        try:
            super().on_round_end(server, server_round, logs)
        finally:
            seconds = time.perf_counter() - start
            for listener in self.after:
                listener(server_round, seconds)


def call_then(fn, before=None, after=None):
    """``fn`` with ``before()`` run ahead of it and ``after()`` once it returned or raised."""
    def wrapper(*a, **k):
        if before is not None:
            before()
        try:
            return fn(*a, **k)
        finally:
            if after is not None:
                after()
    return wrapper


class PhaseTracer(ServerCallback):
    """Notes VmHWM and VmRSS above the idle baseline as each server step ends, so a report can
    say which step set the peak:
    ``[round, step, peak, rss]`` rows in ``phases``. The steps, per round: ``begin``
    (strategy.begin), ``fold`` (every update folded: strategy.finish is called), ``finish``,
    ``set_weights``, ``round`` (History and TensorBoard written), ``checkpoint``; then
    ``final_model`` (saved: FINISH is about to go out) and ``FINISH``.

    Pass ``callbacks`` (it, its checkpointer and the baseline) to the server."""

    def __init__(self, baseline: IdleBaseline, checkpointer: TimedCheckpointer | None = None):
        self.baseline = baseline
        self.checkpointer = checkpointer or TimedCheckpointer()
        self.phases: list = []
        self.round = 0
        self.checkpointer.before.append(lambda server_round: self.note("round"))
        self.checkpointer.after.append(lambda server_round, seconds: self.note("checkpoint"))

    @property
    def callbacks(self) -> list:
        return [self.checkpointer, self, self.baseline]

    def note(self, step: str) -> None:
        status, baseline = proc_status(), self.baseline.rss
        self.phases.append([self.round, step, status["VmHWM"] - baseline,
                            status["VmRSS"] - baseline])

    def on_train_begin(self, server) -> None:
        # Wrappers on the strategy's, the model's and the gateway's public methods (instance
        # attributes: PyFed's classes are not changed).
        strategy, adapter, gateway = server.strategy, server.adapter, server.gateway
        strategy.begin = call_then(strategy.begin, after=lambda: self.note("begin"))
        strategy.finish = call_then(strategy.finish, before=lambda: self.note("fold"),
                                    after=lambda: self.note("finish"))
        adapter.set_weights = call_then(adapter.set_weights,
                                        after=lambda: self.note("set_weights"))
        gateway.close_to_new_clients = call_then(gateway.close_to_new_clients,
                                                 before=lambda: self.note("final_model"))

    def on_round_begin(self, server, server_round: int, clients: dict) -> None:
        self.round = server_round

    def on_train_end(self, server, history) -> None:
        self.note("FINISH")


class GoAndTime(ServerCallback):
    """The parent interleaves our rounds with the floor's: each round waits for its "go" and
    answers "done" once the checkpoint after it is written, so that never runs during (and
    slows) the floor's next round. Between the two it times the round: wall, CPU, page faults,
    and the validate and fold totals (``round_work_done`` is the TimedCheckpointer's
    ``before``)."""

    def __init__(self, timings: dict) -> None:
        self.timings = timings
        self.per_round = {"validate": 0.0, "fold": 0.0}
        self.started = (0.0, 0.0, 0)

    def on_round_begin(self, server, server_round: int, clients: dict) -> None:
        # Before FIT is sent: round_seconds starts after this returns, so waiting is not in it.
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("the bench parent went away")
        self.per_round["validate"] = self.per_round["fold"] = 0.0
        self.started = (time.perf_counter(), *cpu_and_faults())

    def round_work_done(self, server_round: int) -> None:
        start, cpu, faults = self.started
        self.timings["full_round"].append(time.perf_counter() - start)
        cpu_after, faults_after = cpu_and_faults()
        self.timings["cpu"].append(cpu_after - cpu)
        self.timings["faults"].append(faults_after - faults)
        self.timings["validate"].append(self.per_round["validate"])
        self.timings["fold"].append(self.per_round["fold"])

    def on_round_end(self, server, server_round: int, logs: dict) -> None:
        print("BENCH done", server_round, flush=True)  # the checkpoint is written: it ran first


class RoundTimer(ServerCallback):
    """Each round from the moment its clients are chosen until History and TensorBoard have
    written it (``round_work_done`` is the TimedCheckpointer's ``before``): wall time, CPU
    (user, system) and context switches."""

    def __init__(self, timings: dict) -> None:
        self.timings = timings
        self.started = (0.0, 0.0, None)

    def on_round_begin(self, server, server_round: int, clients: dict) -> None:
        cpu = time.process_time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        self.timings["round_started"].append(start)
        self.timings["last_result"].append(None)
        self.started = (start, cpu, usage)

    def round_work_done(self, server_round: int) -> None:
        start, cpu, usage = self.started
        timings = self.timings
        timings["full_round"].append(time.perf_counter() - start)
        timings["round_cpu"].append(time.process_time() - cpu)
        after = resource.getrusage(resource.RUSAGE_SELF)
        timings.setdefault("round_cpu_user", []).append(after.ru_utime - usage.ru_utime)
        timings.setdefault("round_cpu_sys", []).append(after.ru_stime - usage.ru_stime)
        timings.setdefault("round_voluntary_switches", []).append(after.ru_nvcsw - usage.ru_nvcsw)
        timings.setdefault("round_involuntary_switches", []).append(
            after.ru_nivcsw - usage.ru_nivcsw)
