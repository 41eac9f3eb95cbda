"""The server's life from start to stop, with real processes on 127.0.0.1: failed rounds retried,
--resume finding its run, TensorBoard after a resume, full disks, signals, the waiting lines.

Servers are ``hostile_roles.py server`` or ``roles.py softmax-server`` (numpy only: they start
in a second) or the ``pyfed server`` command; every process is ended by PID and reaped by its
group, every wait is bounded. The full-disk tests mount a tiny tmpfs (root only; skipped
otherwise) and unmount it afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cliprocs import PYTHON, Processes
from conftest import tagged
from procs import ROLES, ProcessGroup, free_port
from test_faults import client_args, only_run_dir, server_args, wait_exit, wait_for_output
from test_hostile import (HOSTILE, assert_no_traceback, finish_all, server_result, start_evil,
                          start_honest, start_server, tagged_lines, wait_for)
from test_logs import scalars

from pyfed.server.checkpoint import CHECKPOINT_FILE, load_checkpoint

PYFED = [PYTHON, "-m", "pyfed"]
MODEL_SOURCE = ("def build():\n"
                "    from pyfed.models import SoftmaxRegression\n"
                "    return SoftmaxRegression(64, 10)\n")


def model_file(tmp_path: Path) -> str:
    """``path:function`` for ``pyfed server --model``: the numpy softmax the roles train."""
    path = tmp_path / "softmax_model.py"
    path.write_text(MODEL_SOURCE)
    return f"{path}:build"


def cli_server(tmp_path: Path, port: int, *extra, clients: int = 1, rounds: int = 2,
               logdir="logs") -> list:
    return [*PYFED, "server", "--model", model_file(tmp_path), "--clients", clients,
            "--rounds", rounds, "--port", port, "--logdir", logdir, *extra]


def softmax_client(port: int, index: int, *extra, clients: int = 1, logdir="logs") -> list:
    return [PYTHON, ROLES, "softmax-client", "--port", port, "--clients", clients, "--index",
            index, "--logdir", logdir, "--connect-timeout", 30, *extra]


def wait_text(procs: Processes, name: str, pattern: str, timeout: float, stream: str = "out"):
    """The first match of ``pattern`` in ``name``'s stdout (or stderr), polled, bounded."""
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while True:
        text = procs.out(name) if stream == "out" else procs.err(name)
        match = regex.search(text)
        if match:
            return match
        if procs.procs[name].poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{name} did not print {pattern!r}\n{procs.dump()}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def error_lines(stderr: str, command: str = "server") -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"pyfed {command}: error:")]


# ----------------------------------------------------------------------------------------------
# A5. A failed round is run again
# ----------------------------------------------------------------------------------------------

def test_a_round_without_enough_updates_is_retried_with_the_same_global_model(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=2, rounds=3, min_fit_clients=2)
        start_honest(group, tmp_path, port, 1)
        # Its first update is NaN (refused), so round 1 has 1 of the 2 updates it needs.
        start_evil(group, port, ["nan"], bad_fits=1, timeout=40)
        finish_all(group, timeout=60)
        output = group.output("server")
        history = server_result(group)
        fits = tagged_lines(group.output("evil"), "FIT")
    assert_no_traceback(group)
    assert history["rounds"] == [1, 2, 3], history
    assert history["history"]["participants"] == [2, 2, 2], history
    retried = [line for line in output.splitlines() if "running round 1 again" in line]
    assert len(retried) == 1, output
    assert "round 1 failed: 1 of 2 clients returned a usable update" in retried[0], retried
    assert "evil_nan: update rejected" in retried[0] and "retry 1 of 3" in retried[0], retried
    # The retry is the same round with the same global model, not a half-updated one.
    assert [f["round"] for f in fits] == [1, 1, 2, 3], fits
    assert fits[0]["weights"] == fits[1]["weights"], fits
    assert fits[1]["weights"] != fits[2]["weights"], fits


