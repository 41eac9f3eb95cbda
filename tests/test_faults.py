"""Faults end to end: deadlines, dropouts, restarts, late joiners, a killed server, Ctrl-C.

Real server and client processes on loopback (the numpy-only softmax roles, which start in about
a second). Every process is started through a ProcessGroup, so it is killed by its PID and
reaped whatever happens; every wait is bounded by a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import numpy as np
import pytest

from conftest import tagged
from procs import ROLES, ProcessGroup, free_port
from roles import weights_hash
from test_logs import scalars

from pyfed.server.checkpoint import CHECKPOINT_FILE, load_checkpoint

POLL = 0.05


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def wait_for_output(group: ProcessGroup, name: str, pattern: str, timeout: float) -> re.Match:
    """Poll ``name``'s log until ``pattern`` (a regex, multiline) appears; bounded in time."""
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while True:
        match = regex.search(group.output(name))
        if match:
            return match
        if group.procs[name].poll() is not None:
            # One last look: the line may have been written just before the exit.
            match = regex.search(group.output(name))
            if match:
                return match
            raise AssertionError(f"{name} exited (rc={group.procs[name].poll()}) before "
                                 f"printing {pattern!r}\n{group.dump()}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"{name} did not print {pattern!r} within {timeout} s\n"
                                 f"{group.dump()}")
        time.sleep(POLL)


def wait_exit(group: ProcessGroup, name: str, timeout: float) -> int:
    try:
        return group.wait(name, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{group.dump()}") from None


def round_done(server_round: int, rounds: int) -> str:
    """The server's end-of-round line (not the 'waiting for' progress lines)."""
    return rf"^round {server_round}/{rounds} · \d+ clients"


def server_args(port, logdir, *, clients=3, rounds=3, round_timeout=None, progress_interval=None,
                strategy_options=None, resume=False):
    args = ["softmax-server", "--port", port, "--clients", clients, "--rounds", rounds,
            "--logdir", logdir]
    if round_timeout is not None:
        args += ["--round-timeout", round_timeout]
    if progress_interval is not None:
        args += ["--progress-interval", progress_interval]
    if strategy_options is not None:
        args += ["--strategy-options", json.dumps(strategy_options)]
    if resume:
        args.append("--resume")
    return args


def client_args(port, logdir, index, *, clients=3, slow=None, slow_rounds=None,
                max_retries=None, retry_interval=None):
    args = ["softmax-client", "--port", port, "--clients", clients, "--index", index,
            "--logdir", logdir, "--connect-timeout", 30]
    if slow is not None:
        args += ["--slow", slow]
    if slow_rounds is not None:
        args += ["--slow-rounds", slow_rounds]
    if max_retries is not None:
        args += ["--max-retries", max_retries]
    if retry_interval is not None:
        args += ["--retry-interval", retry_interval]
    return args


def assert_clean(output: str) -> None:
    """No internal error on the way: a handled fault is a WARNING, never a traceback."""
    assert "Traceback" not in output and " ERROR " not in output, output


def warnings_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if " WARNING " in line]


def only_run_dir(logdir):
    runs = [p for p in logdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def participants(result) -> list:
    return result["history"]["history"]["participants"]


def clients_per_round(result) -> list:
    return result["history"]["history"]["clients"]


# A normal federation, shared by the resume test (its baseline) and the final-model test.
@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("baseline")
    port = free_port()
    logdir = base / "logs"
    with ProcessGroup(base / "procs") as group:
        group.role("server", *server_args(port, logdir, rounds=6))
        for i in (1, 2, 3):
            group.role(f"client_{i}", *client_args(port, logdir, i))
        codes = group.wait_all(timeout=60)
        assert all(code == 0 for code in codes.values()), group.dump()
        assert_clean(group.output("server"))
        result = tagged(group.output("server"), "RESULT")
    assert result["history"]["rounds"] == [1, 2, 3, 4, 5, 6]
    return result


# ----------------------------------------------------------------------------------------------
# 1-2. Round deadlines
# ----------------------------------------------------------------------------------------------

def test_round_deadline_closes_the_round_with_enough_clients(tmp_path):
    # Timeline: every round takes clients 1-2 1.5 s; round 1 closes at its 3 s deadline while
    # client_3 is still training (3.75 s); round 2 (3.0-4.5 s) leaves client_3 out because it
    # is still busy with round 1; from round 3 (4.5 s) on, everybody takes part again.
    port, logdir = free_port(), tmp_path / "logs"
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", *server_args(port, logdir, rounds=4, round_timeout=3,
                                          progress_interval=0.5))
        group.role("client_1", *client_args(port, logdir, 1, slow=1.5))
        group.role("client_2", *client_args(port, logdir, 2, slow=1.5))
        group.role("client_3", *client_args(port, logdir, 3, slow=3.75, slow_rounds="1"))
        codes = group.wait_all(timeout=60)
        outputs = {name: group.output(name) for name in group.procs}
        assert codes == {"server": 0, "client_1": 0, "client_2": 0, "client_3": 0}, group.dump()

    server = outputs["server"]
    assert_clean(server)
    # While it waits, the server says whom it waits for and how long is left.
    assert re.search(r"^round 1/4 · training · waiting for client_3 \(2 of 3 answered\) · \d+ s left$",
                     server, re.MULTILINE), server
    result = tagged(server, "RESULT")
    assert result["history"]["rounds"] == [1, 2, 3, 4]
    # Round 1 closed at its deadline without client_3; its late update was not counted.
    assert participants(result)[0] == 2, result["history"]
    assert clients_per_round(result)[0] == ["client_1", "client_2"]
    assert any("client_3" in line and "deadline" in line for line in warnings_of(server)), server
    # client_3 was told its update came too late.
    assert any("update rejected: arrived after round 1 closed" in line
               for line in warnings_of(outputs["client_3"])), outputs["client_3"]
    # Once free, the straggler is sampled again: the last rounds have everybody.
    assert participants(result)[2:] == [3, 3], result["history"]
    assert clients_per_round(result)[2:] == [["client_1", "client_2", "client_3"]] * 2


