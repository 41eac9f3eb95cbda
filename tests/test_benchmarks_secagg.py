"""The SecAgg cost benchmark (benchmarks/secagg_cost.py) at its smallest: its command line with
the echo workload, 3 client processes, one plain and one secure run of 1 warm-up + 2 measured
rounds. It checks the report's shape and that the numbers are usable; never how fast anything
was (the benchmark itself measures that). The keras workload loads TensorFlow in every child,
too slow for here: only its table's last column is checked, on the echo run's numbers.

The benchmark starts its own server and client processes over 127.0.0.1 and ends each by its
PID in a ``finally`` (a watchdog kills them past the timeout), so it runs in this process."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from benchmarks import secagg_cost  # noqa: E402


def test_secagg_cost_reports_a_row_per_client_count_with_finite_ratios(tmp_path, capsys):
    out = tmp_path / "secagg.json"
    assert secagg_cost.main(["--workload", "echo", "--clients", "3", "--rounds", "2",
                             "--repeats", "1", "--timeout", "240", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["echo"]
    result = results["echo"]

    [row] = result["rows"]
    assert row["clients"] == 3
    for mode in ("plain", "secure"):
        assert row[mode]["rounds"] == 2  # the warm-up round is not measured
        assert row[mode]["seconds"] > 0 and row[mode]["bytes"] > 0
        assert row[mode]["test_accuracy"] is None  # echo: nothing is tested
    assert "SecureAggregation(FedAvg(" in row["secure"]["strategy"]
    for ratio in (row["time_ratio"], row["bytes_ratio"]):
        assert math.isfinite(ratio) and ratio > 0
    # A secure round moves the model both ways like a plain one, plus the keys and shares.
    assert row["bytes_ratio"] >= 1
    # Deterministic clients: the secure run ends on the plain run's model up to SecAgg's
    # quantization (about 1e-7 per round for 3 clients in a 32-bit ring).
    assert row["max_difference"] < 1e-4
    assert result["meets_target"] is None  # the target is stated at 10 clients
    assert not result["tensorflow_imported"]

    lines = secagg_cost.table(result).splitlines()
    assert len(lines) == 3  # header, separator, one row
    assert all(line.count("|") == 10 for line in lines)  # nine columns
    assert lines[2].startswith("| 3 | ")
    text = secagg_cost.report(result, repeats=1)
    assert "echo workload: 102,538 float32 parameters" in text
    assert "not measured" in text
    assert text in capsys.readouterr().out  # main printed the same report

    # The keras workload's table ends on each mode's test accuracy instead.
    keras = copy.deepcopy(result)
    keras["workload"] = "keras"
    keras["rows"][0]["max_difference"] = None
    keras["rows"][0]["plain"]["test_accuracy"] = 0.9
    keras["rows"][0]["secure"]["test_accuracy"] = 0.875
    header, _, keras_row = secagg_cost.table(keras).splitlines()
    assert header.endswith("| test accuracy plain, secure |")
    assert keras_row.endswith("| 0.900, 0.875 |")