def test_a_round_whose_client_is_killed_is_retried_when_it_returns(tmp_path):
    # int8 compression: the retry must not publish the downlink model a second time.
    port, logdir, rounds = free_port(), tmp_path / "logs", 4
    strategy = {"min_fit_clients": 2, "min_available_clients": 2}
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", *server_args(port, logdir, clients=2, rounds=rounds,
                                          strategy_options=strategy), "--compression", "int8")
        group.role("client_1", *client_args(port, logdir, 1, clients=2))
        first = group.role("client_2_first", *client_args(port, logdir, 2, clients=2, slow=60,
                                                          slow_rounds="2"))
        wait_for_output(group, "client_2_first", r"^TRAINING round 2$", 30)
        kill(first)
        wait_for_output(group, "server", r"running round 2 again", 15)
        group.role("client_2_again", *client_args(port, logdir, 2, clients=2))
        for name in ("server", "client_1", "client_2_again"):
            assert wait_exit(group, name, 60) == 0, group.dump()
        server = group.output("server")
    assert "Traceback" not in server and " ERROR " not in server, server
    result = tagged(server, "RESULT")
    assert result["history"]["rounds"] == [1, 2, 3, 4], result["history"]
    assert result["history"]["history"]["participants"] == [2, 2, 2, 2], result["history"]
    assert "cannot decompress" not in server, server
    # FL_Server.train() says where the logs are, once.
    assert server.count(f"TensorBoard logs: {result['run_dir']}") == 1, server
    # client_1 trained round 2 twice; TensorBoard shows the retry's epochs, once.
    for name in ("client_1", "client_2"):
        steps = [step for step, _ in scalars(Path(result["run_dir"]) / "clients" / name)["epoch_loss"]]
        assert steps == list(range(2 * rounds)), (name, steps)


def test_a_run_whose_retries_all_fail_ends_with_one_clear_line(tmp_path):
    port = free_port()
    with Processes(tmp_path / "procs") as procs:
        procs.start("server", cli_server(tmp_path, port, "--round-retries", 2), cwd=tmp_path)
        # The hand-written client connects once, without retrying: only once the server listens.
        wait_text(procs, "server", r"PyFed server listening", 30)
        procs.start("evil", [PYTHON, HOSTILE, "evil-client", "--port", port, "--modes", "nan",
                             "--timeout", 40], cwd=tmp_path)
        code = procs.wait("server", 60)
        stderr = procs.err("server")
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    assert "round 1 failed: 0 of 1 clients returned a usable update" in errors[0], errors
    assert "giving up after 3 attempts (round_retries=2)" in errors[0], errors
    assert stderr.count("running round 1 again") == 2, stderr


def test_round_retries_is_validated():
    from pyfed import FL_Server
    from pyfed.errors import ConfigurationError
    from pyfed.models import SoftmaxRegression

    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ConfigurationError, match=rf"round_retries must be an integer >= 0; "
                                                     rf"received {re.escape(repr(bad))}"):
            FL_Server(SoftmaxRegression(4, 2), 1, 1, round_retries=bad)


# ----------------------------------------------------------------------------------------------
# A6. --resume finds its run and never drifts into a new folder
# ----------------------------------------------------------------------------------------------

def test_resume_keeps_to_its_run_folder_across_kills(tmp_path):
    port, rounds = free_port(), 12
    server = cli_server(tmp_path, port, "--run-name", "exp", "--resume", clients=3, rounds=rounds)
    logs = tmp_path / "logs"
    with Processes(tmp_path / "procs") as procs:
        # 1: killed before round 1 (no client ever came).
        first = procs.start("server_1", server, cwd=tmp_path)
        wait_text(procs, "server_1", r"PyFed server listening", 30)
        kill(first)
        # 2: reaches round 7, then is killed (and its clients with it).
        second = procs.start("server_2", server, cwd=tmp_path)
        wait_text(procs, "server_2", r"PyFed server listening", 30)
        clients = [procs.start(f"client_{i}_a", softmax_client(port, i, "--slow", 0.3,
                                                               clients=3), cwd=tmp_path)
                   for i in (1, 2, 3)]
        wait_text(procs, "server_2", rf"^round 7/{rounds} · ", 60)
        kill(second)
        for client in clients:
            kill(client)
        assert sorted(p.name for p in logs.iterdir()) == ["exp"], procs.dump()
        saved = load_checkpoint(logs / "exp" / CHECKPOINT_FILE).server_round
        assert saved >= 7
        # 3: continues after the last saved round, in the same folder.
        procs.start("server_3", server, cwd=tmp_path)
        wait_text(procs, "server_3", r"PyFed server listening", 30)
        for i in (1, 2, 3):
            procs.start(f"client_{i}_b", softmax_client(port, i, clients=3), cwd=tmp_path)
        assert procs.wait("server_3", 60) == 0, procs.dump()
        out = procs.out("server_3")
    assert f"resuming run exp after round {saved}" in out, out
    assert "no checkpoint" not in out, out
    assert sorted(p.name for p in logs.iterdir()) == ["exp"]
    checkpoint = load_checkpoint(logs / "exp" / CHECKPOINT_FILE)
    assert checkpoint.server_round == rounds
    assert checkpoint.history["rounds"] == list(range(1, rounds + 1))  # none lost
    assert out.count("TensorBoard logs: logs/exp") == 1, out  # train() says it; the CLI not again


