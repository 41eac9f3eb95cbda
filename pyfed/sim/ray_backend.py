"""``FL_Experiment(backend="ray")``: the clients as Ray actors, the server as on the local backend.

Ray schedules and places the clients; PyFed transports. The server is the local backend's server
child process, on the driver's machine, bound to an address the Ray workers reach. Each client
(or each group of ``clients_per_actor`` virtual clients) runs in a Ray actor
(:mod:`pyfed.sim.ray_actor`) and speaks the real protocol to that server over TCP. Client data
goes to the actors through Ray's object store, put once.

Everything this module starts it stops, in a ``finally`` that a Ctrl-C goes through too: the
actors it created (``ray.kill``), the server child, and Ray itself if it started it. A cluster it
joined keeps running. Importing this module never imports Ray.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ..deadline import Deadline
from ..errors import ConfigurationError, PyFedError

logger = logging.getLogger("pyfed")

BACKENDS = ("local", "ray")
DEFAULT_RESOURCES = {"num_cpus": 1, "num_gpus": 0}
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources")
# Ray's names for the resources an actor asks for.
RAY_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
ACTOR_START_SECONDS = 120.0  # a pending actor waits for resources: never wait forever
AFTER_DONE_SECONDS = 30.0  # for the clients to leave once the server has finished
NEEDS_RAY = "backend='ray' needs Ray: pip install 'pyfed[ray]'"


def check_backend_options(backend, ray_address, client_resources, clients_per_actor) -> dict:
    """FL_Experiment's Ray options, checked before anything starts; returns the resources."""
    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be 'local' or 'ray'; received {backend!r}")
    if backend == "local" and (ray_address is not None or client_resources is not None
                               or clients_per_actor != 1):
        raise ConfigurationError("ray_address, client_resources and clients_per_actor are "
                                 "options of backend='ray'; this experiment's backend is 'local'")
    if backend == "ray" and not ray_installed():
        raise ConfigurationError(NEEDS_RAY)
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ConfigurationError(f"ray_address must be None (start Ray here), 'auto' or "
                                 f"'host:port'; received {ray_address!r}")
    if isinstance(clients_per_actor, bool) or not isinstance(clients_per_actor, int) \
            or clients_per_actor < 1:
        raise ConfigurationError(f"clients_per_actor must be an integer >= 1; received "
                                 f"{clients_per_actor!r}")
    if client_resources is not None and not isinstance(client_resources, dict):
        raise ConfigurationError(f"client_resources must be a dict such as {DEFAULT_RESOURCES}; "
                                 f"received {client_resources!r}")
    resources = {**DEFAULT_RESOURCES, **(client_resources or {})}
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise ConfigurationError(f"client_resources takes {', '.join(RESOURCE_KEYS)}; received "
                                 f"{', '.join(map(repr, unknown))}")
    custom = resources.pop("resources", None) or {}
    if not isinstance(custom, dict):
        raise ConfigurationError(f"client_resources['resources'] must be a dict of custom Ray "
                                 f"resources; received {custom!r}")
    for name, value in [*resources.items(), *custom.items()]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigurationError(f"client_resources: {name} must be a number >= 0; received "
                                     f"{value!r}")
        if value > 1 and value != int(value) and name != "memory":
            raise ConfigurationError(f"client_resources: {name} above 1 must be a whole number "
                                     f"(Ray's rule); received {value!r}")
    return {**resources, **({"resources": dict(custom)} if custom else {})}


def ray_installed() -> bool:
    """Without importing it: ``import pyfed`` and a local experiment never load Ray."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigurationError(NEEDS_RAY) from None
    return ray


def per_actor_demand(resources: dict) -> dict[str, float]:
    """What one actor asks Ray for, in Ray's resource names, leaving out zeros."""
    demand = {RAY_NAMES[k]: float(v) for k, v in resources.items() if k in RAY_NAMES}
    demand.update({k: float(v) for k, v in resources.get("resources", {}).items()})
    return {k: v for k, v in demand.items() if v > 0}


def check_capacity(ray, demand: dict, actors: int, clients: int, per_actor: int) -> None:
    """Fail now, naming what is missing, if the cluster could never host every actor at once
    (the server waits for all the clients before round 1: a partial start would hang)."""
    total = ray.cluster_resources()
    largest = {k: max((n["Resources"].get(k, 0.0) for n in ray.nodes() if n.get("Alive")),
                      default=0.0) for k in demand}
    shape = f"{actors} actor{'s' if actors != 1 else ''} ({clients} clients, {per_actor} per actor)"
    missing = []
    for name, each in demand.items():
        if total.get(name, 0.0) < each * actors:
            missing.append(f"{shape} x {name}={each:g} need {each * actors:g} {name} and the "
                           f"cluster has {total.get(name, 0.0):g}")
        elif largest[name] < each:
            missing.append(f"one actor needs {name}={each:g} and no node has that much (the "
                           f"largest has {largest[name]:g})")
    if missing:
        raise ConfigurationError("the Ray cluster cannot supply the requested resources: "
                                 + "; ".join(missing) + ". Lower client_resources, raise "
                                 "clients_per_actor, or add nodes")


