"""The overhead section's run: PyFed rounds and raw-socket floor rounds, taking turns."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path

from .floor import FloorSide
from .processes import Children, ServerLines
from .records import read_json


class PyfedSide:
    """An FL_Server child plus N FL_Client children. The server runs each round only when told
    ("go" on its stdin) and says "done" after it, so its rounds interleave with the floor's."""

    def __init__(self, children: Children, phase: Path, num_clients: int, total_rounds: int,
                 deadline: float, pool_size: int = 2):
        self.children, self.phase, self.num_clients = children, phase, num_clients
        self.total_rounds, self.deadline = total_rounds, deadline
        self.pool_size = pool_size
        self.lines: ServerLines | None = None
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        logdir = self.phase / "logs"
        self.server = self.children.spawn(
            "server", "pyfed_server", "--clients", str(self.num_clients),
            "--rounds", str(self.total_rounds), "--logdir", str(logdir),
            "--out", str(self.phase / "server.json"), "--pool-size", str(self.pool_size),
            pipes=True)
        self.lines = ServerLines(self.children, self.server, "PyFed server")
        ready = json.loads(self.lines.expect("ready", self.deadline))
        for i in range(self.num_clients):
            self.children.spawn(f"client-{i}", "pyfed_client", "--name", f"bench-{i}",
                                "--port", str(ready["port"]), "--examples", str(i + 1),
                                "--logdir", str(logdir), "--spawned-at", repr(time.time()),
                                "--out", str(self.phase / f"client-{i}.json"))

    def round(self) -> None:
        try:
            self.server.stdin.write(b"go\n")
            self.server.stdin.flush()
        except OSError:  # the server is gone: report why
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(timeout=5)
            self.children.check_alive()
            raise
        self.lines.expect("done", self.deadline)

    def results(self) -> dict:
        self.children.wait_all(self.deadline)
        server = read_json(self.phase / "server.json")
        clients = [read_json(self.phase / f"client-{i}.json") for i in range(self.num_clients)]
        return {"server": server, "clients": clients}


def run_interleaved(num_clients: int, rounds: int, modes: list[str], timeout: float,
                    workdir: Path, pool_size: int = 2) -> tuple[dict, list[dict]]:
    """1 warm-up + ``rounds`` rounds of PyFed and of each floor mode, taking turns round by
    round (in a rotating order), so background load hits both sides alike."""
    phase = workdir / f"clients-{num_clients}"
    phase.mkdir()
    total = rounds + 1
    deadline = time.monotonic() + timeout
    children = Children(phase)
    watchdog = threading.Timer(timeout, children.kill_all)  # unblocks any socket call we are in
    watchdog.daemon = True
    floor = FloorSide(children, phase, num_clients, total * len(modes), deadline)
    pyfed = PyfedSide(children, phase, num_clients, total, deadline, pool_size)
    floor_rounds: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in modes}
    try:
        watchdog.start()
        floor.start()
        pyfed.start()
        turns = [("floor", mode) for mode in modes] + [("pyfed", None)]
        for r in range(total):
            shift = r % len(turns)
            for side, mode in turns[shift:] + turns[:shift]:
                if side == "pyfed":
                    pyfed.round()
                else:
                    floor_rounds[mode].append(floor.round(mode))
        floor.close()  # the floor children see EOF after their last round and exit
        pyfed_results = pyfed.results()  # waits for every child
        floor_clients = floor.results()
    finally:
        watchdog.cancel()
        floor.close()
        children.close()
    # The floor clients cannot tell the modes apart: their per-round costs are shared by both.
    client_cpu = [c["round_cpu"][1:] for c in floor_clients]
    client_faults = [c["round_faults"][1:] for c in floor_clients]
    floors = [{"mode": mode, "warmup_seconds": rows[0][0],
               "round_seconds": [row[0] for row in rows[1:]],
               "server_cpu": [row[1] for row in rows[1:]],
               "server_faults": [row[2] for row in rows[1:]],
               "client_cpu": client_cpu, "client_faults": client_faults,
               "tensorflow_imported": any(c["tensorflow_imported"] for c in floor_clients)}
              for mode, rows in floor_rounds.items()]
    return pyfed_results, floors