def test_resume_finds_the_newest_checkpoint_of_its_run_name(tmp_path):
    # Folders an older PyFed let drift: exp (round 2) and exp-2 (round 5, written later).
    from pyfed.server.checkpoint import find_checkpoint

    port, logdir = free_port(), tmp_path / "logs"
    with ProcessGroup(tmp_path / "procs") as group:
        for name, rounds in (("exp", 2), ("exp-2", 5)):
            group.role(f"server_{name}", *server_args(port, logdir, clients=1, rounds=rounds),
                       "--run-name", name)
            group.role(f"client_{name}", *client_args(port, logdir, 1, clients=1))
            for role in (f"server_{name}", f"client_{name}"):
                assert wait_exit(group, role, 60) == 0, group.dump()
        assert find_checkpoint(logdir, "exp") == logdir / "exp-2" / CHECKPOINT_FILE
        group.role("resumed", *server_args(port, logdir, clients=1, rounds=7, resume=True),
                   "--run-name", "exp")
        group.role("client_resumed", *client_args(port, logdir, 1, clients=1))
        assert wait_exit(group, "resumed", 60) == 0, group.dump()
        output = group.output("resumed")
    assert "resuming run exp-2 after round 5" in output, output
    assert sorted(p.name for p in logdir.iterdir()) == ["exp", "exp-2"]
    assert load_checkpoint(logdir / "exp-2" / CHECKPOINT_FILE).history["rounds"] == list(range(1, 8))


# ----------------------------------------------------------------------------------------------
# A10. Orphaned temporary checkpoints; TensorBoard after a resume
# ----------------------------------------------------------------------------------------------

ORPHAN = ".checkpoint-k3j_x9q2.npz"
NOT_OURS = ["notes.checkpoint-k3j_x9q2.npz", ".checkpoint-k3j_x9q2.txt", "checkpoint-abc.npz"]


def test_orphaned_checkpoint_temporaries_are_removed_at_start(tmp_path):
    port, logdir = free_port(), tmp_path / "logs"
    folders = {"run": logdir / "exp", "checkpoint_dir": tmp_path / "checkpoints"}
    for folder in folders.values():
        folder.mkdir(parents=True)
        for name in [ORPHAN, *NOT_OURS]:
            (folder / name).write_bytes(b"PK\x03\x04 half a checkpoint")
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("resumed", *server_args(port, logdir, clients=1, rounds=1, resume=True),
                   "--run-name", "exp")
        group.role("elsewhere", *server_args(free_port(), logdir, clients=1, rounds=1),
                   "--checkpoint-dir", folders["checkpoint_dir"])
        for name in ("resumed", "elsewhere"):
            wait_for_output(group, name, r"^READY \d+$", 30)
    for folder in folders.values():
        assert sorted(p.name for p in folder.iterdir() if "checkpoint" in p.name) == sorted(NOT_OURS)


