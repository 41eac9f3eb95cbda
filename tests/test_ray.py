"""FL_Experiment(backend="ray") end to end: real Ray (a local instance, and Ray's own multi-node
test cluster with a raylet per node), real server and actor processes, 127.0.0.1 only.

Every Ray node here takes 127.0.0.1 as its address: Ray otherwise picks the machine's outward
address, and these tests target loopback only. The cluster is shared by the module's tests and
shut down (every raylet reaped) at the end.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# Before Ray is imported: its nodes and drivers then use the loopback address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")

from pyfed import data  # noqa: E402
from pyfed.errors import ConfigurationError, PyFedError  # noqa: E402
from pyfed.experiment import FINAL_WEIGHTS, FL_Experiment  # noqa: E402
from pyfed.models import SoftmaxRegression  # noqa: E402
from pyfed.strategy import FedAvg  # noqa: E402

TESTS = Path(__file__).parent


def digits_parts(num_clients):
    x, y = data.load_digits()
    return data.split_for_clients(x, y, num_clients, seed=1)


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {seconds} s")


# -- a local Ray, started (and stopped) by the experiment itself: runs before the cluster ------

def test_keras_clients_on_a_local_ray_started_by_the_experiment(tmp_path):
    assert not ray.is_initialized()
    sigterm = signal.getsignal(signal.SIGTERM)
    clients_x, clients_y, test_x, test_y = digits_parts(4)
    # Ray counts this machine's 2 CPUs: 4 actors fit at half a CPU each.
    experiment = FL_Experiment(4, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=300, seed=7,
                               backend="ray", client_resources={"num_cpus": 0.5})
    model = data.digits_model()
    trained, history = experiment.run(model, rounds=4, epochs=2, batch_size=32, lr=0.005,
                                      optimizer="adam", loss="sparse_categorical_crossentropy",
                                      metrics=["accuracy"])
    assert trained is model and history is experiment.history
    assert history.rounds == [1, 2, 3, 4]
    assert history.history["participants"] == [4, 4, 4, 4]
    assert experiment.test_results["accuracy"] >= 0.90
    assert sorted(experiment.placement) == ["client_1", "client_2", "client_3", "client_4"]
    assert all(isinstance(node, str) and node for node in experiment.placement.values())
    # As on the local backend: the final weights, every client's curves, the final test.
    assert (experiment.run_dir / FINAL_WEIGHTS).is_file()
    assert sorted(p.name for p in (experiment.run_dir / "clients").iterdir()) == \
        ["client_1", "client_2", "client_3", "client_4"]
    from test_logs import scalars

    final = scalars(experiment.run_dir / "server" / "final")
    assert final["test/accuracy"] == [(4, pytest.approx(experiment.test_results["accuracy"]))]
    assert not ray.is_initialized()  # the Ray it started, it stopped
    assert signal.getsignal(signal.SIGTERM) is sigterm  # and Ray's SIGTERM handler is gone


def test_the_experiment_command_runs_on_ray(tmp_path):
    """``pyfed experiment --backend ray``: the CLI's run, clients as actors on a local Ray the
    command starts and stops; the same report as the local backend."""
    from cliprocs import PYTHON, Processes, child_env, free_port

    command = [PYTHON, "-m", "pyfed", "experiment", "--backend", "ray", "--client-cpus", "0.5",
               "--clients", "2", "--rounds", "2", "--epochs", "1", "--port", free_port(),
               "--logdir", "logs", "--run-name", "ray"]
    with Processes(tmp_path / "procs") as procs:
        procs.start("experiment", command, cwd=tmp_path,
                    env=child_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
        assert procs.wait("experiment", 240) == 0, procs.dump()
        out = procs.out("experiment")
    assert re.search(r"^round 2/2 · 2 clients · fit loss", out, re.M), out
    accuracy = float(re.search(r"^final test accuracy: ([\d.]+)", out, re.M).group(1))
    assert 0.5 < accuracy <= 1.0, out
    assert list((tmp_path / "logs" / "ray" / "server").glob("events.out.tfevents.*"))


# -- Ray's multi-node test cluster: a head and two workers, each a real raylet ---------------

@pytest.fixture(scope="module")
def cluster():
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                         "include_dashboard": False})
    try:
        for _ in range(2):
            nodes.add_node(num_cpus=2)
        ray.init(address=nodes.address, logging_level="WARNING")
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        wait_for(lambda: ray.cluster_resources().get("CPU") == 5, 60, "the 3 nodes joining")
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()  # kills and reaps every node's processes
        # ray.init left its SIGTERM handler in this process: the next test module's are ours.
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_clients_spread_over_the_nodes_of_a_multi_node_cluster(cluster, tmp_path):
    clients_x, clients_y, test_x, test_y = digits_parts(4)
    experiment = FL_Experiment(4, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=240,
                               backend="ray", ray_address=cluster.address)
    _, history = experiment.run(SoftmaxRegression(64, 10), rounds=5, epochs=2, batch_size=32,
                                lr=0.5)
    assert history.history["participants"] == [4] * 5
    assert experiment.test_results["accuracy"] >= 0.85
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert set(experiment.placement.values()) <= nodes
    # At most 2 CPUs per node: 4 one-CPU actors cannot share one node.
    assert len(set(experiment.placement.values())) >= 2, experiment.placement
    assert ray.is_initialized()  # the connection (and cluster) that was there stays


def test_a_hundred_virtual_clients_in_four_actors_keep_the_server_flat(cluster, tmp_path):
    from ray_roles import RssRecorder

    clients_x, clients_y, test_x, test_y = digits_parts(100)
    rss = tmp_path / "rss.txt"
    experiment = FL_Experiment(100, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=240,
                               strategy=FedAvg(fraction_fit=0.1, seed=1),
                               server_options={"callbacks": [RssRecorder(rss)]},
                               backend="ray", ray_address=cluster.address,
                               clients_per_actor=25)
    _, history = experiment.run(SoftmaxRegression(64, 10), rounds=5, epochs=2, batch_size=8,
                                lr=0.5)
    assert history.rounds == [1, 2, 3, 4, 5]
    assert history.history["participants"] == [10] * 5
    assert len(experiment.placement) == 100 and len(set(experiment.placement)) == 100
    assert experiment.test_results["accuracy"] > 0.5
    per_round = [int(line.split()[1]) for line in rss.read_text().splitlines()]
    assert len(per_round) == 5
    # Flat: after round 1 (every connection open), later rounds add at most a few MiB.
    assert max(per_round) - per_round[0] < 16 * 1024, per_round


def test_an_actor_killed_mid_round_is_a_dropped_client(cluster, tmp_path):
    from ray_roles import SlowSoftmax

    clients_x, clients_y, test_x, test_y = digits_parts(3)
    markers = tmp_path / "markers"
    markers.mkdir()
    experiment = FL_Experiment(3, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=240,
                               backend="ray", ray_address=cluster.address,
                               client_options={"model": SlowSoftmax(markers, {2}, pause=4.0)})
    outcome = {}

    def run():
        try:
            outcome["history"] = experiment.run(SoftmaxRegression(64, 10), rounds=3, epochs=1,
                                                batch_size=32, lr=0.5)[1]
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: len(list(markers.glob("round2-*"))) == 3, 120, "round 2 starting")
    ray.kill(ray.get_actor("pyfed:client_3"), no_restart=True)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    history = outcome["history"]
    assert history.rounds == [1, 2, 3]
    assert history.history["participants"] == [3, 2, 2]
    assert experiment.test_results is not None


def test_resources_the_cluster_cannot_supply_fail_fast_naming_them(cluster, tmp_path):
    clients_x, clients_y, test_x, test_y = digits_parts(8)
    eight = FL_Experiment(8, clients_x, clients_y, test_x, test_y, port=0, verbose=0,
                          logdir=tmp_path / "logs", backend="ray", ray_address=cluster.address)
    with pytest.raises(ConfigurationError, match=r"8 actors .* x CPU=1 need 8 CPU and the "
                                                 r"cluster has 5"):
        eight.run(SoftmaxRegression(64, 10), rounds=1)
    gpus = FL_Experiment(2, clients_x[:2], clients_y[:2], test_x, test_y, port=0, verbose=0,
                         logdir=tmp_path / "logs", backend="ray", ray_address=cluster.address,
                         client_resources={"num_gpus": 1})
    with pytest.raises(ConfigurationError, match="need 2 GPU and the cluster has 0"):
        gpus.run(SoftmaxRegression(64, 10), rounds=1)
    assert eight.run_dir is None and gpus.run_dir is None  # no server was started


def test_actors_that_cannot_start_fail_within_the_timeout_naming_the_resource(cluster, tmp_path):
    @ray.remote(num_cpus=2)
    class Holder:
        def ready(self):
            return True

    holders = [Holder.remote() for _ in range(2)]  # both workers' CPUs, for as long as they live
    try:
        ray.get([h.ready.remote() for h in holders], timeout=60)
        clients_x, clients_y, test_x, test_y = digits_parts(2)
        experiment = FL_Experiment(2, clients_x, clients_y, test_x, test_y, port=0, verbose=0,
                                   logdir=tmp_path / "logs", timeout=15, backend="ray",
                                   ray_address=cluster.address)
        with pytest.raises(PyFedError, match=r"1 of 2 Ray actors did not start within 15 s .* "
                                             r"wait for: CPU \(each needs 1, 0 free\)"):
            experiment.run(SoftmaxRegression(64, 10), rounds=1)
    finally:
        for holder in holders:
            ray.kill(holder)
    wait_for(lambda: ray.available_resources().get("CPU") == 5, 60, "every CPU free again")


def test_ctrl_c_on_the_driver_tears_down_its_actors(cluster, tmp_path):
    from procs import ProcessGroup

    markers = tmp_path / "markers"
    markers.mkdir()
    with ProcessGroup(tmp_path / "procs") as group:
        driver = group.start("driver", [sys.executable, TESTS / "ray_roles.py", "driver",
                                        cluster.address, markers])
        wait_for(lambda: len(list(markers.glob("round2-*"))) == 2 or driver.poll() is not None,
                 120, "the driver's actors training")
        assert driver.poll() is None, group.dump()
        pids = {int(p.name.split("-")[1]) for p in markers.glob("round*-*")}
        assert len(pids) == 2
        driver.send_signal(signal.SIGINT)
        assert group.wait("driver", 60) != 0
    # The actors' processes are gone, no actor of that experiment remains, the CPUs are free.
    wait_for(lambda: not any(_alive(pid) for pid in pids), 60, "the actor processes ending")
    named = ray.util.list_named_actors(all_namespaces=True)
    assert not [a for a in named if str(a.get("name", a)).startswith("pyfed:")], named
    wait_for(lambda: ray.available_resources().get("CPU") == 5, 60, "every CPU free again")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_turn_taking_clients_keep_their_own_weights():
    from pyfed.sim.ray_actor import SharedModel, TakingTurns

    x, y = digits_parts(2)[0][0], digits_parts(2)[1][0]
    shared = SharedModel("numpy", SoftmaxRegression(64, 10))
    first, second = TakingTurns(shared, seed=1), TakingTurns(shared, seed=2)
    start = SoftmaxRegression(64, 10).get_weights()
    first.set_weights(start)
    second.set_weights([np.zeros_like(w) for w in start])
    outcome = first.fit(x, y, {"epochs": 1, "batch_size": 32, "round": 1})
    assert outcome.num_examples == len(x)
    # The second client's weights were not touched by the first's turn, and vice versa.
    assert all(not w.any() for w in second.get_weights())
    trained = first.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(trained, start))
    second.fit(x, y, {"epochs": 1, "batch_size": 32, "round": 1})
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), trained))


@pytest.mark.parametrize("options, message", [
    ({"backend": "dask"}, "backend must be 'local' or 'ray'; received 'dask'"),
    ({"backend": "ray", "clients_per_actor": 0}, "clients_per_actor must be an integer >= 1; "
                                                 "received 0"),
    ({"backend": "ray", "client_resources": {"cpus": 1}}, "client_resources takes num_cpus, "
                                                          "num_gpus, memory, resources; received 'cpus'"),
    ({"backend": "ray", "client_resources": {"num_gpus": -1}}, "num_gpus must be a number >= 0"),
    ({"backend": "ray", "client_resources": {"num_cpus": 1.5}}, "num_cpus above 1 must be a whole"),
    ({"backend": "ray", "ray_address": ""}, "ray_address must be None"),
    ({"ray_address": "auto"}, "options of backend='ray'; this experiment's backend is 'local'"),
])
def test_the_ray_options_are_checked_when_the_experiment_is_made(options, message):
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, int)
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FL_Experiment(1, [x], [y], None, None, **options)


def test_keras_virtual_clients_keep_their_own_optimizer_state():
    from pyfed.models.keras_adapter import check_fit_callbacks
    from pyfed.sim.ray_actor import SharedModel, TakingTurns

    x, y = data.load_digits()
    x, y = x[:200], y[:200]
    model = data.digits_model()
    shared = SharedModel("keras")
    first, second = TakingTurns(shared, seed=1), TakingTurns(shared, seed=2)
    for client in (first, second):
        client.initialize_like({"kind": "keras", "json": model.to_json()})
        client.compile(loss="sparse_categorical_crossentropy", optimizer="adam", lr=0.005,
                       metrics=["accuracy"])
        client.set_weights(model.get_weights())
    assert check_fit_callbacks([object()], first, "") != []  # Keras callbacks are welcome
    config = {"epochs": 1, "batch_size": 32, "round": 1, "verbose": 0}

    def steps() -> int:  # Adam's step counter, as the shared optimizer holds it now
        return int(shared.optimizer_variables()[0].numpy())

    first.fit(x, y, config)
    assert steps() == 7  # 200 examples in batches of 32
    second.fit(x, y, config)
    assert steps() == 7  # the second client started from a fresh optimizer, not the first's
    first.fit(x, y, {**config, "round": 2})
    assert steps() == 14  # and the first one continued from its own
