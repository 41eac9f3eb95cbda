"""PyFed: federated learning between real Python processes over TCP sockets.

``import pyfed`` never imports TensorFlow; Keras is loaded only when a Keras model is used.
"""

import logging

# First, before anything can import TensorFlow: its quiet log level, unless the user set one.
from . import tf_quiet

tf_quiet.install()

from .errors import PyFedError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["FL_Server", "FL_Client", "FL_Experiment", "History", "PyFedError", "__version__"]

# The public names load their layers on first use (PEP 562), so `import pyfed.strategy` or a
# numpy-only tool does not pay for the network, process and TensorBoard layers, or cloudpickle.
_LAZY = {"FL_Server": ".server.fl_server", "FL_Client": ".client.fl_client", "FL_Experiment": ".experiment",
         "History": ".tracking.history"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module 'pyfed' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

logging.getLogger("pyfed").addHandler(logging.NullHandler())