def test_round_deadline_fails_the_round_naming_who_was_missing(tmp_path):
    port, logdir = free_port(), tmp_path / "logs"
    retry = {"max_retries": 1, "retry_interval": 0.2}
    with ProcessGroup(tmp_path / "procs") as group:
        # round_retries=0: this is the failure a round's retries end with (test_lifecycle.py
        # shows the retries themselves).
        group.role("server", *server_args(port, logdir, rounds=3, round_timeout=2,
                                          progress_interval=0.5,
                                          strategy_options={"min_fit_clients": 3}),
                   "--round-retries", 0)
        group.role("client_1", *client_args(port, logdir, 1, **retry))
        group.role("client_2", *client_args(port, logdir, 2, **retry))
        group.role("client_3", *client_args(port, logdir, 3, slow=6, slow_rounds="1", **retry))
        wait_for_output(group, "server", r"round 1: client_3 did not contribute", 30)
        failed_at = time.monotonic()
        code = wait_exit(group, "server", 30)
        exit_seconds = time.monotonic() - failed_at
        server = group.output("server")
        assert code != 0, server
        assert "RoundError" in server, server
        assert ("round 1 failed: 2 of 3 clients returned a usable update, at least 3 needed "
                "(client_3: no answer within the round's 2 s deadline)") in server, server
        assert "RESULT " not in server
        # The clients are told and end by themselves within their (short) retry budget.
        client_codes = {name: wait_exit(group, name, 30) for name in ("client_1", "client_2", "client_3")}
        for name in ("client_1", "client_2"):
            output = group.output(name)
            # Issue 10 B7: "the server stopped: <reason>" at once (was "...is stopping: ...").
            assert f"{name}: the server stopped: the server failed" in output, output
        for name, client_code in client_codes.items():
            assert client_code >= 0, f"{name} died of signal {-client_code}\n{group.dump()}"
    # Having failed, the server tells the clients and exits promptly: it has nothing to wait for.
    assert exit_seconds < 4, f"the server took {exit_seconds:.1f} s to exit after round 1 failed"


# ----------------------------------------------------------------------------------------------
# 3-5. Clients that drop, restart, or arrive late
# ----------------------------------------------------------------------------------------------

