"""The start-up section: how long a numpy-only client takes to import PyFed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .processes import child_pythonpath

STARTUP_COMMAND = "import pyfed.client, pyfed.models"


def measure_startup(reps: int, timeout: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = child_pythonpath()

    def timed(code: str) -> list[float]:
        times = []
        for _ in range(reps + 1):  # the first run warms the page cache and .pyc files
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        return times[1:]

    return {"command": f'python -c "{STARTUP_COMMAND}"', "import_seconds": timed(STARTUP_COMMAND),
            "bare_python_seconds": timed("pass"), "numpy_seconds": timed("import numpy")}