def test_after_a_resume_tensorboard_shows_every_round_once(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 6
    with ProcessGroup(tmp_path / "procs") as group:
        first = group.role("server", *server_args(port, logdir, rounds=rounds,
                                                  progress_interval=0.3))
        old = [group.role(f"client_{i}_a", *client_args(port, logdir, i, slow=60 if i == 3 else None,
                                                        slow_rounds="4" if i == 3 else None))
               for i in (1, 2, 3)]
        # Round 4 has client_1's and client_2's curves on disk when the server dies.
        wait_for_output(group, "server", rf"^round 4/{rounds} · training · waiting for client_3 "
                                         r"\(2 of 3 answered\)", 60)
        kill(first)
        for proc in old:
            kill(proc)
        run_dir = only_run_dir(logdir)
        assert load_checkpoint(run_dir / CHECKPOINT_FILE).server_round == 3
        group.role("resumed", *server_args(port, logdir, rounds=rounds, resume=True))
        for i in (1, 2, 3):
            group.role(f"client_{i}_b", *client_args(port, logdir, i))
        for name in ("resumed", "client_1_b", "client_2_b", "client_3_b"):
            assert wait_exit(group, name, 60) == 0, group.dump()
    server = scalars(run_dir / "server")
    assert [step for step, _ in server["round/participants"]] == list(range(1, rounds + 1))
    for name in ("client_1", "client_2", "client_3"):
        curves = scalars(run_dir / "clients" / name)
        steps = [step for step, _ in curves["epoch_loss"]]
        assert steps == list(range(2 * rounds)), (name, steps)  # 2 epochs a round, each once


# ----------------------------------------------------------------------------------------------
# A4 / A10. Full disks: a checkpoint may fail, the final model may not
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs, so the disk really fills up (ENOSPC)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30).returncode:
            # Still busy (a process this test started has not let go yet): detach it anyway.
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; bounded by the disk's size."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for _ in range(4096):  # 4096 x 4 KiB = 16 MiB > the 1 MiB disk
            try:
                out.write(b"\0" * 4096)
            except OSError:
                return filler
    raise AssertionError(f"{disk} did not fill up")


def test_a_failed_checkpoint_is_logged_and_the_next_round_tries_again(tmp_path, tiny_disk):
    logdir, rounds = tiny_disk / "logs", 6
    with ProcessGroup(tmp_path / "procs") as group:
        group.start("server", [sys.executable, HOSTILE, "server", "--port", 0, "--logdir", logdir,
                               "--clients", 1, "--rounds", rounds])
        port = int(wait_for(group, "server", r"^READY (\d+)$", 20).group(1))
        start_honest(group, tmp_path, port, 1, fit_delay=0.7)
        wait_for(group, "server", rf"^round 1/{rounds} · ", 30)
        filler = fill(tiny_disk)
        failed = wait_for(group, "server", r"WARNING pyfed checkpoint for round (\d+) was not "
                                           r"written to (\S+): No space left on device; the run "
                                           r"goes on and the next round tries again$", 30)
        filler.unlink()
        finish_all(group, timeout=60)
        output = group.output("server")
    run_dir = only_run_dir(logdir)
    assert failed.group(2) == str(run_dir / CHECKPOINT_FILE), failed.group(0)
    assert_no_traceback(group)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert checkpoint.server_round == rounds, output  # a later round's checkpoint was written
    assert not list(run_dir.glob(".checkpoint-*")), sorted(p.name for p in run_dir.iterdir())


def test_a_disk_that_fills_up_mid_run_ends_it_with_one_line_naming_the_path(tmp_path, tiny_disk):
    port = free_port()
    logdir = tiny_disk / "logs"
    with Processes(tmp_path / "procs") as procs:
        procs.start("server", cli_server(tmp_path, port, "--run-name", "full", rounds=4,
                                         logdir=logdir), cwd=tmp_path)
        procs.start("client", softmax_client(port, 1, "--slow", 0.7, logdir=tmp_path / "clogs"),
                    cwd=tmp_path)
        wait_text(procs, "server", r"^round 1/4 · ", 60)
        fill(tiny_disk)
        code = procs.wait("server", 60)
        client_code = procs.wait("client", 30)
        stderr = procs.err("server")
    assert code == 2, procs.dump()
    assert "Traceback" not in stderr, stderr
    final = logdir / "full" / "final_weights.npz"
    assert error_lines(stderr) == [f"pyfed server: error: cannot save the final model to {final}: "
                                   "No space left on device"], stderr
    assert re.search(r"checkpoint for round \d+ was not written to \S+: .*No space left", stderr)
    assert client_code == 0, procs.dump()  # the clients still got the final model


def test_starting_on_a_full_disk_fails_with_one_line_and_leaves_no_run_folder(tmp_path, tiny_disk):
    logdir = tiny_disk / "logs"
    logdir.mkdir()
    fill(tiny_disk)
    with Processes(tmp_path / "procs") as procs:
        procs.start("server", cli_server(tmp_path, free_port(), "--run-name", "full",
                                         logdir=logdir), cwd=tmp_path)
        assert procs.wait("server", 60) == 2, procs.dump()
        stderr = procs.err("server")
    errors = error_lines(stderr)
    assert len(errors) == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert str(logdir / "full") in errors[0] and "No space left on device" in errors[0], errors
    assert not (logdir / "full").exists()