class RayConnection:
    """Joins the cluster at ``address`` or starts a local Ray; disconnects only what it did."""

    def __init__(self, ray, address: str | None):
        self.ray = ray
        self.started = False  # a local instance of ours: ray.shutdown() stops it
        self.connected = False
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.joined = address is not None
        if ray.is_initialized():  # the user's own connection: use it, and leave it to them
            self.joined = True
            return
        # ray.init installs its own SIGTERM (and SIGINT) handlers in this, the user's, process
        # and ray.shutdown leaves them: put the user's back when we disconnect.
        self._handlers = {signum: signal.getsignal(signum)
                          for signum in (signal.SIGTERM, signal.SIGINT)}
        if address is None:
            # A new local instance, on loopback: nothing outside this machine needs to reach it.
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level=logging.WARNING)
            self.started = True
        else:
            ray.init(address=address, logging_level=logging.WARNING)
        self.connected = True

    def close(self) -> None:
        if self.connected:  # our own instance stops; a cluster we joined keeps running
            self.ray.shutdown()
            restore_handlers(self._handlers)


def restore_handlers(handlers: dict) -> None:
    """Put signal handlers back (only the main thread may; elsewhere there is nothing ours)."""
    if threading.current_thread() is threading.main_thread():
        for signum, handler in handlers.items():
            if handler is not None:  # None: installed outside Python, not ours to restore
                signal.signal(signum, handler)


def run_on_ray(experiment, server_payload: dict, train: dict) -> tuple[dict, list[str]]:
    """Run the experiment's server and its clients as Ray actors; returns the server's "done"
    report and the failed clients (as the local backend's ``run`` gathers them)."""
    import cloudpickle

    from ..experiment import _end, _Party

    ray = import_ray()
    names = [f"client_{i + 1}" for i in range(experiment.num_clients)]
    per_actor = experiment.clients_per_actor
    groups = [names[i:i + per_actor] for i in range(0, len(names), per_actor)]
    demand = per_actor_demand(experiment.client_resources)
    connection = RayConnection(ray, experiment.ray_address)
    actors: list = []
    server = reports = None
    try:
        check_capacity(ray, demand, len(groups), len(names), per_actor)
        host = experiment.host
        if connection.joined and host in ("127.0.0.1", "localhost"):
            host = ray.util.get_node_ip_address()  # the driver's node, as the workers see it
        payload = {**server_payload,
                   "server_options": {**server_payload["server_options"], "host": host}}
        server, reports = _Party.start_server(payload)
        # The actors start while the server child does: neither waits for the other.
        remote = ray.remote(_actor_class())
        options = {"num_cpus": experiment.client_resources.get("num_cpus", 0),
                   "num_gpus": experiment.client_resources.get("num_gpus", 0),
                   **({"memory": experiment.client_resources["memory"]}
                      if experiment.client_resources.get("memory") else {}),
                   **({"resources": experiment.client_resources["resources"]}
                      if experiment.client_resources.get("resources") else {})}
        for group in groups:
            actors.append(remote.options(name=f"pyfed:{group[0]}" + (
                f"-{group[-1]}" if len(group) > 1 else ""), **options).remote())
        listening = experiment._next_report(reports, [server], "start listening")
        experiment.run_dir = Path(listening["run_dir"])
        if connection.joined and experiment.verbose:
            print(f"server listening on {host}:{listening['port']} for the Ray workers", flush=True)
        node_ids = _wait_for_actors(ray, actors, groups, demand, experiment.timeout)
        experiment.placement = {name: node for group, node in zip(groups, node_ids)
                                for name in group}
        runs = {}
        path = [entry for entry in sys.path if isinstance(entry, str)]
        for index, (actor, group) in enumerate(zip(actors, groups)):
            first = names.index(group[0])
            spec = {"clients": [{"name": name, "seed": None if experiment.seed is None
                                 else experiment.seed + first + offset + 1}
                                for offset, name in enumerate(group)],
                    "kind": server_payload["model"].get("kind"), "host": host, "train": train,
                    "client_options": {"verbose": experiment.client_verbose,
                                       "logdir": str(experiment.logdir),
                                       **experiment.client_options}}
            # Each client's data is put in the object store once; the actor reads views of it.
            data = [ref for name in group for ref in (
                ray.put(experiment.clients_data[names.index(name)]),
                ray.put(experiment.clients_target[names.index(name)]))]
            runs[actor.run.remote(path, cloudpickle.dumps(spec), data, listening["port"])] = group
        done, failed = _wait_until_done(ray, experiment, reports, server, runs)
        server.wait(timeout=30)
        return done, failed
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # already gone, or the cluster is: nothing left to stop
                logger.debug("could not kill a Ray actor: %s", exc)
        if server is not None:
            _end([server])
        if reports is not None:
            reports.close()
        connection.close()


