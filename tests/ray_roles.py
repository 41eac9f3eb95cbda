"""Helpers the Ray tests hand to actors and to the server child (by reference: this folder is on
their path), and a driver script: ``python ray_roles.py driver <address> <marker_dir>``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pyfed.callbacks import ServerCallback
from pyfed.models import SoftmaxRegression


class SlowSoftmax(SoftmaxRegression):
    """SoftmaxRegression whose fit marks ``<marker_dir>/round<r>-<pid>`` (the actor's process)
    and, in ``slow_rounds`` (all if None), pauses ``pause`` seconds: a round to act inside."""

    def __init__(self, marker_dir, slow_rounds=None, pause=0.0):
        super().__init__(64, 10)
        self.marker_dir, self.slow_rounds, self.pause = str(marker_dir), slow_rounds, pause

    def fit(self, data, target, config):
        server_round = int(config.get("round", 1))
        Path(self.marker_dir, f"round{server_round}-{os.getpid()}").touch()
        if self.slow_rounds is None or server_round in self.slow_rounds:
            time.sleep(self.pause)
        return super().fit(data, target, config)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


class RssRecorder(ServerCallback):
    """The server process's resident memory after each round, one ``round kib`` line per round."""

    def __init__(self, path):
        self.path = str(path)

    def on_round_end(self, server, server_round, logs):
        with open(self.path, "a") as file:
            file.write(f"{server_round} {rss_kib()}\n")


def driver(address: str, marker_dir: str) -> None:
    """An experiment that joins the cluster at ``address`` and runs until interrupted."""
    from pyfed import data
    from pyfed.experiment import FL_Experiment

    x, y = data.load_digits()
    cx, cy, tx, ty = data.split_for_clients(x, y, 2, seed=1)
    experiment = FL_Experiment(2, cx, cy, tx, ty, port=0, logdir=Path(marker_dir) / "logs",
                               backend="ray", ray_address=address, verbose=0,
                               client_options={"model": SlowSoftmax(marker_dir, pause=1.0)})
    experiment.run(SoftmaxRegression(64, 10), rounds=500, epochs=1, batch_size=32, lr=0.5)


if __name__ == "__main__":
    if sys.argv[1] == "driver":
        driver(sys.argv[2], sys.argv[3])