# ----------------------------------------------------------------------------------------------
# A10 / B7. Signals
# ----------------------------------------------------------------------------------------------

BIG_SHAPES = "4096x4096"  # 64 MiB of float32: a checkpoint takes long enough to signal into


def test_sigterm_during_a_checkpoint_write_names_the_round_the_checkpoint_holds(tmp_path):
    for attempt in range(3):  # bounded: each attempt is one server, signalled once
        logdir = tmp_path / f"logs_{attempt}"
        port = free_port()
        with ProcessGroup(tmp_path / f"procs_{attempt}") as group:
            server = group.role("server", "numpy-server", "--port", port, "--clients", 1,
                                "--rounds", 30, "--shapes", BIG_SHAPES, "--logdir", logdir)
            group.role("client", "numpy-client", "--port", port, "--shapes", BIG_SHAPES,
                       "--logdir", logdir)
            wait_for_output(group, "server", r"^round 2/30 · ", 60)
            run_dir = only_run_dir(logdir)
            hit = False
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and server.poll() is None:
                if any(name.startswith(".checkpoint-") for name in os.listdir(run_dir)):
                    server.send_signal(signal.SIGTERM)
                    # Still there after the signal: it arrived in the middle of the write.
                    hit = any(name.startswith(".checkpoint-") for name in os.listdir(run_dir))
                    break
                time.sleep(0.0005)
            code = wait_exit(group, "server", 30)
            output = group.output("server")
        if not hit:
            continue
        assert code == 130, output
        stopped = [line for line in output.splitlines() if line.startswith("PyFed server stopped")]
        assert len(stopped) == 1 and "stopped by SIGTERM" in stopped[0], output
        saved = load_checkpoint(run_dir / CHECKPOINT_FILE).server_round
        # The write the signal arrived in was finished, and the message names what it holds.
        held = "round 1 is" if saved == 1 else f"rounds 1-{saved} are"
        assert stopped[0].startswith(f"PyFed server stopped by SIGTERM during round {saved}, while "
                                     f"saving its checkpoint; {held} saved in {run_dir};"), (
            saved, stopped)
        assert not [n for n in os.listdir(run_dir) if n.startswith(".checkpoint-")]
        return
    pytest.fail("no SIGTERM landed inside a checkpoint write in 3 attempts")


def test_sigterm_before_the_first_round_says_so(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, tmp_path, clients=2, rounds=3)
        group.procs["server"].send_signal(signal.SIGTERM)
        assert group.wait("server", 15) == 130, group.dump()
        output = group.output("server")
    assert_no_traceback(group)
    stopped = [line for line in output.splitlines() if line.startswith("PyFed server stopped")]
    assert stopped == ["PyFed server stopped by SIGTERM while waiting for clients, before round 1 "
                       "started; no round had completed, so there is no checkpoint"], output


def test_a_port_in_use_fails_with_one_line_and_leaves_no_run_folder(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with Processes(tmp_path / "procs") as procs:
            procs.start("server", cli_server(tmp_path, port, "--run-name", "busy"), cwd=tmp_path)
            assert procs.wait("server", 60) == 2, procs.dump()
            stderr = procs.err("server")
    errors = error_lines(stderr)
    assert len(errors) == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert errors[0].startswith(f"pyfed server: error: cannot listen on 127.0.0.1:{port}: "
                                "Address already in use"), stderr
    assert not (tmp_path / "logs" / "busy").exists()


# ----------------------------------------------------------------------------------------------
# B5. Waiting for clients is not silent
# ----------------------------------------------------------------------------------------------

def test_a_server_short_of_clients_repeats_who_is_there_and_who_is_missing(tmp_path):
    line = re.compile(r"^waiting for clients: 1/3 connected \(honest_1\) · 2 missing$", re.M)
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=3, rounds=1, progress_interval=1)
        start_honest(group, tmp_path, port, 1)
        deadline = time.monotonic() + 30
        while len(line.findall(group.output("server"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        output = group.output("server")
    assert len(line.findall(output)) >= 3, output