def test_a_client_killed_mid_round_drops_out_and_the_others_go_on(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 4
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", *server_args(port, logdir, rounds=rounds))
        group.role("client_1", *client_args(port, logdir, 1))
        group.role("client_2", *client_args(port, logdir, 2))
        victim = group.role("client_3", *client_args(port, logdir, 3, slow=30, slow_rounds="2"))
        wait_for_output(group, "client_3", r"^TRAINING round 2$", 30)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        # No deadline is set: the server must notice the dropped connection by itself.
        wait_for_output(group, "server", round_done(2, rounds), 5)
        assert time.monotonic() - killed_at < 5
        for name in ("server", "client_1", "client_2"):
            assert wait_exit(group, name, 30) == 0, group.dump()
        server = group.output("server")

    assert_clean(server)
    result = tagged(server, "RESULT")
    assert result["history"]["rounds"] == list(range(1, rounds + 1))
    assert participants(result) == [3] + [2] * (rounds - 1), result["history"]
    assert all(clients == ["client_1", "client_2"] for clients in clients_per_round(result)[1:])
    assert any("client_3" in line and ("disconnected" in line or "did not contribute" in line)
               for line in warnings_of(server)), server


def test_a_restarted_client_rejoins_under_the_same_name(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 5
    # min_available_clients=3: after the kill, the next round waits for client_2 to be back,
    # so the rejoin is certain to land in this run rather than racing the remaining rounds.
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", *server_args(port, logdir, rounds=rounds,
                                          strategy_options={"min_available_clients": 3}))
        group.role("client_1", *client_args(port, logdir, 1))
        first = group.role("client_2_first", *client_args(port, logdir, 2, slow=1))
        group.role("client_3", *client_args(port, logdir, 3))
        wait_for_output(group, "server", round_done(2, rounds), 30)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        group.role("client_2_again", *client_args(port, logdir, 2, slow=1))
        for name in ("server", "client_1", "client_2_again", "client_3"):
            assert wait_exit(group, name, 60) == 0, group.dump()
        server = group.output("server")
        again = tagged(group.output("client_2_again"), "CLIENT")

    assert_clean(server)
    result = tagged(server, "RESULT")
    assert result["history"]["rounds"] == list(range(1, rounds + 1))
    per_round = clients_per_round(result)
    assert all(p <= 3 for p in participants(result)), result["history"]
    assert [len(c) for c in per_round] == participants(result)
    assert all(len(set(c)) == len(c) for c in per_round), per_round  # nobody counted twice
    assert per_round[0] == per_round[1] == ["client_1", "client_2", "client_3"]
    assert any("client_2" in c for c in per_round[3:]), per_round  # back after the restart
    assert again["name"] == "client_2" and again["rounds"] >= 1
    assert again["weights"] == result["weights"]


