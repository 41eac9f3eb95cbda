#!/usr/bin/env python
"""Old entry point of the benchmark: runs ``python -m benchmarks`` (the ``benchmarks/`` package
at the repository's root) with the same arguments."""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)