def _actor_class():
    from .ray_actor import ClientActor

    return ClientActor


def _wait_for_actors(ray, actors: list, groups: list, demand: dict, timeout) -> list[str]:
    """Each actor's node id, once it runs; bounded, naming what pending actors wait for."""
    seconds = min(ACTOR_START_SECONDS, timeout) if timeout else ACTOR_START_SECONDS
    refs = [actor.node_id.remote() for actor in actors]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=seconds)
    if pending:
        waiting = [groups[refs.index(ref)][0] for ref in pending]
        available = ray.available_resources()
        short = ", ".join(f"{name} (each needs {each:g}, {available.get(name, 0.0):g} free)"
                          for name, each in demand.items()) or "nothing Ray reports"
        raise PyFedError(
            f"{len(pending)} of {len(refs)} Ray actors did not start within {seconds:g} s (the "
            f"one hosting {', '.join(waiting[:5])}{'...' if len(waiting) > 5 else ''}); they "
            f"wait for: {short}. Other work may hold those resources")
    try:
        return ray.get(refs, timeout=seconds)
    except ray.exceptions.RayError as exc:
        raise PyFedError(f"a Ray actor failed to start: {exc}") from None


def _outcome(ray, ref) -> tuple[dict, str | None]:
    """An actor's run: ``({name: error}, None)``, or ``({}, why)`` when the actor died."""
    try:
        return ray.get(ref, timeout=10)["errors"], None
    except ray.exceptions.RayActorError as exc:  # killed, or its node lost: dropped clients
        return {}, type(exc).__name__
    except ray.exceptions.RayError as exc:  # the actor's own code failed: its clients did
        return {"(actor)": str(exc).strip().splitlines()[-1]}, None


def _wait_until_done(ray, experiment, reports, server, runs: dict) -> tuple[dict, list[str]]:
    """The server's "done" report; fails fast if a client fails first or the server dies. A
    client whose actor died is dropped, as a killed process client is: the run goes on."""
    deadline = Deadline(experiment.timeout)
    pending = dict(runs)
    failed: list[str] = []
    all_ended: Deadline | None = None
    done = None

    def collect(wait: float) -> None:
        finished, _ = ray.wait(list(pending), num_returns=len(pending), timeout=wait)
        for ref in finished:
            group = pending.pop(ref)
            errors, died = _outcome(ray, ref)
            if died:
                logger.warning("%s: the Ray actor died (%s); the server goes on without %s",
                               ", ".join(group), died, "it" if len(group) == 1 else "them")
            for name, error in errors.items():
                who = f"pyfed-{name}" if name in group else f"pyfed-{', '.join(group)}"
                if done is None:
                    raise PyFedError(f"{who} failed before the server could finish training: "
                                     f"{error}")
                failed.append(f"{who} ({error})")

    while done is None:
        report = reports.next(timeout=0.2)
        if report is not None:
            if report.get("event") == "error":
                raise PyFedError(f"the server failed to finish training: {report.get('error')}")
            done = report
            break
        if server.exitcode not in (None, 0):
            raise PyFedError(f"{server.name} exited with code {server.exitcode} before it could "
                             "finish training; see its output above")
        collect(0)
        if not pending:
            all_ended = all_ended or Deadline(AFTER_DONE_SECONDS)
            if all_ended.expired():
                raise PyFedError("every Ray client actor ended before the server finished "
                                 "training; see their output above")
        if deadline.expired():
            raise PyFedError(f"the experiment did not finish training within "
                             f"{experiment.timeout:g} s")
    wait_for = Deadline(AFTER_DONE_SECONDS)
    while pending and not wait_for.expired():  # the clients leave after FINISH
        collect(min(1.0, wait_for.remaining()))
    failed.extend(f"pyfed-{', '.join(group)} (still running after the server finished)"
                  for group in pending.values())
    return done, failed
