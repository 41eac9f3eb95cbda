"""examples/serverless and `pyfed node`, run as a user runs them: two Keras node processes on
digits 0-4 and 5-9 federating through a shared local folder, no server."""

import re
import shutil

import numpy as np

from cliprocs import PYTHON, REPO, Processes, child_env

EXAMPLE = REPO / "examples" / "serverless"
ACCURACY = re.compile(r"^node_\d: test accuracy on all ten digits ([\d.]+)$", re.M)
CLI_ACCURACY = re.compile(r"^\w+: test · loss [\d.]+ · accuracy ([\d.]+)$", re.M)


def test_the_local_folder_example_federates_two_halves_of_digits(tmp_path):
    folder = tmp_path / "serverless"
    shutil.copytree(EXAMPLE, folder)
    with Processes(tmp_path / "procs") as procs:
        for index in (1, 2):
            procs.start(f"node_{index}", [PYTHON, "local_node.py", str(index)], cwd=folder,
                        env=child_env())
        codes = procs.wait_all(timeout=300)
        assert set(codes.values()) == {0}, procs.dump()
        found = [float(ACCURACY.search(procs.out(f"node_{i}")).group(1)) for i in (1, 2)]
    assert all(accuracy > 0.85 for accuracy in found), found  # alone: about 0.5 each
    assert not list((folder / "shared_folder").rglob(".*tmp*"))  # atomic writes leave nothing


def test_pyfed_node_federates_local_npy_files_through_a_folder(tmp_path):
    from pyfed.data import load_digits

    x, y = load_digits()
    order = np.random.default_rng(1).permutation(len(y))
    x, y = x[order], y[order]
    np.save(tmp_path / "x_test.npy", x[:450])
    np.save(tmp_path / "y_test.npy", y[:450])
    x, y = x[450:], y[450:]
    for name, mine in (("a", y < 5), ("b", y >= 5)):
        np.save(tmp_path / f"x_{name}.npy", x[mine])
        np.save(tmp_path / f"y_{name}.npy", y[mine])
    with Processes(tmp_path / "procs") as procs:
        for name in ("a", "b"):
            procs.start(name, [PYTHON, "-m", "pyfed", "node", "--folder", str(tmp_path / "shared"),
                               "--name", name, "--data", str(tmp_path / f"x_{name}.npy"),
                               "--target", str(tmp_path / f"y_{name}.npy"), "--mode", "sync",
                               "--num-nodes", "2", "--epochs", "8", "--keras-verbose", "0",
                               "--test-data", str(tmp_path / "x_test.npy"),
                               "--test-target", str(tmp_path / "y_test.npy"),
                               "--logdir", str(tmp_path / "logs")],
                        cwd=tmp_path, env=child_env())
        codes = procs.wait_all(timeout=300)
        assert set(codes.values()) == {0}, procs.dump()
        found = [float(CLI_ACCURACY.search(procs.out(name)).group(1)) for name in ("a", "b")]
    assert all(accuracy > 0.85 for accuracy in found), found
    # The nodes' curves in PyFed's TensorBoard layout.
    assert len(list((tmp_path / "logs").glob("*/clients/a"))) == 1


def test_pyfed_node_refuses_sync_mode_without_a_node_count(tmp_path):
    with Processes(tmp_path / "procs") as procs:
        procs.start("node", [PYTHON, "-m", "pyfed", "node", "--folder", str(tmp_path), "--name",
                             "a", "--data", "x.npy", "--target", "y.npy", "--mode", "sync"],
                    cwd=tmp_path, env=child_env())
        assert procs.wait("node", 60) == 2, procs.dump()
        assert "--mode sync needs --num-nodes" in procs.err("node")
