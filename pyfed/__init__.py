"""PyFed: federated learning between real Python processes over TCP sockets.

``import pyfed`` never imports TensorFlow; Keras is loaded only when a Keras model is used.
"""

import logging

# First, before anything can import TensorFlow: its quiet log level, unless the user set one.
from . import tf_quiet

tf_quiet.install()

from .client import FL_Client  # noqa: E402
from .errors import PyFedError  # noqa: E402
from .experiment import FL_Experiment  # noqa: E402
from .history import History  # noqa: E402
from .server import FL_Server  # noqa: E402

__version__ = "0.1.0"
__all__ = ["FL_Server", "FL_Client", "FL_Experiment", "History", "PyFedError", "__version__"]

logging.getLogger("pyfed").addHandler(logging.NullHandler())
