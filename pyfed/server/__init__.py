"""The server side: FL_Server (a thin driver), the gateway (accept, TLS, handshake, registry),
one session thread per connection, the round collector, checkpoints and stop signals.

``from pyfed.server import FL_Server`` keeps working; it loads on first use so that importing a
submodule (``pyfed.server.checkpoint``) does not load the whole server.
"""


def __getattr__(name: str):
    if name == "FL_Server":
        from .fl_server import FL_Server

        return FL_Server
    raise AttributeError(f"module 'pyfed.server' has no attribute {name!r}")
