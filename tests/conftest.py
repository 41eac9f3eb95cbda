"""Test configuration: make helper modules in tests/ (e.g. netlan) importable."""
import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import json  # noqa: E402

import pytest  # noqa: E402

from procs import ProcessGroup, free_port  # noqa: E402

ROUNDS = 5
NUM_CLIENTS = 3


def tagged(output: str, tag: str) -> dict:
    """The JSON after the last ``TAG `` line of a process's output."""
    lines = [line for line in output.splitlines() if line.startswith(tag + " ")]
    assert lines, f"no {tag} line in output:\n{output[-3000:]}"
    return json.loads(lines[-1][len(tag) + 1:])


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """One real federation, shared by several test files: a server process and 3 client
    processes on digits, 5 rounds, clients started after the server (the usual order)."""
    base = tmp_path_factory.mktemp("digits_run")
    logdir = base / "pyfed_logs"
    port = free_port()
    with ProcessGroup(base / "procs") as group:
        group.role("server", "server", "--port", port, "--clients", NUM_CLIENTS,
                   "--rounds", ROUNDS, "--logdir", logdir)
        for i in range(1, NUM_CLIENTS + 1):
            group.role(f"client_{i}", "client", "--port", port, "--clients", NUM_CLIENTS,
                       "--index", i, "--logdir", logdir)
        codes = group.wait_all(timeout=300)
        assert all(code == 0 for code in codes.values()), group.dump()
        outputs = {name: group.output(name) for name in group.procs}
    return {"logdir": logdir, "outputs": outputs, "result": tagged(outputs["server"], "RESULT"),
            "clients": {n: tagged(o, "CLIENT") for n, o in outputs.items() if n != "server"}}
