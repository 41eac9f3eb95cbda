"""A multi-system run across a LAN made of network namespaces.

The server runs in its own namespace with ``multi_system=True`` (every interface, the default
port 54321); each client runs in its own namespace and reaches it over veth links and a bridge,
at the server's namespace address. Each client also gets a private mount namespace in which the
server's log folder is hidden under an empty tmpfs, so it cannot see the server machine's disk,
as on a real second machine: it must keep its own TensorBoard curves, and the server must get
them over the wire.
"""

import re
import subprocess
import sys

import pytest

from conftest import tagged
from netlan import NamespaceLAN, netns_available
from procs import ROLES, child_env
from test_logs import scalars

ROUNDS = 3
CLIENTS = ("client_1", "client_2", "client_3")


@pytest.fixture(scope="module")
def lan_run(tmp_path_factory):
    available, reason = netns_available()
    if not available:
        print(f"SKIP LAN test: {reason}")
        pytest.skip(f"ip netns unavailable: {reason}")
    base = tmp_path_factory.mktemp("lan")
    server_logs = base / "server_machine" / "pyfed_logs"
    server_logs.mkdir(parents=True)
    env = child_env()
    logs = {}
    with NamespaceLAN(["server", *CLIENTS]) as lan:
        server_ip = lan.address("server")

        def start(host, argv):
            logs[host] = open(base / f"{host}.log", "wb")
            return lan.popen(host, argv, stdout=logs[host], stderr=subprocess.STDOUT, env=env)

        procs = {"server": start("server", [sys.executable, ROLES, "server", "--port", "54321",
                                            "--multi-system", "--rounds", ROUNDS,
                                            "--logdir", server_logs])}
        lan.wait_listening("server", 54321, timeout=60)
        for index, name in enumerate(CLIENTS, start=1):
            client_logs = base / f"{name}_machine" / "pyfed_logs"
            hide_server_disk = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                'mount -t tmpfs tmpfs "$0" && exec "$@"', server_logs.parent]
            procs[name] = start(name, [*hide_server_disk, sys.executable, ROLES, "client",
                                       "--server-ip", server_ip, "--port", "54321",
                                       "--index", index, "--rounds", ROUNDS, "--logdir", client_logs])
        codes = {}
        for host, proc in procs.items():
            try:
                codes[host] = proc.wait(timeout=300)
            except Exception:
                codes[host] = None
        for handle in logs.values():
            handle.close()
        outputs = {host: (base / f"{host}.log").read_text(errors="replace") for host in procs}
        addresses = {host: lan.address(host) for host in procs}
    assert all(code == 0 for code in codes.values()), "\n".join(
        f"--- {h} rc={codes[h]}\n{o[-3000:]}" for h, o in outputs.items())
    return {"outputs": outputs, "addresses": addresses, "base": base, "server_logs": server_logs}


def test_lan_run_trains_to_the_end(lan_run):
    result = tagged(lan_run["outputs"]["server"], "RESULT")
    assert result["history"]["history"]["participants"] == [3] * ROUNDS
    assert result["test"]["accuracy"] >= 0.85
    for name in CLIENTS:
        report = tagged(lan_run["outputs"][name], "CLIENT")
        assert report["rounds"] == ROUNDS and report["weights"] == result["weights"]


def test_server_says_which_address_clients_should_use(lan_run):
    server_ip = lan_run["addresses"]["server"]
    output = lan_run["outputs"]["server"]
    assert re.search(r"listening on port 54321 on every interface; clients should use "
                     r"server_ip = .*'%s'" % re.escape(server_ip), output), output[:2000]


def test_clients_joined_from_their_own_machines(lan_run):
    output = lan_run["outputs"]["server"]
    for name in CLIENTS:
        address = lan_run["addresses"][name]
        assert re.search(rf"{name} joined from {re.escape(address)}:\d+", output), name


def test_server_machine_sees_every_client_and_each_client_sees_itself(lan_run):
    server_runs = [p for p in lan_run["server_logs"].iterdir() if p.is_dir()]
    assert len(server_runs) == 1
    run = server_runs[0]
    assert sorted(p.name for p in (run / "clients").iterdir()) == list(CLIENTS)
    for name in CLIENTS:
        on_server = scalars(run / "clients" / name)
        client_runs = list((lan_run["base"] / f"{name}_machine" / "pyfed_logs").iterdir())
        assert [p.name for p in client_runs] == [run.name]  # same run name on every machine
        mine = client_runs[0] / "clients"
        assert [p.name for p in mine.iterdir()] == [name]  # only its own curves
        on_client = scalars(mine / name)
        expected_steps = list(range(ROUNDS * 2))
        assert [s for s, _ in on_server["epoch_loss"]] == expected_steps
        assert on_client["epoch_loss"] == on_server["epoch_loss"]
