"""Results on disk and in numbers: the children's JSON files and the report's summaries."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path


def emit(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def fmt_range(s: dict) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def mean_range(values: list[float]) -> str:
    """``mean [min-max]`` to 3 decimals (just the mean for one value): a table cell."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{min(values):.3f}-{max(values):.3f}]"
