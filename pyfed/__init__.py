"""PyFed: federated learning between real Python processes over TCP sockets.

``import pyfed`` never imports TensorFlow; Keras is loaded only when a Keras model is used.
"""

import logging

from .client import FL_Client
from .errors import PyFedError
from .experiment import FL_Experiment
from .history import History
from .server import FL_Server

__version__ = "0.1.0"
__all__ = ["FL_Server", "FL_Client", "FL_Experiment", "History", "PyFedError", "__version__"]

logging.getLogger("pyfed").addHandler(logging.NullHandler())
