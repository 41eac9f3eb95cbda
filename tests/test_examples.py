"""The examples in examples/, run as a user runs them: each script its own process, from its folder."""

import re
import shutil

import pytest

from cliprocs import PYTHON, REPO, Processes, child_env, free_port
from pyfed.data import load_mnist
from pyfed.errors import DatasetUnavailableError

EXAMPLES = REPO / "examples"
ACCURACY_LINE = re.compile(r"^test · loss [\d.]+ · accuracy ([\d.]+)$", re.M)

# Runs data.py with every name lookup failing, as on a machine without a network: the test
# never depends on (or uses) this machine's network, and cannot hang on it.
OFFLINE_DATA_PY = """
import runpy, socket, sys
def offline(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")
socket.getaddrinfo = offline
socket.setdefaulttimeout(5)
sys.argv = ["data.py"]
runpy.run_path("data.py", run_name="__main__")
"""


def copy_example(name, tmp_path):
    folder = tmp_path / name
    shutil.copytree(EXAMPLES / name, folder, ignore=shutil.ignore_patterns("*.npy", "pyfed_logs"))
    return folder


def make_data(procs, folder):
    procs.start("data", [PYTHON, "data.py"], cwd=folder)
    assert procs.wait("data", 60) == 0, procs.dump()
    assert "digits: 449 examples per client, 450 for the server's test" in procs.out("data")


def test_single_system_example_trains_and_tests(tmp_path):
    folder = copy_example("single_system", tmp_path)
    env = child_env(PYFED_PORT=free_port())
    with Processes(tmp_path / "procs") as procs:
        make_data(procs, folder)
        procs.start("server", [PYTHON, "server.py"], cwd=folder, env=env)
        for i in (1, 2, 3):
            procs.start(f"client_{i}", [PYTHON, f"client_{i}.py"], cwd=folder, env=env)
        codes = procs.wait_all(timeout=150)
        assert set(codes.values()) == {0}, procs.dump()
        out = procs.out("server")
    assert re.search(r"^round 5/5 · 3 clients · ", out, re.M), out
    assert float(ACCURACY_LINE.search(out).group(1)) > 0.8, out
    assert (folder / "pyfed_logs").is_dir()


def test_multiple_systems_example_takes_the_server_ip_from_argv_or_env(tmp_path):
    folder = copy_example("multiple_systems", tmp_path)
    port = free_port()
    with Processes(tmp_path / "procs") as procs:
        make_data(procs, folder)
        procs.start("server", [PYTHON, "server.py"], cwd=folder, env=child_env(PYFED_PORT=port))
        procs.start("client_1", [PYTHON, "client_1.py", "127.0.0.1"], cwd=folder,
                    env=child_env(PYFED_PORT=port))
        procs.start("client_2", [PYTHON, "client_2.py"], cwd=folder,
                    env=child_env(PYFED_PORT=port, PYFED_SERVER_IP="127.0.0.1"))
        procs.start("client_3", [PYTHON, "client_3.py"], cwd=folder, env=child_env(PYFED_PORT=port))
        codes = procs.wait_all(timeout=150)
        assert set(codes.values()) == {0}, procs.dump()
        out = procs.out("server")
    assert f"PyFed server listening on port {port} on every interface" in out, out
    assert re.search(r"^round 5/5 · 3 clients · ", out, re.M), out
    assert ACCURACY_LINE.search(out), out


def test_fl_experiment_example(tmp_path):
    folder = copy_example("fl_experiment", tmp_path)
    with Processes(tmp_path / "procs") as procs:
        procs.start("run", [PYTHON, "run.py"], cwd=folder, env=child_env(PYFED_PORT=free_port()))
        assert procs.wait("run", 150) == 0, procs.dump()
        out = procs.out("run")
    assert re.search(r"^round 5/5 · 3 clients · ", out, re.M), out
    accuracy = re.search(r"^test on 450 server examples · loss [\d.]+ · accuracy ([\d.]+)$", out, re.M)
    assert accuracy and float(accuracy.group(1)) > 0.8, out


def test_mnist_offline_fails_with_a_clear_message(tmp_path):
    folder = copy_example("single_system", tmp_path)
    env = child_env(PYFED_DATASET="mnist", SCIKIT_LEARN_DATA=tmp_path / "sklearn_data")
    with Processes(tmp_path / "procs") as procs:
        procs.start("data", [PYTHON, "-c", OFFLINE_DATA_PY], cwd=folder, env=env)
        assert procs.wait("data", 60) == 1, procs.dump()
        stderr = procs.err("data")
    assert "data.py: MNIST could not be downloaded with fetch_openml" in stderr, stderr
    assert "Offline?" in stderr and "python data.py" in stderr and "PYFED_MNIST" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert not list(folder.glob("*.npy"))


def test_load_mnist_from_a_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "mnist.npz"
    with pytest.raises(DatasetUnavailableError, match=r"MNIST file .*mnist.npz does not exist"):
        load_mnist(missing)
