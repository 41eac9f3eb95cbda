"""The client side: FL_Client (connect, retry, train, reconnect) and its checks of what the
server sends.

``from pyfed.client import FL_Client`` keeps working; it loads on first use.
"""


def __getattr__(name: str):
    if name == "FL_Client":
        from .fl_client import FL_Client

        return FL_Client
    raise AttributeError(f"module 'pyfed.client' has no attribute {name!r}")
