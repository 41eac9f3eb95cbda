"""The entry point of every child process the benchmark starts:
``python -m benchmarks.child ROLE [options]``."""

from __future__ import annotations

import importlib
import sys

# role -> (module, function); imported only in the child that plays it.
ROLES = {
    "pyfed_server": ("benchmarks.overhead_roles", "pyfed_server"),
    "pyfed_client": ("benchmarks.overhead_roles", "pyfed_client"),
    "floor_client": ("benchmarks.floor", "floor_client"),
    "scale_server": ("benchmarks.fleet_roles", "scale_server"),
    "thread_clients": ("benchmarks.fleet_roles", "thread_clients"),
    "async_server": ("benchmarks.async_roles", "async_server"),
    "async_client": ("benchmarks.async_roles", "async_client"),
    "secagg_server": ("benchmarks.secagg_roles", "secagg_server"),
    "secagg_client": ("benchmarks.secagg_roles", "secagg_client"),
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ROLES:
        raise SystemExit(f"usage: python -m benchmarks.child {{{','.join(ROLES)}}} [options]")
    module, function = ROLES[argv[0]]
    getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