def test_a_late_joiner_takes_part_in_later_rounds(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 4
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", *server_args(port, logdir, clients=2, rounds=rounds))
        # 3 s per round leaves client_3 (1-2 s to start, more on a loaded 2-core machine)
        # time to join before round 4.
        group.role("client_1", *client_args(port, logdir, 1, slow=3.0))
        group.role("client_2", *client_args(port, logdir, 2, slow=3.0))
        wait_for_output(group, "server", round_done(1, rounds), 30)
        group.role("client_3", *client_args(port, logdir, 3))
        codes = group.wait_all(timeout=60)
        assert all(code == 0 for code in codes.values()), group.dump()
        server = group.output("server")
        late = tagged(group.output("client_3"), "CLIENT")

    assert_clean(server)
    result = tagged(server, "RESULT")
    per_round = clients_per_round(result)
    assert result["history"]["rounds"] == [1, 2, 3, 4]
    assert per_round[0] == ["client_1", "client_2"]
    assert "client_3" in per_round[-1], per_round
    assert late["rounds"] >= 1 and late["weights"] == result["weights"]


# ----------------------------------------------------------------------------------------------
# 6-7. The server dies (kill -9, then resume) or is stopped (Ctrl-C)
# ----------------------------------------------------------------------------------------------

def test_resume_after_the_server_is_killed(tmp_path, baseline_run):
    port, logdir, rounds = free_port(), tmp_path / "logs", 6
    retry = {"max_retries": 8, "retry_interval": 0.5, "slow": 0.3}
    with ProcessGroup(tmp_path / "procs") as group:
        first = group.role("server", *server_args(port, logdir, rounds=rounds))
        for i in (1, 2, 3):
            group.role(f"client_{i}", *client_args(port, logdir, i, **retry))
        wait_for_output(group, "server", round_done(3, rounds), 30)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        run_dir = only_run_dir(logdir)
        assert (run_dir / CHECKPOINT_FILE).is_file(), sorted(p.name for p in run_dir.iterdir())
        assert load_checkpoint(run_dir / CHECKPOINT_FILE).server_round >= 2

        group.role("server_resumed", *server_args(port, logdir, rounds=rounds, resume=True))
        codes = {name: wait_exit(group, name, 60)
                 for name in ("server_resumed", "client_1", "client_2", "client_3")}
        assert all(code == 0 for code in codes.values()), group.dump()
        server = group.output("server_resumed")
        clients = {f"client_{i}": tagged(group.output(f"client_{i}"), "CLIENT") for i in (1, 2, 3)}

    assert "resuming run" in server, server
    assert_clean(server)
    result = tagged(server, "RESULT")
    assert result["history"]["rounds"] == [1, 2, 3, 4, 5, 6]  # none lost, none repeated
    assert result["run_dir"] and os.path.samefile(result["run_dir"], run_dir)
    assert only_run_dir(logdir) == run_dir  # the resumed run reused its folder
    for name, client in clients.items():
        assert client["reconnections"] >= 1, (name, client)
        assert client["weights"] == result["weights"], name
    assert abs(result["test"]["accuracy"] - baseline_run["test"]["accuracy"]) <= 0.03, (
        result["test"], baseline_run["test"])
    steps = {step for step, _ in scalars(run_dir / "server")["round/participants"]}
    assert set(range(1, rounds + 1)) <= steps, sorted(steps)


# Ctrl-C is SIGINT's default handler; restore it in case this test run inherited SIG_IGN
# (e.g. from a non-interactive shell's background job), which Python would keep.
SIGINT_LAUNCHER = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_ctrl_c_stops_the_server_cleanly_and_says_how_to_resume(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 20
    retry = {"slow": 0.5, "max_retries": 1, "retry_interval": 0.2}
    with ProcessGroup(tmp_path / "procs") as group:
        server_proc = group.start("server", [sys.executable, "-c", SIGINT_LAUNCHER, ROLES,
                                             *server_args(port, logdir, rounds=rounds)])
        for i in (1, 2, 3):
            group.role(f"client_{i}", *client_args(port, logdir, i, **retry))
        wait_for_output(group, "server", round_done(2, rounds), 30)
        os.kill(server_proc.pid, signal.SIGINT)
        assert wait_exit(group, "server", 5) == 130, group.dump()
        server = group.output("server")
        client_codes = {name: wait_exit(group, name, 15) for name in ("client_1", "client_2", "client_3")}
        client_outputs = {name: group.output(name) for name in client_codes}

    stopped = [line for line in server.splitlines()
               if line.startswith("PyFed server stopped by Ctrl-C during round")]
    assert len(stopped) == 1, server
    run_dir = only_run_dir(logdir)
    assert str(run_dir) in stopped[0] and "resume" in stopped[0], stopped[0]
    assert "Traceback" not in server, server
    assert "RESULT " not in server

    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert checkpoint.server_round >= 2
    assert checkpoint.history["rounds"] == list(range(1, checkpoint.server_round + 1))
    steps = [step for step, _ in scalars(run_dir / "server")["round/participants"]]
    assert set(range(1, checkpoint.server_round + 1)) <= set(steps), steps

    for name, output in client_outputs.items():
        # Issue 10 B7: the client stops at once with "the server stopped: <reason>" (it used to
        # retry for ~37 s, its last error saying "the server is stopping").
        assert f"{name}: the server stopped: " in output, output
        assert client_codes[name] >= 0, f"{name} died of signal {-client_codes[name]}\n{output}"


def test_ctrl_c_exits_promptly_while_clients_wait_idle_for_the_next_round(tmp_path):
    # client_1 and client_2 have answered round 2 and sit idle; client_3 is still training.
    port, logdir, rounds = free_port(), tmp_path / "logs", 20
    retry = {"max_retries": 1, "retry_interval": 0.2}
    with ProcessGroup(tmp_path / "procs") as group:
        server_proc = group.start("server", [sys.executable, "-c", SIGINT_LAUNCHER, ROLES,
                                             *server_args(port, logdir, rounds=rounds)])
        group.role("client_1", *client_args(port, logdir, 1, **retry))
        group.role("client_2", *client_args(port, logdir, 2, **retry))
        group.role("client_3", *client_args(port, logdir, 3, slow=5, slow_rounds="2", **retry))
        wait_for_output(group, "client_3", r"^TRAINING round 2$", 30)
        time.sleep(0.3)
        signalled_at = time.monotonic()
        os.kill(server_proc.pid, signal.SIGINT)
        code = wait_exit(group, "server", 30)
        exit_seconds = time.monotonic() - signalled_at
        server = group.output("server")
    assert code == 130, server
    assert server.count("PyFed server stopped by Ctrl-C during round 2") == 1, server
    assert exit_seconds < 5, f"the server took {exit_seconds:.1f} s to exit after Ctrl-C"


# ----------------------------------------------------------------------------------------------
# 8. The final model on disk
# ----------------------------------------------------------------------------------------------

def test_final_model_is_saved_in_the_run_folder(baseline_run):
    final = baseline_run["final_model"]
    assert os.path.basename(final) == "final_weights.npz"
    assert os.path.samefile(os.path.dirname(final), baseline_run["run_dir"])
    with np.load(final, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["arr_0", "arr_1"]
        arrays = [archive["arr_0"], archive["arr_1"]]
    assert weights_hash(arrays) == baseline_run["weights"]
