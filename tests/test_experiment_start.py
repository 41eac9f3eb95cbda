"""How FL_Experiment starts its clients: forked from one fork server on Linux (or spawned, with
PYFED_START_METHOD=spawn), all started together, and all of them ended and reaped whatever
happens: a client killed mid-run is named, and Ctrl-C leaves no process behind."""

import json
import multiprocessing
import os
import re
import signal
import sys
import time

import numpy as np
import pytest

from pyfed import data
from pyfed.errors import PyFedError
from pyfed.experiment import FL_Experiment

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the fork server is Linux's default start")


def digits_parts(num_clients):
    x, y = data.load_digits()
    return data.split_for_clients(x, y, num_clients, seed=1)


def start_recorder(path):
    """A Keras callback: each client process appends its pid, its parent's pid and a draw from
    numpy's global random state when a fit begins. Made here, so cloudpickle carries it by value."""
    import keras

    class StartRecorder(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            with open(path, "a") as file:
                file.write(json.dumps({"pid": os.getpid(), "ppid": os.getppid(),
                                       "draw": int(np.random.randint(2 ** 31))}) + "\n")

    return StartRecorder()


def one_client_killer(marker):
    """A Keras callback: the first client process to end an epoch SIGKILLs itself."""
    import keras

    class KillOne(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)

    return KillOne()


def first_fit_of_each_process(path):
    starts = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        starts.setdefault(record["pid"], record)
    return list(starts.values())


def run_digits(tmp_path, num_clients, rounds=2, **options):
    clients_x, clients_y, test_x, test_y = digits_parts(num_clients)
    experiment = FL_Experiment(num_clients, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=300, **options)
    experiment.run(data.digits_model(), rounds=rounds, epochs=1, batch_size=32, lr=0.005,
                   optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return experiment


@linux_only
def test_ten_keras_clients_are_forked_from_one_process_and_all_train(tmp_path):
    starts_file = tmp_path / "starts.jsonl"
    experiment = run_digits(tmp_path, 10, fit_callbacks=[start_recorder(starts_file)])
    assert experiment.history.history["participants"] == [10, 10]
    assert experiment.test_results["accuracy"] > 0.5
    starts = first_fit_of_each_process(starts_file)
    assert len(starts) == 10  # ten separate processes
    # All forked by the one fork server, which is not this process.
    assert len({s["ppid"] for s in starts}) == 1 and starts[0]["ppid"] != os.getpid(), starts
    # Each reseeded numpy's global random state after the fork: no two draws alike.
    assert len({s["draw"] for s in starts}) == 10, starts
    assert sorted(p.name for p in (experiment.run_dir / "clients").iterdir()) == \
        sorted(f"client_{i}" for i in range(1, 11))
    assert multiprocessing.active_children() == []


def test_the_spawn_start_is_still_there(tmp_path, monkeypatch):
    monkeypatch.setenv("PYFED_START_METHOD", "spawn")
    starts_file = tmp_path / "starts.jsonl"
    experiment = run_digits(tmp_path, 2, rounds=1, fit_callbacks=[start_recorder(starts_file)])
    assert experiment.history.history["participants"] == [2]
    starts = first_fit_of_each_process(starts_file)
    assert [s["ppid"] for s in starts] == [os.getpid()] * 2  # this process started each
    assert multiprocessing.active_children() == []


def test_an_unknown_start_method_is_refused_before_any_process_starts(tmp_path, monkeypatch):
    from pyfed.errors import ConfigurationError
    from pyfed.models import SoftmaxRegression

    monkeypatch.setenv("PYFED_START_METHOD", "forkserver")
    x, y = np.zeros((4, 4), np.float32), np.zeros(4, int)
    experiment = FL_Experiment(1, [x], [y], None, None, port=0, logdir=tmp_path / "logs")
    with pytest.raises(ConfigurationError, match="PYFED_START_METHOD='forkserver': use 'fork' "
                                                 "or 'spawn'"):
        experiment.run(SoftmaxRegression(4, 3), rounds=1)
    assert experiment.run_dir is None  # no server was started
    assert multiprocessing.active_children() == []


def test_a_client_killed_mid_run_is_reported_by_name(tmp_path):
    with pytest.raises(PyFedError, match=r"pyfed-client_\d+ (exited with code -9|\(exit code -9\) "
                                         r"failed)"):
        run_digits(tmp_path, 3, rounds=3, fit_callbacks=[one_client_killer(tmp_path / "killed")])
    assert (tmp_path / "killed").exists()
    assert multiprocessing.active_children() == []


def test_ten_numpy_clients_start_together_and_all_train(tmp_path):
    from pyfed.models import SoftmaxRegression

    clients_x, clients_y, test_x, test_y = digits_parts(10)
    experiment = FL_Experiment(10, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=240)
    _, history = experiment.run(SoftmaxRegression(64, 10), rounds=3, epochs=2, batch_size=32,
                                lr=0.5)
    assert history.history["participants"] == [10, 10, 10]
    assert experiment.test_results["accuracy"] > 0.8
    assert multiprocessing.active_children() == []


# A user's script, run as `python script.py`, that is stopped by Ctrl-C in the middle of its
# rounds. Only the script gets the SIGINT (not its process group, as a terminal would send):
# ending the server and every client is the experiment's job.
CTRL_C_SCRIPT = '''\
from pyfed.data import digits_model, load_digits, split_for_clients
from pyfed.experiment import FL_Experiment

data, target = load_digits()
clients_data, clients_target, server_data, server_target = split_for_clients(data, target, 3)
exp = FL_Experiment(3, clients_data, clients_target, server_data, server_target, port=0,
                    timeout=300)
exp.run(digits_model(), rounds=500, epochs=1, batch_size=32, lr=0.005, optimizer="adam",
        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
'''


SIGINT_LAUNCHER = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def processes_in_session(session: int) -> list[str]:
    """Every process (zombies included) whose session is ``session``, as 'pid state name'."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:  # gone meanwhile
            continue
        name, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(fields[3]) == session:
            found.append(f"{entry} {fields[0]} {name}")
    return found


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_ctrl_c_on_the_experiment_leaves_no_process_behind(tmp_path):
    from cliprocs import PYTHON, Processes

    script = tmp_path / "ctrl_c_experiment.py"
    script.write_text(CTRL_C_SCRIPT)
    with Processes(tmp_path / "procs") as procs:
        # Its own session; SIGINT's default handler, in case this test run inherited SIG_IGN.
        proc = procs.start("script", [PYTHON, "-c", SIGINT_LAUNCHER, script], cwd=tmp_path)
        assert wait_for(lambda: re.search(r"^round 2/500", procs.out("script"), re.M)
                        or proc.poll() is not None, 240), procs.dump()
        assert proc.poll() is None, procs.dump()
        assert len(processes_in_session(proc.pid)) >= 5  # script, server, fork server, clients
        os.kill(proc.pid, signal.SIGINT)
        procs.wait("script", 90)
        # The script is reaped; nothing it started is left, running or as a zombie.
        assert wait_for(lambda: not processes_in_session(proc.pid), 30), \
            processes_in_session(proc.pid)
