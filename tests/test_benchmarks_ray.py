"""The Ray overhead benchmark (benchmarks/ray_overhead.py) at its smallest: its command line with
10 numpy virtual clients in 2 actors against 10 client threads in 2 processes, one run of each
side (no ABBA repeat), 1 warm-up and 1 measured round. It checks the report's shape and that the numbers are usable; never how
fast anything was (the benchmark itself measures that).

The benchmark starts a local Ray on 127.0.0.1 and shuts it down, and its local run's server and
client processes are ended by PID in a ``finally``, so it runs in this process."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

# Before Ray is imported: its node and driver then use the loopback address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from benchmarks import ray_overhead  # noqa: E402


def test_ray_overhead_reports_a_row_per_client_count_with_finite_numbers(tmp_path, capsys):
    out = tmp_path / "ray.json"
    assert not ray.is_initialized()
    assert ray_overhead.main(["--clients", "10", "--actors", "2", "--warmup", "1",
                              "--rounds", "1", "--repeats", "1", "--timeout", "180",
                              "--json", str(out)]) == 0
    assert not ray.is_initialized()  # the Ray it started, it shut down
    result = json.loads(out.read_text())
    assert result["parameters"] == 650 and result["actors"] == 2

    [row] = result["rows"]
    assert row["clients"] == 10
    for side in ("local", "ray"):
        run = row[side]
        assert run["problems"] == []
        assert run["participants"] == [10, 10]  # every client in both rounds
        assert len(run["round_seconds"]) == 2 and run["measured"]["n"] == 1  # no warm-up
        assert all(math.isfinite(s) and s > 0 for s in run["round_seconds"])
        assert run["peak_rss"] > 0
    assert row["ray"]["actors"] == 2 and row["ray"]["per_actor"] == 5
    assert row["ray"]["nodes"] == 1
    assert math.isfinite(row["ratio"]) and row["ratio"] > 0

    lines = ray_overhead.table(result).splitlines()
    assert len(lines) == 3  # header, separator, one row
    assert all(line.count("|") == 6 for line in lines)  # five columns
    assert lines[0].startswith("| clients | local threads s/round | Ray s/round | ratio")
    assert lines[2].startswith("| 10 | ")
    text = ray_overhead.report(result)
    assert "650 float32 parameters" in text and "fraction_fit 1.0" in text
    assert "PROBLEM" not in text
    assert text in capsys.readouterr().out  # main printed the same report
