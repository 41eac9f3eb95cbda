"""PyFed 0.0.x's import path: ``from pyfed.components import FL_Server, FL_Client``."""

from .client.fl_client import FL_Client
from .server.fl_server import FL_Server

__all__ = ["FL_Server", "FL_Client"]
