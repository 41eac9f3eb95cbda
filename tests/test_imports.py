"""What importing PyFed costs, and its one exception hierarchy.

Each import check runs in a fresh interpreter (a subprocess), because this test process has long
since imported everything.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys

import pytest

import pyfed
from pyfed.errors import PyFedError

HEAVY = ("pyfed.server", "pyfed.server.gateway", "pyfed.wire.transport", "pyfed.client", "pyfed.experiment",
         "cloudpickle", "tensorflow", "keras")


def loaded_after(statement: str) -> list[str]:
    code = (f"import sys, json\n{statement}\n"
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("statement", ["import pyfed", "import pyfed.strategy",
                                       "from pyfed.strategy import FedAvg, FedAdam"])
def test_light_imports_load_no_network_process_or_tensorflow_layer(statement):
    loaded = loaded_after(statement)
    assert not [name for name in HEAVY if name in loaded], statement


def test_the_public_names_still_load_on_first_use():
    loaded = loaded_after("from pyfed import FL_Server, FL_Client, FL_Experiment, History, "
                          "PyFedError\nimport pyfed.components")
    assert "pyfed.server" in loaded and "pyfed.client" in loaded and "tensorflow" not in loaded
    from pyfed.components import FL_Client, FL_Server

    assert pyfed.FL_Server is FL_Server and pyfed.FL_Client is FL_Client
    assert set(pyfed.__all__) <= set(dir(pyfed))
    with pytest.raises(AttributeError, match="no attribute 'FL_Nothing'"):
        pyfed.FL_Nothing  # noqa: B018


def test_every_exception_pyfed_defines_is_a_pyfed_error():
    found = []
    for module_info in pkgutil.walk_packages(pyfed.__path__, "pyfed."):
        if module_info.name in ("pyfed.__main__", "pyfed.sim.child"):
            continue  # entry points: importing them runs them
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            # Errors only: a stop signal (stopping.Stopped) is a KeyboardInterrupt on purpose,
            # so that no `except PyFedError` can swallow a Ctrl-C or a SIGTERM.
            if issubclass(value, Exception) and value.__module__ == module.__name__:
                found.append(value)
    assert len(found) >= 15, found  # the hierarchy, and the ones defined beside their use
    outside = [f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, PyFedError)]
    assert not outside, outside
