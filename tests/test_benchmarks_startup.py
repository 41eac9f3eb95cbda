"""The start-up benchmark (benchmarks/experiment_startup.py) at its smallest: 1 and 2 Keras
clients, 1 round, each backend once. It checks the report's shape and that the numbers are
usable; never how fast anything was (the benchmark itself measures that). Each run is one
FL_Experiment in this process, which ends and reaps every party it starts."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from benchmarks import experiment_startup  # noqa: E402


def test_startup_benchmark_reports_every_backend_and_client_count(tmp_path, capsys):
    out = tmp_path / "startup.json"
    assert experiment_startup.main(["--backends", "local-spawn", "local", "--clients", "1", "2",
                                    "--rounds", "1", "--repeats", "1",
                                    "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(row["backend"], row["clients"]) for row in result["rows"]] == [
        ("local-spawn", 1), ("local-spawn", 2), ("local", 1), ("local", 2)]
    for run in result["runs"]:
        # Every client was ready before round 1 ended, which was before run() returned.
        assert 0 < run["ready"] < run["round1_done"] < run["total"], run
        assert 0 <= run["accuracy"] <= 1
    table = capsys.readouterr().out
    assert "ready" in table and "round 1 done" in table and "local-spawn" in table
    assert multiprocessing.active_children() == []
