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
         "cloudpickle", "tensorflow", "keras", "ray")


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


def test_a_local_experiment_never_imports_ray():
    loaded = loaded_after("import numpy as np\nfrom pyfed.experiment import FL_Experiment\n"
                          "FL_Experiment(1, [np.zeros((2, 2))], [np.zeros(2)], None, None)")
    assert "pyfed.experiment" in loaded and "ray" not in loaded


# Ray hidden from the interpreter, as on a machine without the extra installed.
WITHOUT_RAY = """
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoRay())
import numpy as np
from pyfed.errors import ConfigurationError
from pyfed.experiment import FL_Experiment
try:
    FL_Experiment(1, [np.zeros((2, 2))], [np.zeros(2)], None, None, backend="ray")
except ConfigurationError as exc:
    print(f"ERROR {exc}")
"""


def test_the_ray_backend_without_ray_names_the_extra_in_one_line():
    result = subprocess.run([sys.executable, "-c", WITHOUT_RAY], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "ERROR backend='ray' needs Ray: pip install 'pyfed[ray]'", \
        result.stdout + result.stderr
