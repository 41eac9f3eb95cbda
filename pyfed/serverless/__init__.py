"""Serverless federation: nodes that share a folder (local or S3) instead of a server.

``from pyfed.serverless import FederatedNode, ServerFederation, compare_with_standalone``.
The names load on first use: importing pyfed.serverless loads neither TensorFlow nor s3fs.
"""

_LAZY = {"FederatedNode": ".node", "ServerFederation": ".server_federation",
         "compare_with_standalone": ".compare"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyfed.serverless' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
