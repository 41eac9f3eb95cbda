"""The raw-socket floor of the overhead section: the bench process ``sendall``s the weights to N
echo children and folds their replies with the cheapest numpy weighted sum. Also the floor's
child role (``floor_client``)."""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .model import model_weights, same_weights
from .probes import cpu_and_faults
from .processes import Children
from .records import emit, read_json

HOST = "127.0.0.1"
FLOOR_CHUNK = 1 << 17  # elements folded per step, as PyFed's WeightedSum


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        received = sock.recv_into(view)
        if received == 0:
            raise ConnectionError("peer closed the connection mid-message")
        view = view[received:]


def floor_client(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nbytes", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    buffer = np.empty(args.nbytes, dtype=np.uint8)
    buffer.fill(0)  # fault the pages in now, not in round 1
    view = memoryview(buffer)
    with socket.create_connection((HOST, args.port), timeout=30) as sock:
        sock.settimeout(None)  # blocking, like PyFed without round_timeout; the parent bounds us
        round_cpu: list[float] = []
        round_faults: list[int] = []
        for _ in range(args.rounds):
            cpu, faults = cpu_and_faults()
            recv_exactly(sock, view)
            sock.sendall(view)
            cpu_after, faults_after = cpu_and_faults()
            round_cpu.append(cpu_after - cpu)
            round_faults.append(faults_after - faults)
    emit(args.out, {"round_cpu": round_cpu, "round_faults": round_faults,
                    "tensorflow_imported": "tensorflow" in sys.modules})


class FloorSide:
    """The raw-socket floor: this process is the server, N echo children are the clients."""

    def __init__(self, children: Children, phase: Path, num_clients: int, total_rounds: int,
                 deadline: float):
        self.children, self.phase, self.num_clients = children, phase, num_clients
        self.total_rounds, self.deadline = total_rounds, deadline
        self.weights = np.concatenate([w.reshape(-1) for w in model_weights(random=True)])
        self.payload = memoryview(self.weights).cast("B")
        self.examples = [float(i + 1) for i in range(num_clients)]
        # Preallocated and faulted in, as a tuned server would keep them.
        self.replies = [np.ones(self.weights.nbytes, dtype=np.uint8) for _ in range(num_clients)]
        self.acc = np.empty(self.weights.size, dtype=np.float32)
        self.mean = np.empty(self.weights.size, dtype=np.float32)
        self.scratch = np.empty(FLOOR_CHUNK, dtype=np.float32)
        self.lock = threading.Lock()
        self.folded = 0
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        self.listener = socket.create_server((HOST, 0), backlog=self.num_clients)
        port = self.listener.getsockname()[1]
        for i in range(self.num_clients):
            self.children.spawn(f"floor-{i}", "floor_client", "--port", str(port),
                                "--nbytes", str(self.weights.nbytes),
                                "--rounds", str(self.total_rounds),
                                "--out", str(self.phase / f"floor-{i}.json"))
        self.listener.settimeout(1.0)
        while len(self.conns) < self.num_clients:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"only {len(self.conns)} of {self.num_clients} floor clients connected")
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                self.children.check_alive()
                continue
            conn.settimeout(None)  # blocking; the phase's watchdog kills the peers if stuck
            self.conns.append(conn)

    def _fold(self, index: int) -> None:
        x = np.frombuffer(self.replies[index], dtype=np.float32)
        w = np.float32(self.examples[index])
        for start in range(0, x.size, FLOOR_CHUNK):
            stop = min(start + FLOOR_CHUNK, x.size)
            if self.folded == 0:
                np.multiply(x[start:stop], w, out=self.acc[start:stop])
            else:  # acc += w * x, the product in a cache-resident scratch
                part = self.scratch[:stop - start]
                np.multiply(x[start:stop], w, out=part)
                np.add(self.acc[start:stop], part, out=self.acc[start:stop])
        self.folded += 1

    def _exchange(self, index: int, errors: list) -> None:
        try:
            self.conns[index].sendall(self.payload)
            recv_exactly(self.conns[index], memoryview(self.replies[index]))
            with self.lock:
                self._fold(index)
        except BaseException as exc:  # re-raised by the round's thread
            errors.append(exc)

    def round(self, mode: str) -> tuple[float, float, int]:
        """One round: (wall seconds, this process's CPU seconds, its minor page faults)."""
        self.folded = 0
        cpu, faults = cpu_and_faults()
        start = time.perf_counter()
        if mode == "threads":
            errors: list = []
            threads = [threading.Thread(target=self._exchange, args=(i, errors), daemon=True)
                       for i in range(self.num_clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(0.1, self.deadline - time.monotonic()))
                if thread.is_alive():
                    raise TimeoutError("a floor round did not finish before the deadline")
            if errors:
                raise errors[0]
        else:
            # Each client echoes into the kernel's buffers while we send to the next one; nobody
            # waits on a peer that waits on them, so this cannot deadlock.
            for conn in self.conns:
                conn.sendall(self.payload)
            for index, conn in enumerate(self.conns):
                recv_exactly(conn, memoryview(self.replies[index]))
                self._fold(index)
        np.multiply(self.acc, np.float32(1.0 / sum(self.examples)), out=self.mean)
        seconds = time.perf_counter() - start
        cpu_after, faults_after = cpu_and_faults()
        if not same_weights([self.mean], [self.weights]):
            raise RuntimeError("floor: the averaged echoes differ from the weights sent")
        return seconds, cpu_after - cpu, faults_after - faults

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()
        if self.listener is not None:
            self.listener.close()

    def results(self) -> list[dict]:
        return [read_json(self.phase / f"floor-{i}.json") for i in range(self.num_clients)]
